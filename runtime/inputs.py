"""Turn what users pass (paths, PIL images, arrays) into a checked float batch, and back."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.runtime.images import uint8_to_float

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# float inputs may exceed [-1, 1] by this much (rounding in the caller's conversion)
RANGE_SLACK = 1e-4


def _is_pil_image(item: Any) -> bool:
    # PIL is imported only to read files (15 ms of a 0.3 s cold start): a PIL image can only
    # exist once its module is loaded.
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(item, pil.Image)


def read_image(path: str | Path) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3]; a clear ValueError if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def find_images(folder: str | Path) -> list[Path]:
    """Image files (PNG, JPEG, WebP) under ``folder``, recursively, in sorted order."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    return paths


def _one_uint8(item: Any) -> np.ndarray:
    if isinstance(item, (str, Path)):
        return read_image(item)
    if _is_pil_image(item):
        return np.asarray(item.convert("RGB"), dtype=np.uint8)
    raise TypeError(
        f"cannot use {type(item).__name__} as an image: pass file paths, PIL images, uint8 "
        "arrays [H, W, 3] / [N, H, W, 3] or float arrays [N, 3, H, W] in [-1, 1]"
    )


def to_uint8_image(image: Any) -> np.ndarray:
    """One image (path, PIL image or uint8 [H, W, 3] array) -> uint8 [H, W, 3]."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"expected one uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}"
            )
        if 0 in image.shape:
            raise ValueError(f"images must have non-zero height and width, got {image.shape}")
        return image
    return _one_uint8(image)


def to_batch(images: Any, max_side: int) -> np.ndarray:
    """Images in any accepted form -> float32 [N, 3, H, W] in [-1, 1], checked.

    Raises
    ------
    ValueError
        Wrong rank or channel count, unsupported dtype, non-finite values, floats outside
        [-1, 1], an empty batch, a side above ``max_side``, or images of different sizes.
    """
    if isinstance(images, (str, Path)) or _is_pil_image(images):
        images = [images]
    if isinstance(images, Sequence) and not isinstance(images, np.ndarray):
        if len(images) == 0:
            raise ValueError("empty batch: pass at least one image")
        arrays = [_one_uint8(i) if not isinstance(i, np.ndarray) else i for i in images]
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ValueError(
                f"images in one batch must share a size, got {sorted(shapes)}; "
                "pass them one at a time"
            )
        images = np.stack(arrays)
    if not isinstance(images, np.ndarray):
        raise TypeError(f"cannot use {type(images).__name__} as images")
    x = images
    if x.dtype == np.uint8:
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(
                f"uint8 images must be RGB [H, W, 3] or [N, H, W, 3], got shape {images.shape}"
            )
        _check_size(x.shape[0], x.shape[1], x.shape[2], max_side)
        return uint8_to_float(x)
    if x.dtype not in (np.float32, np.float64, np.float16):
        raise ValueError(
            f"images must be uint8 (HWC) or float32 (NCHW in [-1, 1]), got dtype {x.dtype}"
        )
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"float images must be [N, 3, H, W] (RGB, NCHW), got shape {images.shape}")
    _check_size(x.shape[0], x.shape[2], x.shape[3], max_side)
    if not np.isfinite(x).all():
        raise ValueError("images contain NaN or Inf values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise ValueError(
            f"float images must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}] "
            "(uint8 images are converted for you)"
        )
    return np.ascontiguousarray(np.clip(x, -1.0, 1.0), dtype=np.float32)


def _check_size(n: int, h: int, w: int, max_side: int) -> None:
    if n == 0:
        raise ValueError("empty batch: pass at least one image")
    if h == 0 or w == 0:
        raise ValueError(f"images must have non-zero height and width, got {h}x{w}")
    if max(h, w) > max_side:
        raise ValueError(
            f"image side {max(h, w)} exceeds the limit of {max_side} pixels: use the tiled "
            "methods (encode_tiled/decode_tiled) or raise max_side"
        )


def check_indices(indices: Any, codebook_size: int) -> np.ndarray:
    """Token maps -> int64 [B, h, w], checked: integer dtype, rank 2 or 3, values in [0, K)."""
    idx = np.asarray(indices)
    if idx.dtype.kind not in "iu":
        raise ValueError(f"token indices must be integers (int64), got dtype {idx.dtype}")
    if idx.ndim == 2:
        idx = idx[None]
    if idx.ndim != 3 or 0 in idx.shape:
        raise ValueError(f"token indices must be a non-empty [B, h, w] map, got {idx.shape}")
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= codebook_size:
        raise ValueError(f"token indices must lie in [0, {codebook_size}), got [{lo}, {hi}]")
    return np.ascontiguousarray(idx, dtype=np.int64)


def token_map_hw(n_tokens: int, hw: tuple[int, int] | None) -> tuple[int, int]:
    """(h, w) of a flat [B, l] token map: ``hw`` checked against l, or a square map."""
    if hw is None:
        side = math.isqrt(n_tokens)
        if side * side != n_tokens:
            raise ValueError(f"{n_tokens} tokens are not a square map: pass hw=(h, w)")
        return side, side
    if hw[0] * hw[1] != n_tokens:
        raise ValueError(f"hw={hw} does not match {n_tokens} tokens per image")
    return hw
