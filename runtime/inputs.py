"""Turn what users pass (paths, PIL images, arrays) into a checked float batch, and back.

:func:`read_image` is the one image reader of the runtime, the CLI, dataset tokenization and
the demo: it checks the size a file declares in its header before any pixel is decoded.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.runtime.images import uint8_to_float
from vqedge.runtime.limits import TILED_ADVICE

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Pillow formats read_image opens; others (EPS runs Ghostscript, PSD, ICO, ...) are refused
READ_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM")
# pixels a file may decode to: 8192 x 8192, 192 MiB as uint8 RGB, below Pillow's own bomb
# warning (89.5 M pixels) so that the limit hit is always this one, with its numbers
MAX_PIXELS = 8192 * 8192
# float inputs may exceed [-1, 1] by this much (rounding in the caller's conversion)
RANGE_SLACK = 1e-4
_ORIENTATION = 0x0112  # EXIF tag: how the camera was held
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class ImageError(ValueError):
    """An image that cannot be read (corrupt, truncated, unsupported) or is over the limits."""


class ImageTooLarge(ImageError):
    """An image whose longer side is over ``max_side`` (the message says both)."""


def _is_pil_image(item: Any) -> bool:
    # PIL is imported only to read files (it weighs on cold start): a PIL image can only
    # exist once its module is loaded.
    pil = sys.modules.get("PIL.Image")
    return pil is not None and isinstance(item, pil.Image)


def read_image(
    path: str | Path,
    max_side: int | None = None,
    max_pixels: int = MAX_PIXELS,
    downscale_to: int | None = None,
    name: str | None = None,
) -> np.ndarray:
    """An image file as uint8 RGB [H, W, 3], its size checked before it is decoded.

    Parameters
    ----------
    path : str or Path
        A PNG, JPEG, WebP, GIF (first frame), BMP, TIFF or PPM/PGM file.
    max_side : int, optional
        Refuse an image whose longer side (as returned) exceeds this many pixels.
    max_pixels : int
        Refuse a file that would decode to more pixels than this (``MAX_PIXELS`` by default).
    downscale_to : int, optional
        Shrink the image so that its longer side is at most this many pixels (Lanczos,
        aspect kept) instead of refusing it for ``max_side``. JPEGs are decoded at 1/2, 1/4 or
        1/8 scale straight away (``Image.draft``), so a large photo never decodes in full;
        other formats decode in full first and stay subject to ``max_pixels``.
    name : str, optional
        What error messages call the file (a server passes the user's file name, not its
        temporary path); ``path`` by default.

    Returns
    -------
    ndarray
        uint8 [H, W, 3]. Every Pillow mode is converted to RGB: 16-bit and 32-bit integer
        images (I;16*, I) are read in the 16-bit range, 0..65535 -> 0..255 rounded; float
        images (F) are taken as 0..1 (clipped, NaN -> 0); images with transparency are
        composited on white; palette, CMYK, YCbCr, LAB and HSV go through Pillow's own
        conversion. The EXIF orientation (as phones write it) is applied.

    Raises
    ------
    ImageError
        A file that is not an image of these formats, is truncated or corrupt, or is larger
        than ``max_side`` / ``max_pixels`` (checked from its header); the message names the
        file, its size and the limit.
    FileNotFoundError
        No such file.
    """
    from PIL import Image

    name = str(path) if name is None else name
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed below; opened here so OSError stays OSError)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {name}") from None
    with fh:
        try:
            im = Image.open(fh, formats=READ_FORMATS)
        except Image.DecompressionBombError as e:
            raise ImageError(
                f"{name}: image too large: {e} (read_image's limit: {max_pixels} pixels)"
            ) from None
        except Exception as e:  # noqa: BLE001 (hostile files raise anything: refuse them all)
            reason = _reason(e).replace(repr(str(path)), name).replace(str(path), name)
            raise ImageError(
                f"{name}: cannot read image: not a {'/'.join(READ_FORMATS)} file ({reason})"
            ) from None
        with im:
            return _decode(im, name, max_side, max_pixels, downscale_to)


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _decode(
    im: Any, name: str, max_side: int | None, max_pixels: int, downscale_to: int | None
) -> np.ndarray:
    """Check an opened (not yet loaded) PIL image's size, then decode it to uint8 RGB."""
    from PIL import Image

    w, h = declared = im.size
    if downscale_to is not None:
        if downscale_to < 1:
            raise ValueError(f"downscale_to must be a positive int, got {downscale_to}")
        scale = downscale_to / max(w, h, 1)
        if scale < 1 and getattr(im, "format", None) == "JPEG":
            im.draft(None, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
            w, h = im.size
    if w < 1 or h < 1:
        raise ImageError(f"{name}: image is {w}x{h}; expected non-zero height and width")
    if w * h > max_pixels:
        raise ImageError(
            f"{name}: image is {w}x{h} ({w * h} pixels), over the limit of {max_pixels} pixels"
        )
    if downscale_to is None:
        _check_side(name, w, h, max_side)
    try:
        im.load()
        orientation = _orientation(im)
        rgb = _pil_to_rgb(im)
    except ImageError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 (decoders of hostile files raise anything)
        raise ImageError(
            f"{name}: cannot read image: corrupt or truncated ({_reason(e)})"
        ) from None
    rgb = _orient(rgb, orientation)
    if downscale_to is not None and max(rgb.shape[:2]) > downscale_to:
        # the size follows from the declared one, so a JPEG draft's rounding does not leak
        dw, dh = declared[::-1] if orientation in _TRANSPOSED else declared
        s = downscale_to / max(dw, dh)
        size = (max(1, round(dw * s)), max(1, round(dh * s)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    _check_side(name, rgb.shape[1], rgb.shape[0], max_side)
    return rgb


def _check_side(name: str, w: int, h: int, max_side: int | None) -> None:
    if max_side is not None and max(w, h) > max_side:
        raise ImageTooLarge(
            f"{name}: image is {w}x{h}, its longer side {max(w, h)} is over the limit of "
            f"{max_side} pixels (max_side)"
        )


def _orientation(im: Any) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 (a broken EXIF block does not make the pixels unusable)
        return 1


def _orient(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (2..8) as ``PIL.ImageOps.exif_transpose`` does."""
    ops = {
        2: lambda x: x[:, ::-1],
        3: lambda x: x[::-1, ::-1],
        4: lambda x: x[::-1],
        5: lambda x: x.transpose(1, 0, 2),
        6: lambda x: np.rot90(x, -1),
        7: lambda x: np.rot90(x, 2).transpose(1, 0, 2),
        8: lambda x: np.rot90(x, 1),
    }
    if orientation not in ops:
        return rgb
    return np.ascontiguousarray(ops[orientation](rgb))


def _gray_to_rgb(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[..., None], 3, axis=2)


def _pil_to_rgb(im: Any) -> np.ndarray:
    """A loaded PIL image of any mode -> uint8 RGB [H, W, 3] (rules in :func:`read_image`)."""
    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return np.asarray(im, dtype=np.uint8)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        v = np.asarray(im)
        v = np.clip(v, 0, 65535).astype(np.uint32) if v.dtype.kind == "i" else v.astype(np.uint32)
        return _gray_to_rgb(((v * 255 + 32767) // 65535).astype(np.uint8))
    if mode == "F":
        v = np.nan_to_num(np.asarray(im, dtype=np.float32), nan=0.0)
        return _gray_to_rgb(np.rint(np.clip(v, 0.0, 1.0) * 255).astype(np.uint8))
    if mode in ("RGBa", "La"):  # premultiplied: on white, c + 255 - alpha
        a = np.asarray(im).astype(np.uint16)
        c = a[..., :-1] + (255 - a[..., -1:])
        out = np.minimum(c, 255).astype(np.uint8)
        return out if out.shape[2] == 3 else _gray_to_rgb(out[..., 0])
    if "A" in mode or "transparency" in im.info:
        rgba = np.asarray(im.convert("RGBA")).astype(np.uint16)
        a = rgba[..., 3:]
        return ((rgba[..., :3] * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
    return np.asarray(im.convert("RGB"), dtype=np.uint8)


def find_images(folder: str | Path) -> list[Path]:
    """Image files (PNG, JPEG, WebP) under ``folder``, recursively, in sorted order."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    return paths


def _one_uint8(item: Any, max_side: int | None, max_pixels: int) -> np.ndarray:
    if isinstance(item, (str, Path)):
        return read_image(item, max_side=max_side, max_pixels=max_pixels)
    if _is_pil_image(item):
        return _decode(item, "PIL image", max_side, max_pixels, None)
    raise TypeError(
        f"cannot use {type(item).__name__} as an image: pass file paths, PIL images, uint8 "
        "arrays [H, W, 3] / [N, H, W, 3] or float arrays [N, 3, H, W] in [-1, 1]"
    )


def to_uint8_image(
    image: Any, max_side: int | None = None, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """One image (path, PIL image or uint8 [H, W, 3] array) -> uint8 [H, W, 3].

    Paths are read by :func:`read_image`; PIL images go through the same size checks, mode
    conversion and EXIF orientation. ``max_side`` / ``max_pixels`` bound every form.
    """
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"expected one uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}"
            )
        if 0 in image.shape:
            raise ValueError(f"images must have non-zero height and width, got {image.shape}")
        _check_side("image array", image.shape[1], image.shape[0], max_side)
        return image
    return _one_uint8(image, max_side, max_pixels)


def to_batch(images: Any, max_side: int, advice: str | None = None) -> np.ndarray:
    """Images in any accepted form -> float32 [N, 3, H, W] in [-1, 1], checked.

    Raises
    ------
    ValueError
        Wrong rank or channel count, unsupported dtype, non-finite values, floats outside
        [-1, 1], an empty batch, a side above ``max_side`` (``advice`` ends the message),
        or images of different sizes; an :class:`ImageError` for a file or PIL image that
        cannot be read or is too large.
    """
    if isinstance(images, (str, Path)) or _is_pil_image(images):
        images = [images]
    if isinstance(images, Sequence) and not isinstance(images, np.ndarray):
        if len(images) == 0:
            raise ValueError("empty batch: pass at least one image")
        arrays = [
            i if isinstance(i, np.ndarray) else _one_uint8(i, max_side, MAX_PIXELS) for i in images
        ]
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
        _check_size(x.shape[0], x.shape[1], x.shape[2], max_side, advice)
        return uint8_to_float(x)
    if x.dtype not in (np.float32, np.float64, np.float16):
        raise ValueError(
            f"images must be uint8 (HWC) or float32 (NCHW in [-1, 1]), got dtype {x.dtype}"
        )
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"float images must be [N, 3, H, W] (RGB, NCHW), got shape {images.shape}")
    _check_size(x.shape[0], x.shape[2], x.shape[3], max_side, advice)
    if not np.isfinite(x).all():
        raise ValueError("images contain NaN or Inf values")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1 - RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise ValueError(
            f"float images must lie in [-1, 1], got values in [{lo:.3g}, {hi:.3g}] "
            "(uint8 images are converted for you)"
        )
    return np.ascontiguousarray(np.clip(x, -1.0, 1.0), dtype=np.float32)


def _check_size(n: int, h: int, w: int, max_side: int, advice: str | None) -> None:
    if n == 0:
        raise ValueError("empty batch: pass at least one image")
    if h == 0 or w == 0:
        raise ValueError(f"images must have non-zero height and width, got {h}x{w}")
    if max(h, w) > max_side:
        advice = advice or TILED_ADVICE
        raise ValueError(f"image side {max(h, w)} exceeds the limit of {max_side} pixels: {advice}")


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
