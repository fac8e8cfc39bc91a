"""What the comparison runs: the configurations, and which interpreter can run each.

Each configuration is a worker family (torch, vqedge or openvino) at one precision; the
driver (compare.py) looks for an interpreter that offers what a configuration needs, since
onnxruntime's OpenVINO provider lives in an environment of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Config:
    # the name in the report
    name: str
    # worker family: torch, vqedge or openvino
    family: str
    # fp32, bf16 or int8: also picks the peak that FLOP/s are compared with
    precision: str
    # torch.compile (torch family)
    compile: bool = False
    # "cpu" or "openvino" (vqedge family)
    providers: str | None = None

    @property
    def needs(self) -> str:
        if self.family == "vqedge":
            return "ort_openvino" if self.providers == "openvino" else "ort_cpu"
        return self.family


CONFIGS = [
    Config("vqedge-cpu/fp32", "vqedge", "fp32", providers="cpu"),
    Config("vqedge-cpu/int8", "vqedge", "int8", providers="cpu"),
    Config("vqedge-openvino/fp32", "vqedge", "fp32", providers="openvino"),
    Config("vqedge-openvino/bf16", "vqedge", "bf16", providers="openvino"),
    Config("vqedge-openvino/int8", "vqedge", "int8", providers="openvino"),
    Config("openvino/fp32", "openvino", "fp32"),
    Config("openvino/bf16", "openvino", "bf16"),
    Config("openvino/int8", "openvino", "int8"),
    Config("torch-eager/fp32", "torch", "fp32"),
    Config("torch-eager/bf16", "torch", "bf16"),
    Config("torch-compile/fp32", "torch", "fp32", compile=True),
    Config("torch-compile/bf16", "torch", "bf16", compile=True),
]
# Fidelity is measured against the bundle's own fp32 output: the runtime at fp32 on the CPU
# provider; PyTorch eager fp32 on the same weights stands in when it did not run.
REFERENCES = ("vqedge-cpu/fp32", "torch-eager/fp32")


# CPU flags under which PyTorch's reduced-precision autocast runs natively (else emulated:
# one eager pass of the f=4 model took about a minute on an AVX2-only Zen 3)
NATIVE_FLAGS = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}


def not_native(cfg: Config, flags: set[str] | list[str]) -> str | None:
    """Why a PyTorch reduced-precision configuration is no peer on this CPU (None: it is)."""
    need = NATIVE_FLAGS.get(cfg.precision)
    if cfg.family != "torch" or need is None or set(need) & set(flags):
        return None
    return (
        f"PyTorch {cfg.precision} autocast is emulated on this CPU (none of {', '.join(need)}): "
        "not a peer here"
    )


def select(wanted: list[str] | None) -> list[Config]:
    """The configurations whose name, name prefix or family is in ``wanted`` (all: None)."""
    return [
        c
        for c in CONFIGS
        if not wanted or c.name in wanted or c.name.split("/")[0] in wanted or c.family in wanted
    ]


# Prints what an interpreter can run, as JSON.
PROBE = r"""
import importlib.util as u, json, sys
out = {"python": sys.executable, "version": sys.version.split()[0]}
out["vqedge"] = u.find_spec("vqedge") is not None
out["torch"] = u.find_spec("torch") is not None and u.find_spec("vqedge.models") is not None
try:
    import onnxruntime as ort
    av = ort.get_available_providers()
    out["onnxruntime"] = ort.__version__
    out["ort_cpu"] = "CPUExecutionProvider" in av and "OpenVINOExecutionProvider" not in av
    out["ort_openvino"] = "OpenVINOExecutionProvider" in av
    from vqedge.runtime.providers import installed_runtimes, runtime_clash
    out["installed_runtimes"], out["clash"] = installed_runtimes(), runtime_clash()
except Exception as e:
    out["ort_cpu"] = out["ort_openvino"] = False
    out["ort_error"] = repr(e)
try:
    import openvino as ov
    out["openvino"] = ov.__version__
except Exception:
    out["openvino"] = False
from vqedge.benchmarks import machine
out["versions"] = machine.versions()
print(json.dumps(out))
"""


def worker_env(threads: int, workdir: Path) -> dict[str, str]:
    """The environment of every worker: the same thread count, a fresh compile cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
        PYTHONUNBUFFERED="1",
        # one fresh compile cache per comparison: the cold start pays the real compile
        TORCHINDUCTOR_CACHE_DIR=str(workdir / "inductor"),
    )
    return env


def probe(python: str, env: dict[str, str]) -> dict[str, Any]:
    """What an interpreter offers (torch, the onnxruntime flavour, openvino)."""
    proc = subprocess.run(
        [python, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    if proc.returncode != 0:
        return {"python": python, "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])
