"""The full comparison: every configuration, the same images, threads and machine, one run.

    python -m vqedge.benchmarks.compare --ov-python .venv-ov/bin/python
    python -m vqedge.benchmarks.compare --bundle .bench-bundles/var256 --checkpoint FILE --quick

Any bundle: vqedge's own (the shipped default unless ``--bundle``) or an imported family's,
single- or multi-scale (a multi-scale bundle runs at its one resolution). PyTorch runs the
bundle's own model (``bundles.torch_model``).

Each configuration runs in fresh processes (``worker``): first a cold start (import, load,
first result), then the timed cases and the held-out quality pass. Configurations whose
libraries an interpreter lacks are looked for in the ``--ov-python`` interpreters, else
skipped with the reason. FLOPs, achieved FLOP/s, quality against the fp32 reference and the
report are computed here. Writes ``OUT/latest.json`` and ``OUT/latest.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.benchmarks import flops, machine
from vqedge.benchmarks.bundles import BundleFacts, facts
from vqedge.benchmarks.timing import E2E

HERE = Path(__file__).resolve().parent
# run by any interpreter that has vqedge installed (the OpenVINO one included)
WORKER = "vqedge.benchmarks.worker"
# the batch the targets are set at, at 256x256 (a multi-scale bundle: its resolution)
TARGET_BATCH = 1
# issue 14's bars: vqedge's cold peak RSS against PyTorch eager fp32's, and the PSNR a
# configuration may lose against vqedge fp32 and still count as the same model
RSS_RATIO = 0.6
PSNR_TOLERANCE_DB = 0.5
# --quick: the smallest run that still fills every column (the smoke tests use it)
QUICK = {
    "min_iters": 2,
    "max_iters": 3,
    "target_s": 0.0,
    "cold_runs": 1,
    "budget_s": 300.0,
}


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


# in the order they run: the most variable (compilation) last, where the --budget-s safety
# net leaves it everything the others did not use
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
# the quality reference: the first of these that ran
REFERENCES = ("torch-eager/fp32", "vqedge-cpu/fp32")

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


def _env(threads: int, workdir: Path) -> dict[str, str]:
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


def write_inputs(path: Path, sizes: list[int], bf: BundleFacts) -> dict[str, Any]:
    """The timing images (the held-out photos resized square to every size) and the quality
    images (the held-out photos at full size; for a multi-scale bundle fitted to its
    resolution, as the runtime's ``encode_image`` does)."""
    from PIL import Image

    from vqedge.models.data import HELD_OUT, held_out_paths
    from vqedge.runtime.images import fit_square
    from vqedge.runtime.inputs import read_image

    paths = held_out_paths()
    photos = [read_image(p) for p in paths]
    arrays: dict[str, np.ndarray] = {"quality_count": np.array(len(paths))}
    for i, photo in enumerate(photos):
        arrays[f"quality{i}"] = fit_square(photo, bf.resolution) if bf.multi_scale else photo
    for s in sizes:
        arrays[f"size{s}"] = np.stack(
            [np.asarray(Image.fromarray(p).resize((s, s), Image.BICUBIC)) for p in photos]
        )
    np.savez(path, **arrays)
    return {
        "held_out": [f"{pkg}:{rel}" for pkg, rel in HELD_OUT],
        "quality_shapes": [list(arrays[f"quality{i}"].shape) for i in range(len(paths))],
        "quality_inputs": f"fitted to {bf.resolution}x{bf.resolution} (centre square, Lanczos)"
        if bf.multi_scale
        else "the held-out photos at full size",
        "timing_inputs": "the held-out photos resized (bicubic) to size x size, cycled to fill "
        "the batch",
    }


def run_worker(python: str, spec: dict[str, Any], env: dict[str, str], timeout: float) -> dict:
    """Run the worker on ``spec`` in a fresh process; its JSON result, plus wall time."""
    spec_path = Path(spec["out"]).with_suffix(".spec.json")
    spec_path.write_text(json.dumps(spec))
    t_spawn = time.time()
    try:
        proc = subprocess.run(
            [python, "-m", WORKER, str(spec_path)],
            env=env,
            timeout=timeout,
            stdout=None if spec["mode"] == "bench" else subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    wall = time.time() - t_spawn
    out = Path(spec["out"])
    if not out.is_file():
        return {"error": f"worker exited {proc.returncode}: {proc.stderr[-3000:]}"}
    result = json.loads(out.read_text())
    result["wall_s"] = wall
    result["t_spawn"] = t_spawn
    if proc.returncode != 0 and "error" in result:
        result["stderr"] = proc.stderr[-3000:]
    return result


# -- analysis ---------------------------------------------------------------------------------


def add_flops(results: dict[str, Any], bundle: Path, peaks: dict[str, Any]) -> None:
    """FLOPs per stage of every case, achieved GFLOP/s and the fraction of the peak."""
    cache: dict[tuple[int, int], dict[str, int]] = {}
    gflops_peak = peaks.get("gflops") or {}
    for r in results.values():
        for case in r.get("cases", []):
            if "stages" not in case:
                continue
            key = (case["batch"], case["size"])
            if key not in cache:
                cache[key] = flops.stage_flops(bundle, case["batch"], case["size"], case["size"])
            case["flops"] = cache[key]
            for name, s in case["stages"].items():
                g = cache[key][name] / (s["median_ms"] / 1e3) / 1e9
                s["gflops_per_s"] = g
                peak = gflops_peak.get(r["precision"])
                s["fraction_of_peak"] = g / peak if peak else None


def model_files_mb(manifest: dict[str, Any], precision: str) -> float | None:
    """MiB a configuration at ``precision`` reads from the bundle: its variant's graphs, the
    stored tensors they name and the codebook (the manifest's ``size_bytes``; bf16 runs the
    fp32 variant, and PyTorch holds the same weights at fp32)."""
    variant = precision if precision in ("fp16", "int8") else "fp32"
    v = manifest["variants"].get(variant)
    return v["quality"]["size_bytes"] / 2**20 if v is not None else None


def _same_weights(r: dict[str, Any]) -> bool:
    """Whether a configuration runs the bundle's weights (a PyTorch model may not)."""
    return r.get("details", {}).get("same_weights_as_bundle", True)


def add_quality(results: dict[str, Any], inputs: Path, bf: BundleFacts) -> dict[str, Any]:
    """Quality-image PSNR, PSNR against the fp32 reference and token agreement with it (for a
    multi-scale bundle over all scales, and per scale).

    The reference of the bundle's weights is the first of REFERENCES that ran them; a PyTorch
    model with other weights (an imported family without its checkpoint) is compared with
    PyTorch eager fp32 on the same weights instead.
    """
    from vqedge.runtime.metrics import psnr

    ran = {n: r for n, r in results.items() if r.get("quality_file")}
    ref_name = next((n for n in REFERENCES if n in ran and _same_weights(ran[n])), None)
    other_ref = next((n for n in REFERENCES if n in ran and not _same_weights(ran[n])), None)
    if ref_name is None and other_ref is None:
        return {"reference": None, "note": "no fp32 reference ran: quality not compared"}
    data = np.load(inputs)
    originals = [data[f"quality{i}"] for i in range(int(data["quality_count"]))]
    for r in ran.values():
        rn = ref_name if _same_weights(r) else other_ref
        q = np.load(r["quality_file"])
        n = len(originals)
        held_out = np.mean([psnr(q[f"recon{i}"], originals[i]) for i in range(n)])
        r["quality"] = {"held_out_psnr_db": float(held_out), "images": n}
        if rn is None:
            continue
        ref = np.load(ran[rn]["quality_file"])
        agree = sum(int((q[f"tokens{i}"] == ref[f"tokens{i}"]).sum()) for i in range(n))
        total = sum(ref[f"tokens{i}"].size for i in range(n))
        vs_ref = np.mean([psnr(q[f"recon{i}"], ref[f"recon{i}"]) for i in range(n)])
        r["quality"].update(
            reference=rn,
            # None when every reconstruction equals the reference's (infinite PSNR)
            psnr_vs_reference_db=float(vs_ref) if np.isfinite(vs_ref) else None,
            identical_to_reference=bool(not np.isfinite(vs_ref)),
            token_agreement=agree / total,
        )
        if bf.multi_scale:
            per = [[0, 0] for _ in bf.patch_nums]
            for i in range(n):
                pairs = zip(bf.split(q[f"tokens{i}"]), bf.split(ref[f"tokens{i}"]))
                for k, (a, b) in enumerate(pairs):
                    per[k][0] += int((a == b).sum())
                    per[k][1] += b.size
            r["quality"]["token_agreement_per_scale"] = [a / t for a, t in per]
    return {
        "reference": ref_name,
        "reference_other_weights": other_ref,
        "images": [str(p.name) for p in _held_out()],
        "psnr": "mean over images of 10 log10(255^2 / MSE) on uint8 RGB (inf when identical)",
    }


def _held_out() -> list[Path]:
    from vqedge.models.data import held_out_paths

    return list(held_out_paths())


# -- the report -------------------------------------------------------------------------------


def _f(v: Any, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None: strict JSON has no inf or NaN."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def cold_start(
    python: str, spec: dict[str, Any], env: dict[str, str], out: Path, n: int, timeout: float
) -> dict[str, Any]:
    """The median of ``n`` fresh processes' cold starts, with every run's total."""
    runs = []
    for _ in range(n):
        cold = run_worker(python, {**spec, "mode": "cold", "out": str(out)}, env, timeout)
        if "error" in cold:
            return cold
        # launch to first result, less the benchmark's own input preparation
        cold["total_s"] = cold["t_first"] - cold["t_spawn"] - cold["input_prep_s"]
        runs.append(cold)
    runs.sort(key=lambda c: c["total_s"])
    median = {**runs[len(runs) // 2], "runs_total_s": [c["total_s"] for c in runs]}
    median["runs_peak_rss_mb"] = [c["peak_rss_mb"] for c in runs]
    print(f"  cold start {median['total_s']:.2f} s (median of {len(runs)})", flush=True)
    return median


def _case(r: dict[str, Any], batch: int, size: int) -> dict[str, Any] | None:
    return next(
        (
            c
            for c in r.get("cases", [])
            if (c["batch"], c["size"]) == (batch, size) and "stages" in c
        ),
        None,
    )


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets, checked against this run (batch 1 at the target size, the cold case).

    Issue 14's, for any bundle: the fastest vqedge fp32 configuration at least as fast as
    every fp32 peer; the fastest vqedge configuration within 0.5 dB of vqedge fp32's
    reconstruction faster than every peer; each vqedge configuration's cold peak RSS at most
    0.6x PyTorch eager fp32's. For the shipped default also the shipped model's own (speed-up
    over PyTorch eager, cold start). Each row: target, measured (text), required (text), met
    (bool), set; a target whose numbers this run lacks has no row.
    """
    res = report["results"]
    batch, size = report["target_case"]

    def median(name: str) -> float | None:
        c = _case(res.get(name, {}), batch, size)
        return c["stages"][E2E]["median_ms"] if c else None

    def psnr(name: str) -> float | None:
        return res.get(name, {}).get("quality", {}).get("held_out_psnr_db")

    def cold(name: str, key: str) -> float | None:
        return res.get(name, {}).get("cold", {}).get(key)

    rows: list[dict[str, Any]] = []
    ours = [n for n in res if n.startswith("vqedge") and median(n) is not None]
    peers = [n for n in res if not n.startswith("vqedge") and median(n) is not None]
    eager = "torch-eager/fp32"
    ours_fp32 = [n for n in ours if n.endswith("/fp32")]
    if ours_fp32:
        best32 = min(ours_fp32, key=median)
        for peer in [n for n in peers if n.endswith("/fp32")]:
            ratio = median(best32) / median(peer)
            rows.append({
                "target": f"vqedge fp32 (`{best32}`) vs fp32 peer `{peer}`",
                "measured": f"{median(best32):.1f} vs {median(peer):.1f} ms = {ratio:.2f}x",
                "required": "<= 1.00x",
                "met": ratio <= 1.0,
                "set": "issue 14",
            })  # fmt: skip
    base = psnr("vqedge-cpu/fp32")
    good = [n for n in ours if base is not None and (psnr(n) or -1e9) >= base - PSNR_TOLERANCE_DB]
    best = min(good, key=median) if good else None
    if best and peers:
        peer = min(peers, key=median)
        ratio = median(best) / median(peer)
        rows.append({
            "target": f"fastest vqedge within {PSNR_TOLERANCE_DB} dB of fp32 (`{best}`) vs the "
            f"fastest peer (`{peer}`)",
            "measured": f"{median(best):.1f} vs {median(peer):.1f} ms = {ratio:.2f}x",
            "required": "<= 1.00x",
            "met": ratio <= 1.0,
            "set": "issue 14",
        })  # fmt: skip
    torch_cold, torch_rss = cold(eager, "total_s"), cold(eager, "peak_rss_mb")
    for n in [n for n in res if n.startswith("vqedge")]:
        rss = cold(n, "peak_rss_mb")
        if rss is not None and torch_rss:
            rows.append({
                "target": f"cold peak RSS `{n}`",
                "measured": f"{rss:.0f} MiB = {rss / torch_rss:.2f}x of {torch_rss:.0f} MiB",
                "required": f"<= {RSS_RATIO:.2f}x ({RSS_RATIO * torch_rss:.0f} MiB)",
                "met": rss <= RSS_RATIO * torch_rss,
                "set": "issue 14",
            })  # fmt: skip
    if not report.get("shipped_default"):
        return rows
    if best and median(eager):
        speedup = median(eager) / median(best)
        rows.append({
            "target": f"`{best}` speed-up over `{eager}`",
            "measured": f"{median(eager):.1f} / {median(best):.1f} ms = {speedup:.2f}x",
            "required": ">= 5x",
            "met": speedup >= 5.0,
            "set": "shipped model",
        })  # fmt: skip
    for n in [n for n in res if n.startswith("vqedge")]:
        t = cold(n, "total_s")
        if t is not None and torch_cold:
            rows.append({
                "target": f"cold start `{n}`",
                "measured": f"{t:.2f} s = {t / torch_cold:.2f}x of {torch_cold:.2f} s",
                "required": f"<= 0.40 s and <= 0.20x ({0.2 * torch_cold:.2f} s)",
                "met": t <= 0.4 and t <= 0.2 * torch_cold,
                "set": "shipped model",
            })  # fmt: skip
    return rows


def misses(report: dict[str, Any]) -> list[str]:
    """One line per missed target, with where the configuration's time goes (its profile)."""
    lines = []
    res = report["results"]
    for t in report.get("targets", []):
        if t["met"]:
            continue
        names = [n for n in res if f"`{n}`" in t["target"] and n.startswith("vqedge")]
        why = ""
        prof = res.get(names[0], {}).get("profile") if names else None
        steps = _memory_steps(res.get(names[0], {})) if names else []
        if t["target"].startswith("cold peak RSS") and steps:
            grew = ", ".join(
                f"{step} {rss:.0f}" if step == "import" else f"{step} {delta:+.0f}"
                for step, rss, delta in steps
            )
            files = res[names[0]].get("model_files_mb")
            why = f"; RSS after each step: {grew} MiB" + (
                f" (model {files:.0f} MiB)" if files else ""
            )
        elif prof:
            top = ", ".join(
                f"{o['graph']} {o['op_type']} {o['share']:.0%}" for o in prof["op_types"][:3]
            )
            why = f"; `{names[0]}` spends its node time in {top}"
        lines.append(f"- {t['target']}: {t['measured']} (required {t['required']}){why}")
    return lines


def _memory_steps(r: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(step, RSS MiB after it, growth over the step before) of a configuration's cold start."""
    out, last = [], 0.0
    for m in r.get("cold", {}).get("memory", []):
        if "rss" in m:
            out.append((m["step"], m["rss"], m["rss"] - last))
            last = m["rss"]
    return out


def _memory(report: dict[str, Any]) -> list[str]:
    rows = {n: r for n, r in report["results"].items() if _memory_steps(r)}
    if not rows:
        return []
    steps = [s for s, _, _ in _memory_steps(next(iter(rows.values())))]
    lines = [
        "",
        "## Where the memory goes",
        "",
        "Resident memory (MiB) of the cold start's process after each step, with its growth: "
        "import (interpreter and libraries), load (weights, sessions or compilation), then "
        "each stage of the first run; peak is the high-water mark the RSS target reads. At "
        "the end, anon (heap, arenas, weights copied or repacked) and file (mapped files: "
        "libraries, and weights a runtime maps instead of copying; they count in RSS once "
        "touched). Model: the MiB the configuration reads from the bundle (graphs, the "
        "weights they name, the codebook; PyTorch: the fp32 variant's, the same weights).",
        "",
        "| configuration | model | " + " | ".join(steps) + " | peak | anon | file |",
        "| --- |" + " ---: |" * (len(steps) + 4),
    ]
    for name, r in rows.items():
        ms = _memory_steps(r)
        end = r["cold"]["memory"][-1]
        cells = [
            f"{rss:.0f}" if step == "import" else f"{rss:.0f} ({delta:+.0f})"
            for step, rss, delta in ms
        ]
        lines.append(
            f"| {name} | {_f(r.get('model_files_mb'), '.0f')} | " + " | ".join(cells) + " | "
            f"{_f(r['cold'].get('peak_rss_mb'), '.0f')} | {_f(end.get('anon'), '.0f')} | "
            f"{_f(end.get('file'), '.0f')} |"
        )
    return lines


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    pk = m["peaks"]
    lines = [
        "# vqedge benchmark",
        "",
        f"{report['created']}, bundle `{report['bundle_name']}` ({report['bundle_kind']}"
        + (f", {report['family']} imported" if report.get("family") else ", vqedge's own")
        + f"), {report['threads']} threads for every configuration, took "
        f"{report['wall_s'] / 60:.1f} min.",
        "",
        f"- PyTorch model: {report.get('torch_model') or 'not run'}",
        f"- GFLOP per image at {report['target_case'][1]}x{report['target_case'][1]} (fp32 "
        f"graphs): {_f(report.get('gflop_per_image'), '.2f')}",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']} ({m['vendor']} family {m['family']} model {m['model']}), "
        f"{m['physical_cores']} cores / {m['logical_cpus']} logical CPUs"
        f"{', under a hypervisor' if m['hypervisor'] else ''}, {m['memory_gib']} GiB",
        f"- Key flags: {', '.join(m['key_flags']) or 'none'}",
        f"- Frequency: {_f(m['freq_ghz'], '.3f')} GHz ({m['freq_source']})",
        f"- Peaks ({pk['formula']}, {pk['cores']} cores): "
        + ", ".join(
            f"{k} {_f((pk['gflops'] or {}).get(k), '.0f')} G{'OP' if k == 'int8' else 'FLOP'}/s "
            f"({pk['per_cycle_per_core'][k]}/cycle/core: {pk['derivation'][k]})"
            for k in ("fp32", "bf16", "int8")
        ),
        "- Interpreters: "
        + "; ".join(
            f"`{p['python']}`: "
            + ", ".join(f"{k} {v}" for k, v in p.get("versions", {}).items() if v)
            for p in report["interpreters"]
        ),
        "",
        f"## Targets (batch {report['target_case'][0]} at {report['target_case'][1]}x"
        f"{report['target_case'][1]}, against this run's peers; cold start and RSS against "
        "PyTorch eager fp32's)",
        "",
        "| target | measured | required | met | set |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {t['target']} | {t['measured']} | {t['required']} | {'yes' if t['met'] else 'no'} "
            f"| {t['set']} |"
            for t in report.get("targets", [])
        ),
        "",
        *(
            ["Missed:", "", *misses(report), ""]
            if misses(report)
            else ["Every target with numbers in this run is met.", ""]
        ),
        'The profiles under "Where the time goes" show the hottest nodes.',
        "",
        "## End to end (encoder + quantizer + decoder, numpy in and out)",
        "",
        "Median and p99 latency of one call with the whole batch (p99 over n runs: with n < 100 "
        "it lies between the two slowest); FLOP/s are the model's FLOPs over the median, "
        "compared with the peak of the configuration's precision.",
        "",
        "| batch | size | configuration | median ms | p99 ms | n | images/s | GFLOP/s | "
        "% of peak | peak RSS MiB |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = []
    for name, r in report["results"].items():
        for c in r.get("cases", []):
            rows.append((c["batch"] * c["size"] ** 2, c["batch"], c["size"], name, c))
    order = {c.name: i for i, c in enumerate(CONFIGS)}
    rows.sort(key=lambda t: (t[0], t[1], order.get(t[3], 99)))
    for _, b, s, name, c in rows:
        if "stages" not in c:
            why = c.get("skipped") or f"error: {c.get('error', '?')[:80]}"
            lines.append(f"| {b} | {s} | {name} | {why} |||||||")
            continue
        e = c["stages"][E2E]
        frac = e.get("fraction_of_peak")
        lines.append(
            f"| {b} | {s} | {name} | {e['median_ms']:.2f} | {e['p99_ms']:.2f} | {e['n']} | "
            f"{c['images_per_s']:.1f} | {_f(e.get('gflops_per_s'))} | "
            f"{_f(frac * 100 if frac is not None else None)} | {_f(c.get('peak_rss_mb'), '.0f')} |"
        )
    lines += [
        "",
        "## Per stage (median ms, and GFLOP/s)",
        "",
        "| batch | size | configuration | encoder ms | quantizer ms | decoder ms | encoder "
        "GFLOP/s | decoder GFLOP/s |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for _, b, s, name, c in rows:
        if "stages" not in c:
            continue
        st = c["stages"]
        lines.append(
            f"| {b} | {s} | {name} | {st['encoder']['median_ms']:.2f} | "
            f"{st['quantizer']['median_ms']:.2f} | {st['decoder']['median_ms']:.2f} | "
            f"{_f(st['encoder'].get('gflops_per_s'))} | {_f(st['decoder'].get('gflops_per_s'))} |"
        )
    q = report["quality_reference"]
    lines += [
        "",
        "## Cold start and quality",
        "",
        f"Cold start: a fresh process, from its launch to the first result of batch "
        f"{report['cold_case'][0]} at {report['cold_case'][1]}x{report['cold_case'][1]} "
        "(interpreter start, imports, loading, sessions or compilation, first run). Quality: "
        f"{report['inputs']['quality_inputs']}; PSNR against them and against "
        + (f"`{q['reference']}`, token agreement with it" if q["reference"] else "no reference")
        + (", every scale" if report["bundle_kind"] == "multi-scale" else "")
        + " (identical: the same pixels as the reference)"
        + (
            f"; PyTorch on other weights than the bundle's against `{q['reference_other_weights']}`"
            if q.get("reference_other_weights")
            else ""
        )
        + ".",
        "",
        "| configuration | runs on | cold start s | import s | load s | first result s | "
        "cold peak RSS MiB | held-out PSNR dB | PSNR vs ref dB | token agreement |"
        + (" per scale |" if report["bundle_kind"] == "multi-scale" else ""),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        + (" --- |" if report["bundle_kind"] == "multi-scale" else ""),
    ]
    for name, r in report["results"].items():
        cs = r.get("cold", {})
        qq = r.get("quality", {})
        vs_ref = qq.get("psnr_vs_reference_db")
        vs_ref = "identical" if qq.get("identical_to_reference") else _f(vs_ref, ".2f")
        lines.append(
            f"| {name} | {_runs_on(r)} | {_f(cs.get('total_s'), '.2f')} | "
            f"{_f(cs.get('import_s'), '.2f')} | {_f(cs.get('load_s'), '.2f')} | "
            f"{_f(cs.get('first_result_s'), '.2f')} | {_f(cs.get('peak_rss_mb'), '.0f')} | "
            f"{_f(qq.get('held_out_psnr_db'), '.2f')} | {vs_ref} | "
            f"{_f(qq.get('token_agreement'), '.4f')} |"
            + (
                " " + " ".join(f"{a:.3f}" for a in qq.get("token_agreement_per_scale", [])) + " |"
                if report["bundle_kind"] == "multi-scale"
                else ""
            )
        )
    lines += _memory(report)
    lines += _profiles(report)
    skipped = report["skipped_configs"]
    errors = {n: r["error"] for n, r in report["results"].items() if "error" in r}
    lines += ["", "## Not measured", ""]
    if report["skipped_cases"]:
        lines.append(
            "- cases above --max-pixels "
            f"({report['max_pixels']} pixels per call): "
            + ", ".join(f"batch {b} x {s}" for b, s in report["skipped_cases"])
        )
    for n, why in {**skipped, **errors}.items():
        lines.append(f"- {n}: {why}")
    cut = [
        f"{n} batch {c['batch']} x {c['size']}"
        for n, r in report["results"].items()
        for c in r.get("cases", [])
        if "skipped" in c
    ]
    if cut:
        lines.append(
            f"- cut by the --budget-s {report['budget_s']:.0f} s safety net: " + ", ".join(cut)
        )
    if not (report["skipped_cases"] or skipped or errors or cut):
        lines.append("- nothing: every configuration and case ran")
    lines.append("")
    return "\n".join(lines)


def _profiles(report: dict[str, Any], top: int = 6) -> list[str]:
    profiled = {n: r["profile"] for n, r in report["results"].items() if "profile" in r}
    if not profiled:
        return []
    first = next(iter(profiled.values()))
    b, s = first["batch"], first["size"][0]
    lines = [
        "",
        "## Where the time goes",
        "",
        f"Batch {b} at {s}x{s}, median node times per run (warm-up left out): onnxruntime's "
        "profiler for vqedge (a graph OpenVINO takes whole shows as one node), OpenVINO's "
        "performance counters for its own runtime (the kernel column names the precision each "
        "node ran at). Profiling adds time per node: read the shares.",
    ]
    for name, p in profiled.items():
        ops = ", ".join(f"{o['graph']} {o['op_type']} {o['share']:.0%}" for o in p["op_types"][:5])
        lines += [
            "",
            f"**{name}**: {p['total_ms']:.1f} ms of node time per run; by op type: {ops}",
            "",
            "| graph | node | op type | kernel / provider | ms | share |",
            "| --- | --- | --- | --- | ---: | ---: |",
        ]
        for r in p["nodes"][:top]:
            lines.append(
                f"| {r['graph']} | `{r['node']}` | {r['op_type']} | {r['provider']} | "
                f"{r['ms']:.2f} | {r['share']:.1%} |"
            )
    return lines


def _runs_on(r: dict[str, Any]) -> str:
    d = r.get("details", {})
    if "providers_in_use" in d:
        return ", ".join(sorted({p[0] for p in d["providers_in_use"].values()}))
    if "inference_precision" in d:
        return "OpenVINO CPU " + "/".join(sorted(set(d["inference_precision"].values())))
    if "torch" in d:
        return f"torch {d['torch']}"
    return "-"


# -- the driver -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    d = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=d)
    p.add_argument(
        "--bundle", default=None, help="bundle folder or shipped name (default: shipped)"
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="the PyTorch model's weights (vqedge's own: a checkpoint; an imported family: its "
        "source checkpoint; without it a family's architecture gets seeded random weights)",
    )
    p.add_argument("--threads", type=int, default=None, help="default: the physical cores")
    p.add_argument(
        "--batches", type=int, nargs="+", default=None, help="default: 1 8 32 (multi-scale: 1)"
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        help="default: 64 256 512 (multi-scale: its resolution, the only size it takes)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=8 * 256 * 256,
        help="skip cases with more pixels per call (batch x size^2); 0: no limit",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="batch 1 at the target size, 2-3 timed passes, one cold start per configuration, "
        "a 300 s budget (unless given): a smoke run, numbers indicative only",
    )
    p.add_argument("--configs", nargs="+", default=None, help="names or families to run")
    p.add_argument("--ov-python", nargs="+", default=[], help="other interpreters to use")
    p.add_argument("--min-iters", type=int, default=None, help="default: 3")
    p.add_argument("--max-iters", type=int, default=None, help="default: 200")
    p.add_argument("--target-s", type=float, default=None, help="timed seconds per case (1)")
    p.add_argument(
        "--cold-case", default=None, help="BATCHxSIZE of the cold start (1x256; 1xresolution)"
    )
    p.add_argument("--no-cold", action="store_true", help="skip the cold starts")
    p.add_argument(
        "--cold-runs", type=int, default=None, help="cold starts per configuration (median; 3)"
    )
    p.add_argument("--no-quality", action="store_true", help="skip the held-out quality pass")
    p.add_argument(
        "--no-profile", action="store_true", help="skip the per-node profiles (vqedge, openvino)"
    )
    p.add_argument(
        "--profile-case", default=None, help="BATCHxSIZE of the profiles (as --cold-case)"
    )
    p.add_argument("--freq-ghz", type=float, default=None, help="override the frequency")
    p.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="safety net for the whole run: each configuration gets an equal share of what "
        "is left, and skips its largest cases when they would overrun it (840; --quick 300); 0: no "
        "limit",
    )
    p.add_argument("--timeout", type=float, default=900, help="per worker process, seconds")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for latest.json/.md")
    args = p.parse_args(argv)

    t_begin = time.time()
    bf = facts(args.bundle)
    bundle = bf.path
    size = bf.target_size
    defaults = {"min_iters": 3, "max_iters": 200, "target_s": 1.0, "cold_runs": 3}
    defaults["budget_s"] = 840.0
    for key, value in (QUICK if args.quick else defaults).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batches is None:
        args.batches = [1] if args.quick or bf.multi_scale else [1, 8, 32]
    if args.sizes is None:
        args.sizes = [size] if args.quick or bf.multi_scale else [64, 256, 512]
    if bf.multi_scale and set(args.sizes) != {size}:
        p.error(f"bundle {bf.name} is multi-scale: it takes {size}x{size} images only, "
                f"got --sizes {args.sizes}")  # fmt: skip
    mach = machine.describe(args.threads, args.freq_ghz)
    threads = args.threads or mach["physical_cores"]
    cold_b, cold_s = (int(v) for v in (args.cold_case or f"1x{size}").lower().split("x"))
    prof_b, prof_s = (int(v) for v in (args.profile_case or f"1x{size}").lower().split("x"))
    for what, s_ in (("--cold-case", cold_s), ("--profile-case", prof_s)):
        if bf.multi_scale and s_ != size:
            p.error(f"bundle {bf.name} is multi-scale at {size}x{size}: {what} must be 1x{size}")
    cases, skipped_cases = [], []
    for b in args.batches:
        for s in args.sizes:
            over = args.max_pixels and b * s * s > args.max_pixels
            (skipped_cases if over else cases).append((b, s))
    cases.sort(key=lambda c: (c[0] * c[1] ** 2, c[0]))  # small first: RSS peaks grow with cases

    configs = [
        c
        for c in CONFIGS
        if not args.configs
        or c.name in args.configs
        or c.name.split("/")[0] in args.configs
        or c.family in args.configs
    ]
    if not configs:
        p.error(f"no configuration matches {args.configs}; known: {[c.name for c in CONFIGS]}")

    workdir = Path(tempfile.mkdtemp(prefix="vqedge-bench-"))
    env = _env(threads, workdir)
    interpreters = [probe(py, env) for py in [sys.executable, *args.ov_python]]
    inputs = workdir / "inputs.npz"
    input_info = write_inputs(inputs, sorted({s for _, s in cases} | {cold_s}), bf)

    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for k, cfg in enumerate(configs):
        python = next((i["python"] for i in interpreters if i.get(cfg.needs)), None)
        if python is None:
            skipped[cfg.name] = (
                f"no interpreter offers {cfg.needs} (give one with --ov-python; see "
                "benchmarks/README.md)"
            )
            print(f"skip {cfg.name}: {skipped[cfg.name]}", flush=True)
            continue
        tag = cfg.name.replace("/", "-")
        spec = {
            "config": cfg.name,
            "family": cfg.family,
            "precision": cfg.precision,
            "compile": cfg.compile,
            "providers": cfg.providers,
            "threads": threads,
            "bundle": str(bundle),
            "checkpoint": args.checkpoint,
            "inputs": str(inputs),
            "cases": cases,
            "cold_case": [cold_b, cold_s],
            "min_iters": args.min_iters,
            "max_iters": args.max_iters,
            "target_s": args.target_s,
            "profile_case": None if args.no_profile else [prof_b, prof_s],
        }
        print(f"{cfg.name} on {python}", flush=True)
        left = args.budget_s - (time.time() - t_begin) if args.budget_s else None
        spec["deadline"] = time.time() + left / (len(configs) - k) if left is not None else None
        r: dict[str, Any] = {**asdict(cfg), "python": python}
        r["model_files_mb"] = model_files_mb(bf.manifest, cfg.precision)
        if not args.no_cold:
            n = 1 if cfg.compile else args.cold_runs  # torch.compile: half a minute each
            out = workdir / f"{tag}-cold.json"
            r["cold"] = cold_start(python, spec, env, out, n, args.timeout)
        quality_out = None if args.no_quality else str(workdir / f"{tag}-quality.npz")
        res = run_worker(
            python,
            {
                **spec,
                "mode": "bench",
                "out": str(workdir / f"{tag}.json"),
                "quality_out": quality_out,
            },
            env,
            args.timeout,
        )
        r.update(res)
        results[cfg.name] = r

    add_flops(results, bundle, mach["peaks"])
    quality_ref = add_quality(results, inputs, bf)
    manifest = bf.manifest
    from vqedge.runtime.session import bundle_path

    torch_runs = [r for n, r in results.items() if n.startswith("torch") and "details" in r]
    report = {
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "bundle": str(bundle),
        "bundle_name": manifest.get("name"),
        "bundle_kind": bf.kind,
        "bundle_config": manifest.get("config"),
        "shipped_default": bundle == bundle_path(None).resolve(),
        "family": bf.family,
        "source": bf.source or None,
        "checkpoint": args.checkpoint,
        "checkpoint_sha256": manifest.get("export", {}).get("checkpoint_sha256"),
        "torch_model": (
            f"{torch_runs[0]['details']['model']} with {torch_runs[0]['details']['weights']}"
            if torch_runs
            else None
        ),
        "gflop_per_image": flops.stage_flops(bundle, 1, size, size)[E2E] / 1e9,
        "target_case": [TARGET_BATCH, size],
        "quick": args.quick,
        "threads": threads,
        "cases": cases,
        "skipped_cases": skipped_cases,
        "max_pixels": args.max_pixels,
        "cold_case": [cold_b, cold_s],
        "budget_s": args.budget_s,
        "iterations": {
            "warmup": 1,
            "min_iters": args.min_iters,
            "max_iters": args.max_iters,
            "target_s": args.target_s,
        },
        "inputs": input_info,
        "machine": mach,
        "interpreters": interpreters,
        "quality_reference": quality_ref,
        "skipped_configs": skipped,
        "results": results,
        "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
    }
    report["targets"] = targets(report)
    report["wall_s"] = time.time() - t_begin
    for r in results.values():  # the npz files live in the temporary folder
        r.pop("quality_file", None)
    shutil.rmtree(workdir, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_finite(report), indent=1, default=str, allow_nan=False)
    (out / "latest.json").write_text(text + "\n")
    (out / "latest.md").write_text(markdown(report))
    print(f"wrote {out / 'latest.json'} and {out / 'latest.md'} in {report['wall_s']:.0f} s")
    failed = [n for n, r in results.items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
