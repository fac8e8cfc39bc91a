"""Timing helpers of every benchmark: latency statistics, staged timing, peak RSS, images.

numpy only (no onnxruntime, no torch), so any benchmark worker, whatever its runtime, uses
the same clock and statistics.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

STAGES = ("encoder", "quantizer", "decoder")
E2E = "end_to_end"


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
    peak = memory_mb().get("peak")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024  # bytes on macOS, else KiB


MEMORY_FIELDS = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "VmHWM": "peak"}


def memory_mb() -> dict[str, float]:
    """This process's resident memory now, in MiB: ``rss``, split into ``anon`` (heap,
    arenas, weights copied or repacked) and ``file`` (mapped files: libraries, and weights
    read through a memory map), and ``peak`` (VmHWM). Empty where /proc/self/status is
    missing (not Linux)."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in MEMORY_FIELDS:
                    out[MEMORY_FIELDS[key]] = int(value.split()[0]) / 1024
    except OSError:
        pass
    return out


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


def summarize_rounds(rounds: Sequence[dict[str, list[float]]]) -> dict[str, dict[str, Any]]:
    """Statistics of a case timed in several rounds (each a ``time_stages`` result), per stage.

    ``median_ms`` is the median of the round medians and ``spread_ms`` their range: rounds are
    interleaved with other configurations, so their spread is the run-to-run noise that a
    comparison has to exceed. ``n``, ``p99_ms``, ``mean_ms``, ``min_ms`` and ``max_ms`` are
    over every timed pass.
    """
    out = {}
    for stage in rounds[0]:
        s: dict[str, Any] = summarize([t for r in rounds for t in r[stage]])
        medians = [float(np.median(r[stage])) * 1e3 for r in rounds]
        s["median_ms"] = float(np.median(medians))
        s["round_medians_ms"] = medians
        s["spread_ms"] = max(medians) - min(medians)
        out[stage] = s
    return out
