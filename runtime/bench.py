"""`vqedge bench`: how fast the chosen bundle, provider and precision run here (numpy only).

The quick check for users; the full comparison with PyTorch and OpenVINO lives in the
repository's ``benchmarks/`` folder and reuses the timing helpers below. Each iteration runs
the three stages in turn (encoder, quantizer, decoder) through the public Tokenizer methods,
input checks included; end to end is their sum within the same iteration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vqedge.runtime.cli import runtime_args

STAGES = ("encoder", "quantizer", "decoder")
E2E = "end_to_end"


# -- timing helpers (shared with benchmarks/worker.py) ----------------------------------------


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Latency statistics of a list of durations in seconds, in milliseconds.

    p99 is numpy's linear-interpolated percentile: with fewer than 100 samples it lies
    between the two slowest runs, so read it together with ``n``.
    """
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return {
        "n": int(ms.size),
        "median_ms": float(np.median(ms)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


def time_stages(
    stages: Sequence[tuple[str, Callable[[Any], Any]]],
    x: Any,
    min_iters: int = 3,
    max_iters: int = 100,
    target_s: float = 1.0,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Time a chain of stages (each takes the previous one's output) on the same input.

    Runs ``warmup`` untimed passes, then timed passes until at least ``min_iters`` passes and
    ``target_s`` seconds have gone by, or ``max_iters`` passes. Returns the seconds of every
    timed pass per stage, and their per-pass sum under ``"end_to_end"``.
    """
    for _ in range(warmup):
        y = x
        for _, fn in stages:
            y = fn(y)
    times: dict[str, list[float]] = {name: [] for name, _ in stages}
    times[E2E] = []
    start = time.perf_counter()
    n = 0
    while n < max_iters and (n < min_iters or time.perf_counter() - start < target_s):
        y, total = x, 0.0
        for name, fn in stages:
            t0 = time.perf_counter()
            y = fn(y)
            dt = time.perf_counter() - t0
            times[name].append(dt)
            total += dt
        times[E2E].append(total)
        n += 1
    return times


def reset_peak_rss() -> bool:
    """Reset this process's peak resident set size (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process in MiB since start or the last reset."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, else KiB


def synthetic_images(batch: int, size: int, seed: int = 0) -> np.ndarray:
    """Deterministic photo-like uint8 images [batch, size, size, 3]: smooth shapes + noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((batch, size, size, 3), np.uint8)
    for i in range(batch):
        fx, fy, ph = rng.uniform(1, 6, 3)
        chans = [
            np.sin(2 * np.pi * (fx * xx + ph)) * np.cos(2 * np.pi * fy * yy),
            xx * yy * 2 - 1,
            np.cos(2 * np.pi * (fy * xx - fx * yy)),
        ]
        img = np.stack(chans, -1) * 100 + 128 + rng.normal(0, 8, (size, size, 3))
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


# -- the command ------------------------------------------------------------------------------


def run_bench(
    bundle: str | None = None,
    precision: str = "fp32",
    providers: str = "auto",
    threads: int | None = None,
    batch: int = 1,
    size: int = 256,
    iters: int = 20,
) -> dict[str, Any]:
    """Load a bundle, run ``iters`` timed passes of its three stages, and report.

    Returns
    -------
    dict
        The configuration, the providers in use, load and first-result seconds, latency
        statistics per stage and end to end (ms), images per second, peak RSS (MiB) and the
        bundle's recorded quality for the precision.
    """
    import onnxruntime as ort

    from vqedge.runtime.images import uint8_to_float
    from vqedge.runtime.tokenizer import Tokenizer

    if batch < 1 or size < 1 or iters < 1:
        raise ValueError(f"batch, size and iters must be positive, got {batch}, {size}, {iters}")
    t0 = time.perf_counter()
    tok = Tokenizer.load(bundle, providers=providers, precision=precision, threads=threads)
    load_s = time.perf_counter() - t0
    x = uint8_to_float(synthetic_images(batch, size))
    stages = [
        ("encoder", tok.encode_latent),
        ("quantizer", tok.quantize),
        ("decoder", lambda idx: tok.decode(idx, output="float")),
    ]
    t0 = time.perf_counter()
    y = x
    for _, fn in stages:
        y = fn(y)
    first_s = time.perf_counter() - t0
    times = time_stages(stages, x, min_iters=iters, max_iters=iters, target_s=0.0, warmup=1)
    stats = {name: summarize(t) for name, t in times.items()}
    info = tok.info
    return {
        "tool": "vqedge bench",
        "bundle": info["bundle"],
        "name": info["name"],
        "precision": precision,
        "providers_requested": info["providers_requested"],
        "providers_in_use": info["providers_in_use"],
        "threads": threads,
        "batch": batch,
        "size": [size, size],
        "iters": iters,
        "input": "synthetic",
        "load_s": load_s,
        "first_result_s": first_s,
        "stages": stats,
        "images_per_s": batch / (stats[E2E]["median_ms"] / 1e3),
        "peak_rss_mb": peak_rss_mb(),
        "quality": info["quality"],
        "versions": {"onnxruntime": ort.__version__, "numpy": np.__version__},
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "system": platform.platform(),
        },
    }


def format_report(r: dict[str, Any]) -> str:
    """The human-readable table of a ``run_bench`` result."""
    used = r["providers_in_use"]["encoder"][0]
    lines = [
        f"vqedge bench: {r['name']} {r['precision']} on {used}, threads "
        f"{r['threads'] or 'default'}, batch {r['batch']} x {r['size'][0]}x{r['size'][1]}, "
        f"{r['iters']} iterations",
        f"{'stage':<12}{'median ms':>11}{'p99 ms':>10}",
    ]
    for name in (*STAGES, E2E):
        s = r["stages"][name]
        lines.append(f"{name.replace('_', ' '):<12}{s['median_ms']:>11.2f}{s['p99_ms']:>10.2f}")
    rss = r["peak_rss_mb"]
    lines.append(
        f"{r['images_per_s']:.1f} images/s; load {r['load_s']:.2f} s, first result "
        f"{r['first_result_s']:.2f} s, peak RSS {rss:.0f} MiB"
        if rss is not None
        else f"{r['images_per_s']:.1f} images/s; load {r['load_s']:.2f} s"
    )
    return "\n".join(lines)


def _cmd_bench(args: argparse.Namespace) -> int:
    config = {
        "precision": args.precision,
        "providers": args.providers,
        "threads": args.threads,
        "batch": args.batch,
        "size": args.size,
    }
    result = run_bench(args.bundle, iters=args.iters, **config)
    if args.profile:
        from vqedge.runtime.profile import profile_tokenizer

        result["profile"] = profile_tokenizer(args.bundle, top=args.profile, **config)
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return 0
    print(format_report(result))
    if args.profile:
        from vqedge.runtime.profile import format_profile

        print(format_profile(result["profile"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"results written to {args.json}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``bench`` subcommand."""
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "bench",
        help="time the bundle on this machine (per stage and end to end)",
        formatter_class=d,
    )
    runtime_args(p)
    p.add_argument("--batch", type=int, default=1, help="images per call")
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--iters", type=int, default=20, help="timed iterations")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="then run under onnxruntime's profiler and list the N hottest nodes and op types",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write JSON here (- prints)")
    p.set_defaults(func=_cmd_bench)
