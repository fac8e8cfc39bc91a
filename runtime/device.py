"""The machine a figure or a verdict belongs to: CPU model and instruction-set flags."""

from __future__ import annotations

import functools
import platform

# the instruction-set flags that decide which int8 and bf16 kernels a CPU runs
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
ARM_FLAGS = ("asimddp", "i8mm", "bf16", "sve")


# /proc/cpuinfo fields that tell CPUs apart: x86 names its model and flags; Arm has no model
# name, but its implementer and part identify the core and "Features" its instruction sets
SIGNATURE_FIELDS = ("model name", "flags", "CPU implementer", "CPU part", "Features")


@functools.cache
def _cpuinfo_fields() -> dict[str, str]:
    """The first value of each field of /proc/cpuinfo (empty where there is none), read once
    per process: every load and every cached graph asks for it."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, sep, value = line.partition(":")
                if sep and key.strip() not in fields:
                    fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def cpu_signature() -> str:
    """The machine and, on Linux, what identifies its CPU and instruction sets (the fields of
    ``SIGNATURE_FIELDS``): the key of cached verdicts and optimized graphs."""
    fields = _cpuinfo_fields()
    found = [f"{k}: {fields[k]}\n" for k in SIGNATURE_FIELDS if k in fields]
    return platform.machine() + ("".join(found) if found else platform.processor())


def device_description(providers: list[str] | None = None) -> str:
    """The CPU's model and the flags that decide its int8/bf16 kernels, e.g. "Intel(R)
    Xeon(R) Processor (avx2, avx512_vnni, amx_int8)", plus a GPU provider if one runs."""
    fields = _cpuinfo_fields()
    model = fields.get("model name") or fields.get("Model") or platform.processor()
    if not model and "CPU part" in fields:
        model = f"{platform.machine()} (implementer {fields.get('CPU implementer')}, part "
        model += f"{fields['CPU part']})"
    model = model or platform.machine()
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    known = CPU_FLAGS if platform.machine() in ("x86_64", "AMD64", "i686") else ARM_FLAGS
    have = [f for f in known if f in flags]
    if (
        platform.machine() in ("x86_64", "AMD64")
        and flags
        and not ({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
    ):
        have.append("no VNNI")
    elif platform.machine() in ("aarch64", "arm64") and flags and "asimddp" not in flags:
        have.append("no dot product")
    text = f"{model} ({', '.join(have)})" if have else model
    gpu = [p for p in providers or [] if p not in ("CPUExecutionProvider",)]
    return f"{text}; {', '.join(gpu)}" if gpu else text


@functools.cache
def gpu_description() -> str:
    """NVIDIA GPUs' name, driver and compute capability from nvidia-smi (no torch), else
    "unknown" (no nvidia-smi on PATH, or it failed)."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown"
    try:
        out = subprocess.run(
            [smi, "--query-gpu=name,driver_version,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out or "unknown"
