"""`vqedge verify` on arm64 (aarch64) under qemu-user: the shipped bundles' own check sets on
emulated Arm CPUs with and without dot-product instructions.

    python -m vqedge.benchmarks.arm64_verify [--cpus max cortex-a53] [--bundles vqvae-f4 ...]

Set-up, cached under the git-ignored ``.arm64/`` (``--cache``) and rebuilt where missing:

1. an arm64 Debian root: the first stage of ``debootstrap --foreign --arch=arm64
   --variant=minbase --include=python3.11`` (it downloads and unpacks, no chroot or binfmt
   needed), then every package it downloaded unpacked into the root (``dpkg -x``);
2. aarch64 wheels of onnxruntime, numpy and Pillow (``pip download --platform``) unzipped
   into one folder; vqedge's own wheel is built from this checkout on every run;
3. per emulated CPU, an aarch64-format ``/proc/cpuinfo`` in the root, its ``Features`` from
   the CPU's real ``AT_HWCAP``/``AT_HWCAP2``: qemu-user passes the host's x86 file through,
   onnxruntime's CPU detection crashes on it, and qemu's ``-L`` prefix applies to ``/proc``.

Host tools: Debian's debootstrap and qemu-user-static (installed with apt-get where missing,
as root). Emulated time says nothing about speed on Arm hardware, so only verdicts are
reported. Writes ``arm64_verify.json`` and ``arm64_verify.md``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

MODULE = "vqedge.benchmarks.arm64_verify"
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PYTHON = "/usr/bin/python3.11"  # in the root
WHEELS = ("onnxruntime", "numpy", "pillow")
# labels only (implementer, part); the Features line is what kernels are chosen by
CPU_IDS = {"max": ("0x00", "0x051"), "cortex-a53": ("0x41", "0xd03")}
HOST_TOOLS = {"debootstrap": "debootstrap", "qemu-aarch64-static": "qemu-user-static"}

# run inside the guest: Linux's arm64 hwcap bit names, from the kernel's cpuinfo.c
MKCPUINFO = r"""
import struct, sys
H1 = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt "
      "fcma lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs "
      "sb paca pacg").split()
H2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm "
      "svef64mm svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme").split()
aux = open("/proc/self/auxv", "rb").read()
vals = dict(struct.iter_unpack("<QQ", aux))
h1, h2 = vals.get(16, 0), vals.get(26, 0)
feats = [n for i, n in enumerate(H1) if h1 >> i & 1] + [n for i, n in enumerate(H2) if h2 >> i & 1]
block = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 100.00\nFeatures\t: {' '.join(feats)}\n"
    f"CPU implementer\t: {sys.argv[2]}\nCPU architecture: 8\nCPU variant\t: 0x0\n"
    f"CPU part\t: {sys.argv[3]}\nCPU revision\t: 0\n\n" for i in range(2))
open(sys.argv[1], "w").write(block)
print(f"{h1:#x} {h2:#x} {' '.join(feats)}")
"""


def _run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {p.returncode}: {(p.stderr or p.stdout)[-2000:]}")
    return p


def host_tools() -> str:
    """The qemu-aarch64 binary, after installing the Debian packages that are missing."""
    missing = [pkg for tool, pkg in HOST_TOOLS.items() if not shutil.which(tool)]
    if missing:
        if os.geteuid() != 0:
            raise SystemExit(f"arm64_verify needs the Debian packages {missing} (apt-get, root)")
        _run(["apt-get", "update", "-qq"], timeout=600)
        _run(["apt-get", "install", "-y", "-qq", *missing], timeout=1200)
    return shutil.which("qemu-aarch64-static") or "qemu-aarch64-static"


def build_root(root: Path) -> None:
    """An arm64 Debian root holding python3.11, unpacked without running anything in it."""
    python = root / PYTHON.lstrip("/")
    if python.is_file():
        return
    if os.geteuid() != 0:
        raise SystemExit("building the arm64 root needs root (debootstrap)")
    archives = root / "var/cache/apt/archives"
    if not any(archives.glob("*.deb")):  # else a first stage already downloaded them
        _run(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
              "--include=python3.11", SUITE, str(root), MIRROR], timeout=3600)  # fmt: skip
    for deb in sorted(archives.glob("*.deb")):
        _run(["dpkg", "-x", str(deb), str(root)], timeout=600)
    if not python.is_file():
        raise RuntimeError(f"the arm64 root at {root} has no {PYTHON} after unpacking")


def site_deps(folder: Path, py_version: str) -> None:
    """aarch64 wheels of the runtime's dependencies, unzipped into ``folder``."""
    if (folder / ".complete").is_file():
        return
    wheels = folder.with_name("wheels")
    plats = ("manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_28_aarch64")
    _run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
          *(f"--platform={p}" for p in plats), f"--python-version={py_version}",
          "--implementation=cp", "-d", str(wheels), *WHEELS], timeout=1800)  # fmt: skip
    for w in sorted(wheels.glob("*.whl")):
        zipfile.ZipFile(w).extractall(folder)
    (folder / ".complete").touch()


def site_vqedge(folder: Path) -> None:
    """vqedge's wheel built from this checkout, unzipped into ``folder`` (replaced)."""
    shutil.rmtree(folder, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
              "--no-build-isolation", "-w", tmp, str(REPO)], timeout=1800)  # fmt: skip
        (wheel,) = Path(tmp).glob("vqedge-*.whl")
        zipfile.ZipFile(wheel).extractall(folder)


