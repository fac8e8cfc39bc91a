"""Numerics shared by the runtime and the PyTorch side (numpy only)."""

from __future__ import annotations

import numpy as np


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB between two uint8 images of the same shape."""
    if a.shape != b.shape:
        raise ValueError(f"psnr needs equal shapes, got {a.shape} and {b.shape}")
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def codebook_stats(indices: np.ndarray, codebook_size: int) -> dict[str, float]:
    """Codebook usage of a set of token indices.

    Returns
    -------
    dict
        ``codes_used`` (distinct codes), ``usage`` (codes_used / K) and ``perplexity``
        (exp of the entropy of the code histogram; K when all codes are equally used).
    """
    counts = np.bincount(np.asarray(indices).ravel(), minlength=codebook_size)
    p = counts / max(counts.sum(), 1)
    nz = p[p > 0]
    return {
        "codes_used": int((counts > 0).sum()),
        "usage": float((counts > 0).mean()),
        "perplexity": float(np.exp(-(nz * np.log(nz)).sum())),
    }
