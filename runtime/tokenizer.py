"""The single-scale Tokenizer: an image of any size <-> one token map int64 [B, h, w],
h = ceil(H / f), w = ceil(W / f).

``vqedge.runtime.load`` returns this class for a bundle of kind ``single-scale`` (the table
of kinds: vqedge.runtime.kind); every kind sits over one session core (vqedge.runtime.session).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.runtime import limits, tiling
from vqedge.runtime.base import TokenizerBase
from vqedge.runtime.images import pad_to_multiple
from vqedge.runtime.inputs import (
    ImageTooLarge,
    check_indices,
    to_batch,
    to_uint8_image,
    token_map_hw,
)
from vqedge.runtime.manifest import DECODER, ENCODER, QUANTIZER, SINGLE_SCALE
from vqedge.runtime.providers import DEVICE_MEMORY, provider_names
from vqedge.runtime.session import BundleSessions
from vqedge.runtime.tokens import TokenFile, save_tokens

# latents per quantizer call: 4 MiB of scores against a codebook of 1024 codes
LOOKUP_LATENTS = 1024


class Tokenizer(TokenizerBase):
    """A single-scale bundle on onnxruntime: images of any size <-> one token map.

    ``tokens`` (and ``indices``) in this class's methods always mean an int64 token map
    [B, h, w] (a [h, w] map is taken as B = 1), values in [0, K).

    Images go in as file paths, PIL images, uint8 [H, W, 3] / [N, H, W, 3] arrays, or
    float32 [N, 3, H, W] arrays in [-1, 1]. A size that is not a multiple of f is edge-padded
    at the bottom and right, and reconstructions are cropped back. The untiled methods take
    sides up to ``max_side`` pixels, images in and images out; the tiled ones (and the
    per-file methods above ``TILE_ABOVE``) up to ``vqedge.runtime.limits.tiled_max_side``.
    """

    KIND = SINGLE_SCALE

    def __init__(self, sessions: BundleSessions, max_side: int | None = None) -> None:
        super().__init__(sessions, max_side)
        # on a GPU, keep the latent on the device between encoder and quantizer
        self.io_binding = sessions.on_device

    @property
    def info(self) -> dict[str, Any]:
        """Model facts, the precision that runs, the providers running each open session,
        and whether the latent stays on the device between encoder and quantizer."""
        return super().info | {"io_binding": self.io_binding}

    def token_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the token map of an H x W image."""
        return math.ceil(height / self.f), math.ceil(width / self.f)

    # -- the stages -----------------------------------------------------------------------

    def _prepare(self, images: Any) -> tuple[np.ndarray, tuple[int, int]]:
        x = to_batch(images, self.max_side, self.size_advice)
        size = (x.shape[2], x.shape[3])
        return pad_to_multiple(x, self.f), size

    def encode_latent(self, images: Any) -> np.ndarray:
        """Images -> latent float32 [B, C, h, w] (the encoder graph alone)."""
        x, _ = self._prepare(images)
        return self.sessions.run(ENCODER, "image", x)[0]

    def quantize(self, latent: np.ndarray) -> np.ndarray:
        """Latent [B, C, h, w] -> token map int64 [B, h, w] (the quantizer graph alone).

        Run over blocks of at most LOOKUP_LATENTS latents: the lookup's scores are
        [latents, K] floats, so blocks bound their memory; every latent's token is its own,
        so the blocks change nothing.
        """
        z = np.ascontiguousarray(latent, dtype=np.float32)
        C = self.config.code_dim
        if z.ndim != 4 or z.shape[1] != C:
            raise ValueError(f"latent must be float [B, {C}, h, w], got shape {z.shape}")
        B, _, h, w = z.shape
        if B * h * w <= LOOKUP_LATENTS:
            return self.sessions.run(QUANTIZER, "latent", z)[0]
        rows = max(1, LOOKUP_LATENTS // w)
        idx = np.empty((B, h, w), np.int64)
        for b in range(B):
            for r in range(0, h, rows):
                block = np.ascontiguousarray(z[b : b + 1, :, r : r + rows])
                idx[b, r : r + rows] = self.sessions.run(QUANTIZER, "latent", block)[0][0]
        return idx

    def encode(self, images: Any) -> np.ndarray:
        """Images -> token map int64 [B, h, w], h = ceil(H / f), w = ceil(W / f)."""
        x, _ = self._prepare(images)
        return self._encode_padded(x)

    def _encode_padded(self, x: np.ndarray) -> np.ndarray:
        """A float batch already a multiple of f -> token map (used by the tiling too)."""
        if self.io_binding:
            return self._encode_bound(x)
        return self.quantize(self.sessions.run(ENCODER, "image", x)[0])

    def _encode_bound(self, x: np.ndarray) -> np.ndarray:
        """Encoder -> quantizer with the latent left on the device between the two graphs."""
        first = provider_names(self.sessions.providers)[0]
        device = "cuda" if first in DEVICE_MEMORY else "cpu"
        enc, quant = self.sessions.session(ENCODER), self.sessions.session(QUANTIZER)
        b1 = enc.io_binding()
        b1.bind_cpu_input("image", x)
        b1.bind_output("latent", device)
        enc.run_with_iobinding(b1)
        latent = b1.get_outputs()[0]
        b2 = quant.io_binding()
        b2.bind_ortvalue_input("latent", latent)
        b2.bind_output("indices", "cpu")
        quant.run_with_iobinding(b2)
        return b2.copy_outputs_to_cpu()[0]

    def decode(
        self, tokens: Any, output: str = "uint8", size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Token map [B, h, w] (or [h, w]) -> images.

        Parameters
        ----------
        tokens : int array [B, h, w] or [h, w]
            Values in [0, K). A map whose image (h*f x w*f) has a side above ``max_side``
            (rounded up to a multiple of f) is refused before anything runs: decode it with
            ``decode_tiled``.
        output : {"uint8", "float"}
            uint8 [B, H, W, 3], or float32 [B, 3, H, W] in [-1, 1].
        size : (H, W), optional
            Crop to this original image size (default: the full h*f x w*f).

        Raises
        ------
        ValueError
            Bad tokens, a map too large for ``max_side``, or a ``size`` larger than the map.
        """
        idx = check_indices(tokens, self.codebook_size)
        limit = limits.untiled_tokens(self.max_side, self.f)
        if max(idx.shape[1:]) > limit:
            raise ValueError(
                f"a {idx.shape[1]}x{idx.shape[2]} token map decodes to a "
                f"{idx.shape[1] * self.f}x{idx.shape[2] * self.f} image (f={self.f}), above "
                f"max_side={self.max_side} (at most {limit} tokens a side): {self.size_advice}"
            )
        return self._decode_checked(idx, output, size)

    def _decode_checked(
        self, idx: np.ndarray, output: str, size: tuple[int, int] | None
    ) -> np.ndarray:
        if size is not None:
            limits.check_crop(idx.shape[1:], size, self.f)
        return self._finish(self.sessions.run(DECODER, "indices", idx)[0], size, output)

    def reconstruct(self, images: Any, output: str = "uint8") -> tuple[np.ndarray, np.ndarray]:
        """Images -> (reconstructions at the input size, token map [B, h, w]): the encoder,
        quantizer and decoder graphs in turn."""
        x, size = self._prepare(images)
        idx = self._encode_padded(x)
        return self._decode_checked(idx, output, size), idx

    # -- any size, bounded memory (the one tiling rule: vqedge.runtime.tiling) -------------

    def _read(self, image: Any) -> np.ndarray:
        """One image as uint8 [H, W, 3], a file's size checked from its header against the
        largest side the tiled methods take."""
        try:
            return to_uint8_image(image, max_side=self._tiled_max_side)
        except ImageTooLarge as e:
            if limits.may_tile(self.manifest):
                raise
            raise ImageTooLarge(f"{e}: {self.size_advice}") from None

    @property
    def _tiled_max_side(self) -> int:
        return limits.tiled_max_side(self.manifest, self.max_side)

    def _token_file_limits(self) -> dict[str, Any]:
        side = self._tiled_max_side
        return {"max_image_side": side, "max_map_side": -(-side // self.f)}

    def encode_tiled(self, image: Any, tile: int = 512, overlap: int = 64) -> np.ndarray:
        """One image of any size up to the tiled limit -> token map int64 [1, h, w],
        tile by tile."""
        return tiling.encode_tiled(self, self._read(image), tile, overlap)

    def decode_tiled(
        self,
        tokens: Any,
        tile: int = 512,
        overlap: int = 64,
        size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """One token map [1, h, w] -> uint8 image [1, H, W, 3], tile by tile; sides up to
        ``limits.tiled_max_side`` pixels."""
        idx = check_indices(tokens, self.codebook_size)
        return tiling.decode_tiled(self, idx, tile, overlap, size)

    def reconstruct_tiled(
        self, image: Any, tile: int = 512, overlap: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        """One image of any size -> (uint8 reconstruction [1, H, W, 3], token map [1, h, w])."""
        return tiling.reconstruct_tiled(self, self._read(image), tile, overlap)

    # -- whole files: the one policy the CLI, dataset tokenization and the demo use --------

    def encode_image(self, image: Any) -> tuple[np.ndarray, np.ndarray]:
        """One image of any size -> (token map [1, h, w], the uint8 image tokenized), tile by
        tile when a side is above TILE_ABOVE pixels."""
        img = self._read(image)
        if self._goes_tiled(img.shape[:2]):
            return self.encode_tiled(img), img
        return self.encode(img), img

    def reconstruct_image(self, image: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image of any size -> (uint8 reconstruction [1, H, W, 3], token map [1, h, w],
        the uint8 image tokenized), tile by tile above TILE_ABOVE pixels."""
        img = self._read(image)
        if self._goes_tiled(img.shape[:2]):
            recon, idx = self.reconstruct_tiled(img)
        else:
            recon, idx = self.reconstruct(img)
        return recon, idx, img

    def decode_file(self, token_file: TokenFile) -> np.ndarray:
        """What a single-scale .vqt holds -> uint8 [B, H, W, 3], cropped to its image_size,
        tile by tile when a side is above TILE_ABOVE pixels."""
        idx = token_file.indices
        size = tuple(token_file.image_size) if token_file.image_size else None
        if not self._goes_tiled((idx.shape[1] * self.f, idx.shape[2] * self.f)):
            return self.decode(idx, size=size)
        return np.concatenate(
            [self.decode_tiled(idx[b : b + 1], size=size) for b in range(len(idx))]
        )

    def _goes_tiled(self, hw: tuple[int, int]) -> bool:
        return limits.goes_tiled(self.manifest, hw)

    def describe_tokens(self, tokens: Any) -> str:
        """A token map in words, e.g. "64x48 token map" (h x w; "3 x 64x48" for a batch)."""
        t = np.asarray(tokens)
        hw = f"{t.shape[-2]}x{t.shape[-1]} token map"
        return hw if t.ndim < 3 or t.shape[0] == 1 else f"{t.shape[0]} x {hw}s"

    @property
    def preprocessing(self) -> str | None:
        """None: images of any size are taken as they are (edge-padded to a multiple of f)."""
        return None

    def describe(self) -> list[tuple[str, str]]:
        """Label / value rows for ``vqedge info`` (opens the three graphs' sessions, so the
        providers shown are the ones that run)."""
        return self._describe((ENCODER, QUANTIZER, DECODER))

    # -- token files (vqedge.runtime.tokens) ----------------------------------------------

    def save_tokens(
        self, path: str | Path, tokens: Any, image_size: tuple[int, int] | None = None
    ) -> int:
        """Write a token map [B, h, w] as a .vqt file tied to this bundle; returns its bytes."""
        idx = check_indices(tokens, self.codebook_size)
        return save_tokens(path, idx, self.codebook_size, self.bundle_sha256, image_size=image_size)

    # -- VAR-style token lists ------------------------------------------------------------

    def img_to_idxBl(self, images: Any) -> list[np.ndarray]:
        """Images -> idx_Bl: one int64 [B, h*w] array per scale (one scale here)."""
        idx = self.encode(images)
        return [idx.reshape(idx.shape[0], -1)]

    def idxBl_to_img(
        self, idx_Bl: list[np.ndarray], hw: tuple[int, int] | None = None, output: str = "uint8"
    ) -> np.ndarray:
        """idx_Bl -> images; the last scale is decoded ([B, h, w], or [B, l] with ``hw``;
        a [B, l] without ``hw`` is taken as a square map)."""
        if not idx_Bl:
            raise ValueError("idx_Bl must hold at least one scale")
        idx = np.asarray(idx_Bl[-1])
        if idx.ndim == 2:
            idx = idx.reshape(idx.shape[0], *token_map_hw(idx.shape[1], hw))
        return self.decode(idx, output=output)

    def idxBl_to_var_input(self, idx_Bl: list[np.ndarray]) -> np.ndarray:
        """idx_Bl -> code embeddings of every token as one sequence, float32 [B, L, C]."""
        if not idx_Bl:
            raise ValueError("idx_Bl must hold at least one scale")
        flat = np.concatenate([np.asarray(i).reshape(len(i), -1) for i in idx_Bl], axis=1)
        flat = check_indices(flat[:, None, :], self.codebook_size)[:, 0]  # [B, L]
        return self.codebook[flat]


__all__ = ["LOOKUP_LATENTS", "Tokenizer"]