def run_guest(qemu: str, cpu: str, root: Path, args: list[str], env: dict[str, str],
              timeout: float) -> subprocess.CompletedProcess[str]:  # fmt: skip
    cmd = [qemu, "-cpu", cpu, "-L", str(root), str(root / PYTHON.lstrip("/")), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def measure(cache: Path, cpus: list[str], bundles: list[str], timeout: float) -> dict[str, Any]:
    qemu = host_tools()
    root = cache / "root"
    build_root(root)
    guest_py = root / PYTHON.lstrip("/")
    py_version = guest_py.name.removeprefix("python")
    site_deps(cache / "site-deps", py_version)
    site_vqedge(cache / "site-vqedge")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{cache / 'site-vqedge'}:{cache / 'site-deps'}",
           "HOME": str(cache)}  # fmt: skip
    (root / "proc").mkdir(exist_ok=True)
    out: dict[str, Any] = {"qemu": _run([qemu, "--version"]).stdout.splitlines()[0],
                           "guest_python": py_version, "cpus": [], "runs": []}  # fmt: skip
    for cpu in cpus:
        implementer, part = CPU_IDS.get(cpu, ("0x00", "0x000"))
        p = run_guest(qemu, cpu, root, ["-c", MKCPUINFO, str(root / "proc/cpuinfo"),
                                        implementer, part], env, 600)  # fmt: skip
        if p.returncode != 0:
            raise RuntimeError(f"-cpu {cpu}: writing cpuinfo failed: {p.stderr[-2000:]}")
        hwcap, hwcap2, *features = p.stdout.split()
        out["cpus"].append({"cpu": cpu, "hwcap": hwcap, "hwcap2": hwcap2, "features": features})
        for bundle in bundles:
            with tempfile.TemporaryDirectory() as verdicts:
                t = time.time()
                args = ["-m", "vqedge.commands.main", "verify", bundle, "--providers", "cpu",
                        "--precision", "fp32", "--precision", "int8"]  # fmt: skip
                p = run_guest(qemu, cpu, root, args, {**env, "VQEDGE_CACHE_DIR": verdicts},
                              timeout)  # fmt: skip
            out["runs"].append({"cpu": cpu, "bundle": bundle, "exit": p.returncode,
                                "wall_s": round(time.time() - t), "output":
                                (p.stdout + p.stderr).strip()[-4000:]})  # fmt: skip
            print(f"-cpu {cpu} {bundle}: exit {p.returncode}", flush=True)
    return out


# a row of `vqedge verify`'s table: precision, stage, provider, tier, ..., its verdict
VERDICT_ROW = re.compile(
    r"^(\w+)\s+(encoder|decoder)\s+\S+\s+(tokens|pixels)\s.*?(holds|DOES NOT HOLD)"
)
# `vqedge verify` exits 4 when a precision does not hold: a finding, not a failed run
VERIFY_RAN = (0, 4)


def stage_summary(r: dict[str, Any]) -> str:
    """Each precision's stages over every run: where they hold their tier."""
    held: dict[tuple[str, str, str], list[bool]] = {}
    for run in r["runs"]:
        for line in run["output"].splitlines():
            m = VERDICT_ROW.match(line)
            if m:
                held.setdefault(m.group(1, 2, 3), []).append(m.group(4) == "holds")
    parts = []
    for (precision, stage, tier), ok in held.items():
        where = "every run" if all(ok) else "no run" if not any(ok) else f"{sum(ok)} of {len(ok)}"
        parts.append(f"{precision} {stage} ({tier} tier) holds on {where}")
    return "; ".join(parts) or "no verdict table was printed"


def markdown(r: dict[str, Any]) -> str:
    from vqedge.benchmarks.machine import provenance_md

    ok = all(run["exit"] == 0 for run in r["runs"])
    lines = [
        "# `vqedge verify` on arm64 (aarch64), under qemu-user emulation",
        "",
        *provenance_md(r["provenance"]),
        f"- Emulator: {r['qemu']}; guest: Debian {SUITE} arm64, Python {r['guest_python']}; "
        "set-up: the docstring of `benchmarks/arm64_verify.py`",
        "",
        f"Result: {'every run holds (exit 0)' if ok else '**not every run holds**'}: "
        f"{stage_summary(r)}. Emulated time says nothing about Arm hardware's speed; the wall "
        "times only record the run.",
        "",
        "| `-cpu` | AT_HWCAP / AT_HWCAP2 | dot product (asimddp) | i8mm | Features |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in r["cpus"]:
        f = c["features"]
        lines.append(f"| `{c['cpu']}` | {c['hwcap']} / {c['hwcap2']} | "
                     f"{'yes' if 'asimddp' in f else 'no'} | {'yes' if 'i8mm' in f else 'no'} | "
                     f"{' '.join(f)} |")  # fmt: skip
    for run in r["runs"]:
        lines += ["", f"`-cpu {run['cpu']}`, {run['bundle']}: exit {run['exit']}, "
                  f"{run['wall_s']} s wall", "", "```text", run["output"], "```"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpus", nargs="+", default=["max", "cortex-a53"], help="qemu -cpu models")
    p.add_argument("--bundles", nargs="+", default=["vqvae-f4", "vqvae-ms-f8"])
    p.add_argument("--cache", default=str(REPO / ".arm64"), help="root, wheels (git-ignored)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per emulated run")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for arm64_verify.*")
    args = p.parse_args(argv)
    from vqedge.benchmarks.machine import finish, provenance, write_results

    prov = provenance(MODULE, argv)  # before anything is written
    cache = Path(args.cache).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    result = {"provenance": prov, **measure(cache, args.cpus, args.bundles, args.timeout)}
    finish(prov)
    write_results(args.out, "arm64_verify", result, markdown(result))
    # a precision that does not hold is what the file reports; a run that did not verify fails
    return 0 if all(run["exit"] in VERIFY_RAN for run in result["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
