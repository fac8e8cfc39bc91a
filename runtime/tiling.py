"""Tiled encode and decode: large images in bounded memory, the one tiling rule.

The token map is cut into core tiles of ``tile / f`` tokens. Each tile is run with a margin
of ``overlap / f`` tokens of real context on every side (clipped at the image border), and
only its core is kept. When the margin covers the encoder's and decoder's receptive field
(about 34 pixels and 10 tokens for the default f=4 model, so the default overlap of 64
pixels does), tiled tokens equal untiled ones up to float rounding, and the tiled
reconstruction matches the untiled one; the only differences come from ties flipped by
rounding at a different tile shape.

Memory: one tile of (tile + 2 * overlap)^2 pixels is in flight at a time, plus the uint8
input and output images; the float copy of the whole image is never made
(benchmarks/tiled_memory.py measures it; figures in benchmarks/results).

Size policy (vqedge.runtime.limits): the untiled methods take and give sides up to the
tokenizer's ``max_side``; the tiled ones up to ``limits.tiled_max_side``, since only the uint8
image is held whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from vqedge.runtime import limits
from vqedge.runtime.images import float_to_uint8, uint8_to_float
from vqedge.runtime.manifest import DECODER, ENCODER

if TYPE_CHECKING:
    from vqedge.runtime.tokenizer import Tokenizer


def _tiles(h: int, w: int, core: int, margin: int) -> Iterator[tuple[slice, slice, slice, slice]]:
    """(context rows, context cols, core rows within context, core cols within context)."""
    for y0 in range(0, h, core):
        for x0 in range(0, w, core):
            y1, x1 = min(y0 + core, h), min(x0 + core, w)
            cy0, cx0 = max(0, y0 - margin), max(0, x0 - margin)
            cy1, cx1 = min(h, y1 + margin), min(w, x1 + margin)
            yield (
                slice(cy0, cy1),
                slice(cx0, cx1),
                slice(y0 - cy0, y1 - cy0),
                slice(x0 - cx0, x1 - cx0),
            )


def _check_tile(tok: Tokenizer, tile: int, overlap: int) -> tuple[int, int]:
    f = tok.f
    if tile <= 0 or tile % f or overlap < 0 or overlap % f:
        raise ValueError(f"tile ({tile}) and overlap ({overlap}) must be multiples of f={f}")
    return tile // f, overlap // f


def encode_tiled(
    tok: Tokenizer, image: np.ndarray, tile: int = 512, overlap: int = 64
) -> np.ndarray:
    """One uint8 image [H, W, 3] -> token map int64 [1, ceil(H/f), ceil(W/f)].

    Raises
    ------
    ValueError
        A bundle that refuses tiling (``limits.check_tiling``), not one uint8 RGB image, a
        side above the tiled limit, or a tile / overlap that is not a multiple of f.
    """
    limits.check_tiling(tok.manifest, tok.root.name, tok.max_side, "tiled encode")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
        raise ValueError(f"tiled encode takes one uint8 RGB image [H, W, 3], got {image.shape}")
    H, W = image.shape[:2]
    limit = limits.tiled_max_side(tok.manifest, tok.max_side)
    if max(H, W) > limit:
        raise ValueError(f"image side {max(H, W)} exceeds the tiled limit of {limit} pixels")
    core, margin = _check_tile(tok, tile, overlap)
    f = tok.f
    h, w = tok.token_shape(H, W)
    out = np.empty((1, h, w), dtype=np.int64)
    for ry, rx, cy, cx in _tiles(h, w, core, margin):
        px = image[ry.start * f : ry.stop * f, rx.start * f : rx.stop * f]
        # edge tiles past H or W: repeat the last row/column, as the untiled policy does
        ph, pw = (ry.stop - ry.start) * f - px.shape[0], (rx.stop - rx.start) * f - px.shape[1]
        if ph or pw:
            px = np.pad(px, ((0, ph), (0, pw), (0, 0)), mode="edge")
        latent = tok.sessions.run(ENCODER, "image", uint8_to_float(px))[0]
        idx = tok.quantize(latent)
        out[0, ry, rx][cy, cx] = idx[0, cy, cx]
    return out


def decode_tiled(
    tok: Tokenizer,
    indices: np.ndarray,
    tile: int = 512,
    overlap: int = 64,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Checked token map int64 [1, h, w] -> uint8 image [1, H, W, 3] (H, W = size, default
    h*f, w*f).

    Raises
    ------
    ValueError
        A bundle that refuses tiling (``limits.check_tiling``), not one token map, an image
        side above the tiled limit (refused before anything is allocated), a crop outside
        the image, or a bad tile / overlap.
    """
    limits.check_tiling(tok.manifest, tok.root.name, tok.max_side, "tiled decode")
    if indices.ndim != 3 or indices.shape[0] != 1:
        raise ValueError(f"tiled decode takes one token map [1, h, w], got {indices.shape}")
    core, margin = _check_tile(tok, tile, overlap)
    f = tok.f
    _, h, w = indices.shape
    limit = limits.tiled_max_side(tok.manifest, tok.max_side)
    if max(h, w) > limits.untiled_tokens(limit, f):
        raise ValueError(
            f"a {h}x{w} token map decodes to a {h * f}x{w * f} image (f={f}), above the tiled "
            f"limit of {limit} pixels"
        )
    if size is not None:
        limits.check_crop((h, w), size, f)
    out = np.empty((1, h * f, w * f, 3), dtype=np.uint8)
    for ry, rx, cy, cx in _tiles(h, w, core, margin):
        img = tok.sessions.run(DECODER, "indices", np.ascontiguousarray(indices[:, ry, rx]))[0]
        block = img[:, :, cy.start * f : cy.stop * f, cx.start * f : cx.stop * f]
        oy, ox = (ry.start + cy.start) * f, (rx.start + cx.start) * f
        out[:, oy : oy + block.shape[2], ox : ox + block.shape[3]] = float_to_uint8(block)
    if size is not None:
        out = out[:, : size[0], : size[1]]
    return out


def reconstruct_tiled(
    tok: Tokenizer, image: np.ndarray, tile: int = 512, overlap: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 image [H, W, 3] -> (uint8 reconstruction [1, H, W, 3], token map [1, h, w])."""
    idx = encode_tiled(tok, image, tile, overlap)
    return decode_tiled(tok, idx, tile, overlap, size=image.shape[:2]), idx
