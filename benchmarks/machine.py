"""The machine a benchmark ran on, its nominal compute peaks (from /proc/cpuinfo), and the
provenance every results file carries: commit, command, date, CPU and library versions.

Peak = cores x frequency x operations per cycle per core. Operations per cycle come from the
CPU's flags and, where the flags do not say it, from what is known of the vendor's cores:

- fp32: FMA units x (datapath bits / 32) lanes x 2 (a multiply-add is 2 FLOPs). AVX-512
  code runs on 512-bit units on Intel server cores and AMD Zen 5, but on AMD Zen 4 (family
  0x19 with avx512f) every 512-bit op is split over the two 256-bit FMA pipes: same fp32
  peak as AVX2, 32 FLOP/cycle.
- bf16: AMX-BF16 tiles, 1024 FLOP/cycle (TDPBF16PS, 16x16x32 multiply-adds per 16 cycles);
  else AVX512_BF16's VDPBF16PS, two bf16 products per fp32 lane: 2x fp32; else 1x fp32
  (bf16 is converted and computed at fp32).
- int8: AMX-INT8, 2048 OP/cycle (TDPBSSD, 16x16x64 per 16 cycles); else VNNI (VPDPBUSD,
  four int8 products per 32-bit lane): 4x fp32; else 2x fp32 (the pmaddubsw route).

The frequency is the highest the kernel reports (cpufreq's maximum where it exists, else
/proc/cpuinfo's "cpu MHz", which under a hypervisor is usually the base clock): a core that
boosts above it can exceed the stated peak. ``--freq-ghz`` in the driver overrides it.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

# flags worth showing next to the results (the full list is kept too)
KEY_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "avx_vnni",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
)
PACKAGES = ("numpy", "onnx", "onnxruntime", "onnxruntime-openvino", "openvino", "torch", "vqedge")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo (read once per process)."""
    out: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return out
    for line in text.split("\n\n")[0].splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def _max_freq_ghz(info: dict[str, str]) -> tuple[float | None, str]:
    p = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(p.read_text()) / 1e6, "cpufreq cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    if "cpu MHz" in info:
        return float(info["cpu MHz"]) / 1e3, "/proc/cpuinfo cpu MHz (base clock under a VM)"
    return None, "unknown"


