"""The runtime's size limits, in one place: the largest image side of an untiled call, what a
model's self-attention allows, and when and how far the tiled methods go.

Everything here reads a bundle's manifest and a ``max_side``; nothing takes a tokenizer.
"""

from __future__ import annotations

import math
from typing import Any

from vqedge.runtime.manifest import MANIFEST, BundleError

# the largest side an image or decode may have unless the caller raises it
DEFAULT_MAX_SIDE = 4096
# An untiled call of a model with self-attention holds a float32 [N, N] score matrix, N the
# positions of the map it attends over; the default max_side keeps that matrix within this.
ATTENTION_MAX_BYTES = 1 << 30
# above this side, the per-file methods (encode_image, reconstruct_image, decode_file) go
# tile by tile: bounded memory, the same tokens
TILE_ABOVE = 1024
# largest side the tiled methods take or make unless max_side is larger: a uint8 RGB image
# of 16384^2 is 768 MiB, held whole in and out
TILED_MAX_SIDE = 16384
# what to do with an image above max_side, for a model that may be tiled
TILED_ADVICE = "use the tiled methods (encode_tiled/decode_tiled) or raise max_side"


def check_max_side(max_side: Any) -> None:
    """Refuse a ``max_side`` that is not a positive whole number of pixels (None: default)."""
    if max_side is not None and (
        isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1
    ):
        raise ValueError(f"max_side must be a positive number of pixels, got {max_side}")


def attention_stride(manifest: dict[str, Any]) -> int | None:
    """Image pixels per position of the finest map a bundle's model attends over (the
    manifest's ``input.attention_stride``); None for models without attention."""
    stride = manifest.get("input", {}).get("attention_stride")
    if stride is None:
        return None
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise BundleError(
            f"{MANIFEST}: input.attention_stride must be a positive whole number of pixels, "
            f"got {stride!r}"
        )
    return stride


def default_max_side(manifest: dict[str, Any]) -> int:
    """The largest image side a bundle's untiled calls take unless told otherwise:
    DEFAULT_MAX_SIDE, or less where attention's score matrix would pass ATTENTION_MAX_BYTES
    (128 positions a side: 2048 pixels for attention at f=16, 512 at f=4)."""
    stride = attention_stride(manifest)
    if stride is None:
        return DEFAULT_MAX_SIDE
    positions_per_side = math.isqrt(math.isqrt(ATTENTION_MAX_BYTES // 4))
    return min(DEFAULT_MAX_SIDE, positions_per_side * stride)


def size_advice(manifest: dict[str, Any], max_side: int) -> str:
    """What to do with an image or token map above ``max_side`` (ends error messages)."""
    stride = attention_stride(manifest)
    if stride is None:
        return TILED_ADVICE
    if max_side == default_max_side(manifest):
        why = f"keeps its scores within {ATTENTION_MAX_BYTES >> 30} GiB"
    else:
        why = "was asked for"
    return (
        "resize it: this model's attention compares every pair of positions of its "
        f"1/{stride} map, so memory grows with the fourth power of the side, and tiles "
        f"would change its tokens; max_side={max_side} {why} (load with a larger "
        "max_side to accept more memory)"
    )


def may_tile(manifest: dict[str, Any]) -> bool:
    """False for a bundle whose manifest says ``"tiling": false``."""
    return manifest.get("input", {}).get("tiling", True) is not False


def tiled_max_side(manifest: dict[str, Any], max_side: int) -> int:
    """Largest image side, in pixels, the tiled methods take or make (``max_side`` where the
    bundle may not be tiled: the per-file methods then run it whole)."""
    return max(max_side, TILED_MAX_SIDE) if may_tile(manifest) else max_side


def goes_tiled(manifest: dict[str, Any], hw: tuple[int, int]) -> bool:
    """Whether a per-file call on an image of ``hw`` pixels goes tile by tile: above
    TILE_ABOVE, for a model that can be tiled (the others run whole up to max_side)."""
    return max(hw) > TILE_ABOVE and may_tile(manifest)


def untiled_tokens(max_side: int, f: int) -> int:
    """Largest token-map side an untiled decode takes: the map of a ``max_side`` image."""
    return math.ceil(max_side / f)


def check_crop(hw: tuple[int, int], size: tuple[int, int], f: int) -> None:
    """Refuse a crop ``size`` (H, W) that is not inside the h*f x w*f image of map ``hw``."""
    H, W = hw[0] * f, hw[1] * f
    if len(size) != 2 or not (0 < size[0] <= H and 0 < size[1] <= W):
        raise ValueError(
            f"size {tuple(size)} must be (H, W) within the {H}x{W} image of a "
            f"{hw[0]}x{hw[1]} token map (f={f})"
        )


def check_tiling(manifest: dict[str, Any], bundle: str, max_side: int, what: str) -> None:
    """Refuse tiling for a bundle whose manifest says ``"tiling": false`` (models whose
    attention sees the whole latent: a tile's tokens would depend on what lies outside it).

    Raises
    ------
    ValueError
        Naming the bundle, ``what`` was asked and why it is refused.
    """
    if may_tile(manifest):
        return
    why = manifest.get("input", {}).get("tiling_note") or (
        "its model's attention sees the whole latent, so tokens computed tile by tile would "
        "differ from the whole image's"
    )
    raise ValueError(
        f"bundle {bundle}: {what} is refused: {why}; give images "
        f"up to {max_side} pixels per side (max_side; resize larger ones) and use encode / "
        "decode / reconstruct, or encode_image / reconstruct_image for files"
    )
