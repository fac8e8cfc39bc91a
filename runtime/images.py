"""Image conversions and the size policy, in numpy (shared by every stage)."""

from __future__ import annotations

import numpy as np


def uint8_to_float(img: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] or [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1]."""
    x = img[None] if img.ndim == 3 else img
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32) / 127.5 - 1.0


def float_to_uint8(x: np.ndarray) -> np.ndarray:
    """Channels-first floats in [-1, 1] -> channels-last uint8, rounded to nearest.

    The one float-to-uint8 rule of every stage (runtime, export checks, training logs).

    Parameters
    ----------
    x : ndarray
        float [N, 3, H, W] (or [3, H, W]) in [-1, 1]; values outside are clipped.

    Returns
    -------
    ndarray
        uint8 [N, H, W, 3] (or [H, W, 3]).
    """
    if x.ndim not in (3, 4):
        raise ValueError(f"expected float images [N, 3, H, W] or [3, H, W], got shape {x.shape}")
    hwc = np.moveaxis(np.asarray(x, dtype=np.float32), -3, -1)
    return np.clip(np.rint((hwc + 1.0) * 127.5), 0, 255).astype(np.uint8)


def pad_to_multiple(x: np.ndarray, f: int) -> np.ndarray:
    """Pad [N, C, H, W] at the bottom and right by repeating edge pixels to multiples of f."""
    ph, pw = -x.shape[2] % f, -x.shape[3] % f
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")


def fit_square(img: np.ndarray, side: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [side, side, 3]: centre square crop, then a Lanczos resize.

    What a fixed-size (multi-scale) tokenizer needs from an arbitrary photo, as VAR
    prepares its images (shorter side to size, centre crop).
    """
    from PIL import Image  # only here: keeps Pillow out of the runtime's import time

    H, W = img.shape[:2]
    s = min(H, W)
    y, x = (H - s) // 2, (W - s) // 2
    square = img[y : y + s, x : x + s]
    if s == side:
        return np.ascontiguousarray(square)
    return np.asarray(Image.fromarray(square).resize((side, side), Image.Resampling.LANCZOS))