def _physical_cores() -> int:
    """Distinct (package, core) pairs among the CPUs this process may run on."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    cores = set()
    for c in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add(
                (
                    (topo / "physical_package_id").read_text().strip(),
                    (topo / "core_id").read_text().strip(),
                )
            )
        except OSError:
            cores.add(("?", str(c)))
    return len(cores) or (os.cpu_count() or 1)


def fp32_per_cycle(vendor: str, family: int, flags: set[str]) -> tuple[int, str]:
    """fp32 FLOP/cycle/core of the vector units, and how it was derived."""
    if "avx512f" in flags:
        if vendor == "AuthenticAMD" and family == 0x19:
            return 32, "AMD Zen 4: AVX-512 on 2 x 256-bit FMA pipes = 2 x 8 lanes x 2"
        if vendor == "AuthenticAMD":
            return 64, "AMD Zen 5 or later: 2 x 512-bit FMA = 2 x 16 lanes x 2"
        return 64, "AVX-512: assumed 2 x 512-bit FMA units (some Xeons have one) = 2 x 16 x 2"
    if "fma" in flags and "avx2" in flags:
        return 32, "AVX2 + FMA: 2 x 256-bit FMA units = 2 x 8 lanes x 2"
    if "avx" in flags:
        return 16, "AVX without FMA: 1 add + 1 mul of 8 lanes"
    return 8, "SSE: 4 lanes, 1 add + 1 mul"


def peaks(
    vendor: str, family: int, flags: set[str], cores: int, freq_ghz: float | None
) -> dict[str, Any]:
    """Nominal peaks in GFLOP/s (GOP/s for int8) for ``cores`` cores at ``freq_ghz``."""
    fp32, how = fp32_per_cycle(vendor, family, flags)
    if "amx_bf16" in flags:
        bf16, how_bf16 = 1024, "AMX-BF16: 16x16x32 multiply-adds per 16 cycles = 1024"
    elif "avx512_bf16" in flags:
        bf16, how_bf16 = 2 * fp32, "AVX512_BF16 VDPBF16PS: 2 bf16 products per fp32 lane = 2x fp32"
    else:
        bf16, how_bf16 = fp32, "no bf16 dot-product instructions: computed at fp32"
    if "amx_int8" in flags:
        int8, how_int8 = 2048, "AMX-INT8: 16x16x64 multiply-adds per 16 cycles = 2048"
    elif "avx512_vnni" in flags or "avx_vnni" in flags:
        int8, how_int8 = 4 * fp32, "VNNI VPDPBUSD: 4 int8 products per 32-bit lane = 4x fp32"
    else:
        int8, how_int8 = 2 * fp32, "no VNNI: pmaddubsw route, about 2x fp32"
    per_cycle = {"fp32": fp32, "bf16": bf16, "int8": int8}
    scale = cores * freq_ghz if freq_ghz else None
    return {
        "per_cycle_per_core": per_cycle,
        "derivation": {"fp32": how, "bf16": how_bf16, "int8": how_int8},
        "cores": cores,
        "freq_ghz": freq_ghz,
        "gflops": {k: v * scale for k, v in per_cycle.items()} if scale else None,
        "formula": "cores x GHz x ops/cycle/core (multiply-add = 2)",
    }


def versions() -> dict[str, str | None]:
    """Versions of the libraries that matter here, in this interpreter."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def describe(threads: int | None = None, freq_ghz: float | None = None) -> dict[str, Any]:
    """CPU model and flags, cores, memory, frequency and peaks for ``threads`` cores."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    vendor = info.get("vendor_id", platform.processor())
    family = int(info.get("cpu family", "0") or 0)
    freq, freq_src = _max_freq_ghz(info)
    if freq_ghz:
        freq, freq_src = freq_ghz, "given on the command line"
    physical = _physical_cores()
    used = min(threads or physical, physical)
    try:
        mem_kb = next(
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        )
    except (OSError, StopIteration):
        mem_kb = 0
    return {
        "cpu_model": info.get("model name", platform.processor()),
        "vendor": vendor,
        "family": family,
        "model": int(info.get("model", "0") or 0),
        "stepping": info.get("stepping"),
        "key_flags": [f for f in KEY_FLAGS if f in flags],
        "flags": sorted(flags),
        "logical_cpus": os.cpu_count(),
        "physical_cores": physical,
        "hypervisor": "hypervisor" in flags,
        "freq_ghz": freq,
        "freq_source": freq_src,
        "memory_gib": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "system": platform.platform(),
        "peaks": peaks(vendor, family, flags, used, freq),
    }


REPO = Path(__file__).resolve().parents[1]
# results files do not make the tree dirty: a run writes them after reading the commit
RESULTS = "benchmarks/results"


def git_state(repo: Path = REPO) -> dict[str, Any]:
    """The commit the code runs at, and whether tracked files outside the results differ
    from it; ``commit`` is None outside a git checkout (an installed wheel)."""

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", f":!{RESULTS}")
    return {"commit": commit, "dirty": bool(changed)}


def command_line(module: str, argv: list[str] | None) -> str:
    """The command that reproduces a run: ``python -m MODULE ARGS``."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", "-m", module, *map(str, args)])


