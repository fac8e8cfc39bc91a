"""The machine a figure or a verdict belongs to: CPU model and instruction-set flags."""

from __future__ import annotations

import platform

# the instruction-set flags that decide which int8 and bf16 kernels a CPU runs
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16")
ARM_FLAGS = ("asimddp", "i8mm", "bf16", "sve")


def cpu_signature() -> str:
    """The machine and, on Linux, the CPU's model and instruction-set flags."""
    sig = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags"))][:2]
        sig += "".join(lines)
    except OSError:
        sig += platform.processor()
    return sig


def device_description(providers: list[str] | None = None) -> str:
    """The CPU's model and the flags that decide its int8/bf16 kernels, e.g. "Intel(R)
    Xeon(R) Processor (avx2, avx512_vnni, amx_int8)", plus a GPU provider if one runs."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model") and model in ("", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    known = CPU_FLAGS if platform.machine() in ("x86_64", "AMD64", "i686") else ARM_FLAGS
    have = [f for f in known if f in flags]
    if (
        platform.machine() in ("x86_64", "AMD64")
        and flags
        and not ({"avx512_vnni", "avx_vnni", "amx_int8"} & flags)
    ):
        have.append("no VNNI")
    text = f"{model} ({', '.join(have)})" if have else model
    gpu = [p for p in providers or [] if p not in ("CPUExecutionProvider",)]
    return f"{text}; {', '.join(gpu)}" if gpu else text
