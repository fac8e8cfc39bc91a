"""The quick check behind ``vqedge bench``: the chosen bundle, provider and precision here.

Each iteration runs the three stages in turn (encoder, quantizer, decoder) through the public
tokenizer methods, input checks included; end to end is their sum within the same iteration.
The full comparison with PyTorch and OpenVINO is ``python -m vqedge.benchmarks.compare``.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import numpy as np

from vqedge.benchmarks.timing import (
    E2E,
    STAGES,
    peak_rss_mb,
    summarize,
    synthetic_images,
    time_stages,
)


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

    from vqedge.runtime import load
    from vqedge.runtime.images import uint8_to_float

    if batch < 1 or size < 1 or iters < 1:
        raise ValueError(f"batch, size and iters must be positive, got {batch}, {size}, {iters}")
    t0 = time.perf_counter()
    tok = load(bundle, providers=providers, precision=precision, threads=threads)
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
        "precision": tok.plan.describe(),
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