def _load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def provenance(module: str, argv: list[str] | None = None) -> dict[str, Any]:
    """What every results file records about how it was made.

    Parameters
    ----------
    module : str
        The harness's module (``vqedge.benchmarks.NAME``), for the command that reruns it.
    argv : list of str, optional
        Its arguments; ``sys.argv[1:]`` when None.

    Returns
    -------
    dict
        The commit (and whether tracked files outside the results differed from it), the
        command, the date (UTC), the CPU (model, key and all flags, cores), the load average
        at the start and the versions of python, onnxruntime, OpenVINO, torch, numpy and
        vqedge in this interpreter. Call it before anything is written, and `finish` on it
        when the run ends.
    """
    mach = describe()
    return {
        **git_state(),
        "command": command_line(module, argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "started": time.time(),
        "cpu_model": mach["cpu_model"],
        "key_flags": mach["key_flags"],
        "flags": mach["flags"],
        "physical_cores": mach["physical_cores"],
        "logical_cpus": mach["logical_cpus"],
        "hypervisor": mach["hypervisor"],
        # other work on the machine when the run began (and ended): the spread of a shared
        # machine's figures grows with it
        "load_average": _load_average(),
        "versions": versions(),
    }


def write_results(out: str | Path, name: str, data: dict[str, Any], markdown: str) -> None:
    """Write ``out/NAME.json`` and ``out/NAME.md`` atomically (a crash leaves the old pair)
    and print the markdown."""
    from vqedge.runtime.atomic import write_bytes_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / f"{name}.json", (json.dumps(data, indent=1) + "\n").encode())
    write_bytes_atomic(out / f"{name}.md", markdown.encode())
    print(markdown)


def finish(p: dict[str, Any]) -> dict[str, Any]:
    """``p`` with the load average at the end of the run and the run's seconds added."""
    p["load_average_end"] = _load_average()
    p["seconds"] = round(time.time() - p["started"], 1) if p.get("started") else None
    return p


# the line every markdown results file carries and tests parse: "- Commit: <hex>..."
COMMIT_MD = re.compile(r"^- Commit: ([0-9a-f]{12,40})\b", re.MULTILINE)


def recorded_commit(path: Path) -> str | None:
    """The commit a results file says it was made at (its provenance), or None.

    ``.json``: ``provenance.commit``; ``.md``: the ``- Commit: <hex>`` line.
    """
    text = Path(path).read_text(errors="replace")
    if Path(path).suffix == ".json":
        try:
            commit = (json.loads(text).get("provenance") or {}).get("commit")
        except (ValueError, AttributeError):
            return None
        return (
            commit if isinstance(commit, str) and re.fullmatch(r"[0-9a-f]{12,40}", commit) else None
        )
    m = COMMIT_MD.search(text)
    return m.group(1) if m else None


def provenance_md(p: dict[str, Any]) -> list[str]:
    """The provenance as markdown lines, for the head of a report."""
    commit = p["commit"][:12] if p.get("commit") else "not a git checkout"
    if p.get("dirty"):
        commit += " with uncommitted changes"
    v = p["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "onnxruntime-openvino", "openvino",
                                              "torch", "numpy") if v.get(k))  # fmt: skip
    return [
        f"- Command: `{p['command']}`",
        f"- Commit: {commit}; date: {p['date']}",
        f"- CPU: {p['cpu_model']}, {p['physical_cores']} cores / {p['logical_cpus']} logical "
        f"CPUs{', under a hypervisor' if p.get('hypervisor') else ''}; key flags: "
        f"{', '.join(p['key_flags']) or 'none'}"
        + (
            f"; load average at the start {p['load_average'][0]:.1f} (1 min)"
            if p.get("load_average")
            else ""
        ),
        f"- Python {v.get('python')}: {libs or 'none of onnxruntime, openvino, torch, numpy'}"
        f"; vqedge {v.get('vqedge')}",
        *(
            [f"- Load average at the end {p['load_average_end'][0]:.1f} (1 min); the run took "
             f"{p['seconds']:.0f} s"]
            if p.get("load_average_end") and p.get("seconds") is not None
            else []
        ),
    ]  # fmt: skip


if __name__ == "__main__":
    import json

    d = describe()
    d.pop("flags")
    print(json.dumps({"machine": d, "versions": versions()}, indent=2))
