"""Image conversions and the size policy, in numpy (shared by every stage)."""

from __future__ import annotations

import numpy as np

from vqedge.runtime.metrics import to_uint8


def uint8_to_float(img: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] or [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1]."""
    x = img[None] if img.ndim == 3 else img
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32) / 127.5 - 1.0


def float_to_uint8(x: np.ndarray) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3], rounded to nearest."""
    return to_uint8(x.transpose(0, 2, 3, 1))


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
