"""The MultiScaleTokenizer: a multi-scale (VAR) bundle, one token map per scale, one image size.

``vqedge.runtime.load`` returns this class for a bundle whose manifest says ``"kind":
"multi-scale"``. It sits over the same session core as the single-scale ``Tokenizer``
(vqedge.runtime.session) and is not a subclass of it: it has no tiling methods, since it
tokenizes whole ``resolution`` x ``resolution`` images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vqedge.runtime.base import TokenizerBase
from vqedge.runtime.images import fit_square
from vqedge.runtime.inputs import to_batch, to_uint8_image
from vqedge.runtime.manifest import DECODER, ENCODER, MULTI_SCALE, QUANTIZER, SCALES
from vqedge.runtime.session import BundleSessions
from vqedge.runtime.tokens import TokenFile, save_tokens


class MultiScaleTokenizer(TokenizerBase):
    """A multi-scale bundle on onnxruntime.

    ``tokens`` in this class's methods means every scale's tokens of a batch, either
    concatenated coarse to fine as int64 [B, L] (L = ``num_tokens``), or as idx_Bl: a list
    with one int64 [B, pn*pn] (or [B, pn, pn]) array per scale. ``decode`` and
    ``idxBl_to_img`` also take a prefix of the scales (the first k), which decodes the
    coarser approximation.

    Images must be exactly ``resolution`` x ``resolution`` (other sizes are refused;
    ``encode_image`` and ``reconstruct_image`` fit any photo first, as ``preprocessing``
    says).
    """

    KIND = MULTI_SCALE

    def __init__(self, sessions: BundleSessions, max_side: int | None = None) -> None:
        super().__init__(sessions, max_side)
        cfg = sessions.config
        self.patch_nums: tuple[int, ...] = cfg.patch_nums
        self.resolution: int = cfg.resolution
        self.num_tokens: int = cfg.scale_offsets[-1]

    # -- facts ----------------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
        """Model facts, the scales, the precision that runs and the providers in use."""
        return super().info | {
            "patch_nums": list(self.patch_nums),
            "resolution": self.resolution,
            "num_tokens": self.num_tokens,
        }

    def token_shape(self, height: int, width: int) -> tuple[int, int]:
        """(1, L): every scale's tokens in one row; only the bundle's resolution is accepted."""
        self._check_size(height, width)
        return 1, self.num_tokens

    def _check_size(self, height: int, width: int) -> None:
        R = self.resolution
        if (height, width) != (R, R):
            raise ValueError(
                f"this multi-scale bundle accepts {R}x{R} images only (scales "
                f"{list(self.patch_nums)}, f={self.f}), got {height}x{width}; fit them first "
                f"with vqedge.runtime.images.fit_square(image, {R})"
            )
        self._check_max_side()

    def _check_max_side(self) -> None:
        R = self.resolution
        if self.max_side < R:
            raise ValueError(
                f"this multi-scale bundle makes {R}x{R} images, above max_side="
                f"{self.max_side}: load it with max_side >= {R}"
            )

    def _prepare(self, images: Any) -> np.ndarray:
        x = to_batch(images, self.max_side)
        self._check_size(x.shape[2], x.shape[3])
        return x

    # -- tokens ---------------------------------------------------------------------------

    def split(self, idx_BL: np.ndarray) -> list[np.ndarray]:
        """Concatenated tokens [B, L] -> idx_Bl, one [B, pn*pn] array per scale."""
        return self.config.split_scales(idx_BL)

    def token_maps(self, tokens: Any) -> list[np.ndarray]:
        """One image's row [1, L] (or [L]) -> its token maps [pn, pn], coarse to fine."""
        row = np.asarray(tokens).reshape(1, -1)
        if row.shape[1] != self.num_tokens:
            raise ValueError(f"expected one image's {self.num_tokens} tokens, got {row.size}")
        return [i[0].reshape(pn, pn) for i, pn in zip(self.split(row), self.patch_nums)]

    @property
    def token_layout(self) -> dict[str, Any]:
        """The layout in words and the side of each scale's map, coarse to fine."""
        return super().token_layout | {"map_sides": list(self.patch_nums)}

    def check_idxBl(self, idx_Bl: Any, min_scales: int = 1) -> list[np.ndarray]:
        """Check a list of scales (a prefix of at least ``min_scales``): integer [B, pn*pn]
        (or [B, pn, pn]) arrays in [0, K), one batch size. Returns int64 [B, pn*pn] arrays."""
        SN = len(self.patch_nums)
        if not isinstance(idx_Bl, list | tuple) or not min_scales <= len(idx_Bl) <= SN:
            got = len(idx_Bl) if isinstance(idx_Bl, list | tuple) else type(idx_Bl).__name__
            raise ValueError(
                f"idx_Bl must be a list of {min_scales} to {SN} scales (patch_nums "
                f"{list(self.patch_nums)}), got {got}"
            )
        out = []
        for si, idx in enumerate(idx_Bl):
            a = np.asarray(idx)
            pn = self.patch_nums[si]
            if a.dtype.kind not in "iu":
                raise ValueError(f"scale {si} must hold integer token indices, got {a.dtype}")
            if a.ndim == 3:
                a = a.reshape(a.shape[0], -1)
            if a.ndim != 2 or a.shape[1] != pn * pn or a.shape[0] == 0:
                raise ValueError(
                    f"scale {si} must be [B, {pn * pn}] (or [B, {pn}, {pn}]), got "
                    f"{np.asarray(idx).shape}"
                )
            if a.min() < 0 or a.max() >= self.codebook_size:
                raise ValueError(
                    f"scale {si} holds indices in [{a.min()}, {a.max()}], expected "
                    f"[0, {self.codebook_size})"
                )
            out.append(np.ascontiguousarray(a, dtype=np.int64))
        if len({a.shape[0] for a in out}) > 1:
            raise ValueError(f"scales differ in batch size: {[a.shape for a in out]}")
        return out

    def _as_idxBl(self, tokens: Any) -> list[np.ndarray]:
        if isinstance(tokens, list | tuple):
            return self.check_idxBl(tokens)
        a = np.asarray(tokens)
        if a.ndim == 1:
            a = a[None]
        if a.ndim != 2 or a.shape[1] != self.num_tokens:
            raise ValueError(
                f"multi-scale tokens must be [B, {self.num_tokens}] (every scale, concatenated) "
                f"or a list of per-scale arrays, got shape {a.shape}"
            )
        return self.check_idxBl(self.split(a))

    def _scales(self, idx_Bl: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(f_hat, f_hat after each scale, var_input) of a checked prefix of scales."""
        B = idx_Bl[0].shape[0]
        idx_BL = np.zeros((B, self.num_tokens), dtype=np.int64)
        # scales past the prefix are zeros: f_hat after scale k depends on scales <= k only
        given = np.concatenate(idx_Bl, axis=1)
        idx_BL[:, : given.shape[1]] = given
        return tuple(self.sessions.run(SCALES, "indices", idx_BL))

    # -- the stages -----------------------------------------------------------------------

    def encode_latent(self, images: Any) -> np.ndarray:
        """R x R images -> latent float32 [B, C, s, s] (the encoder graph alone)."""
        return self.sessions.run(ENCODER, "image", self._prepare(images))[0]

    def quantize(self, latent: np.ndarray) -> np.ndarray:
        """Latent [B, C, s, s] -> tokens int64 [B, L], every scale (the scale loop needs the
        whole latent, so it is not split into blocks)."""
        z = np.ascontiguousarray(latent, dtype=np.float32)
        C, s = self.config.code_dim, self.patch_nums[-1]
        if z.ndim != 4 or z.shape[1:] != (C, s, s):
            raise ValueError(f"latent must be float [B, {C}, {s}, {s}], got shape {z.shape}")
        return self.sessions.run(QUANTIZER, "latent", z)[0]

    def encode(self, images: Any) -> np.ndarray:
        """R x R images -> tokens int64 [B, L], every scale concatenated coarse to fine."""
        return self.quantize(self.sessions.run(ENCODER, "image", self._prepare(images))[0])

    def _decode_fhat(self, f_hat: np.ndarray) -> np.ndarray:
        return self.sessions.run(DECODER, "f_hat", np.ascontiguousarray(f_hat, np.float32))[0]

    def decode(
        self, tokens: Any, output: str = "uint8", size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Tokens -> images.

        Parameters
        ----------
        tokens : int array [B, L], or idx_Bl (every scale or a prefix)
            A prefix decodes its coarser approximation.
        output : {"uint8", "float"}
            uint8 [B, R, R, 3], or float32 [B, 3, R, R] in [-1, 1].
        size : (H, W), optional
            Crop to this size (at most R x R).
        """
        idx_Bl = self._as_idxBl(tokens)
        self._check_max_side()
        self._check_crop(size)
        f_hat, _, _ = self._scales(idx_Bl)
        return self._finish(self._decode_fhat(f_hat), size, output)

    def _check_crop(self, size: tuple[int, int] | None) -> None:
        R = self.resolution
        if size is not None and not (len(size) == 2 and 0 < size[0] <= R and 0 < size[1] <= R):
            raise ValueError(f"size {tuple(size)} must be (H, W) within the {R}x{R} image")

    def reconstruct(self, images: Any, output: str = "uint8") -> tuple[np.ndarray, np.ndarray]:
        """R x R images -> (reconstructions [B, R, R, 3] (or float), tokens [B, L]): the
        encoder, quantizer, scales and decoder graphs in turn."""
        idx = self.encode(images)
        return self.decode(idx, output=output), idx

    # -- whole files: the one policy the CLI, dataset tokenization and the demo use --------

    def encode_image(self, image: Any) -> tuple[np.ndarray, np.ndarray]:
        """One image of any size -> (tokens [1, L], the image fitted to R x R and tokenized)."""
        img = fit_square(to_uint8_image(image), self.resolution)
        return self.encode(img), img

    def reconstruct_image(self, image: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image of any size -> (uint8 reconstruction [1, R, R, 3], tokens [1, L], the
        image fitted to R x R)."""
        img = fit_square(to_uint8_image(image), self.resolution)
        recon, idx = self.reconstruct(img)
        return recon, idx, img

    def _token_file_limits(self) -> dict[str, Any]:
        # image_size records the photo before it was fitted: informative, never allocated
        return {"max_map_side": self.patch_nums[-1], "scales": self.patch_nums}

    def decode_file(self, token_file: TokenFile) -> np.ndarray:
        """What a multi-scale .vqt holds (every scale) -> uint8 [B, R, R, 3]."""
        return self.decode(list(token_file.scales))

    def describe_tokens(self, tokens: Any) -> str:
        """Tokens in words, e.g. "680 tokens over 10 scales" (of each image)."""
        n = sum(a.shape[1] for a in self._as_idxBl(tokens))
        return f"{n} tokens over {len(self.patch_nums)} scales"

    @property
    def preprocessing(self) -> str | None:
        """How images of other sizes are adapted by encode_image / reconstruct_image."""
        R = self.resolution
        return f"images are fitted to {R}x{R}: centre square, Lanczos"

    def describe(self) -> list[tuple[str, str]]:
        """Label / value rows for ``vqedge info`` (opens the four graphs' sessions, so the
        providers shown are the ones that run)."""
        rows = self._describe((ENCODER, QUANTIZER, SCALES, DECODER))
        R = self.resolution
        scales = f"{list(self.patch_nums)} ({self.num_tokens} tokens), images exactly {R}x{R}"
        return [*rows[:3], ("scales", scales), *rows[3:]]

    # -- VAR-style token lists ------------------------------------------------------------

    def img_to_idxBl(self, images: Any) -> list[np.ndarray]:
        """R x R images -> idx_Bl: one int64 [B, pn*pn] array per scale, coarse to fine."""
        return self.split(self.encode(images))

    def idxBl_to_img(
        self, idx_Bl: list[np.ndarray], output: str = "uint8", last_one: bool = True
    ) -> np.ndarray | list[np.ndarray]:
        """idx_Bl (every scale, or the first k) -> images.

        ``last_one`` decodes f_hat after the last given scale; ``last_one=False`` gives the
        progressive reconstructions, one image batch per given scale.
        """
        checked = self.check_idxBl(idx_Bl)
        self._check_max_side()
        _, f_hat_each, _ = self._scales(checked)
        if last_one:
            return self._finish(self._decode_fhat(f_hat_each[:, len(checked) - 1]), None, output)
        return [
            self._finish(self._decode_fhat(f_hat_each[:, k]), None, output)
            for k in range(len(checked))
        ]

    def idxBl_to_var_input(self, idx_Bl: list[np.ndarray]) -> np.ndarray:
        """VAR's teacher-forcing input, float32 [B, L - pn_1^2, C]: f_hat accumulated over the
        scales before each next one, area-downsampled to that scale (the last scale's tokens
        are not used and may be left out)."""
        checked = self.check_idxBl(idx_Bl, min_scales=len(self.patch_nums) - 1)
        return self._scales(checked)[2]

    # -- token files (vqedge.runtime.tokens) ----------------------------------------------

    def save_tokens(
        self, path: str | Path, tokens: Any, image_size: tuple[int, int] | None = None
    ) -> int:
        """Write every scale's maps ([B, pn, pn] each) to a .vqt file tied to this bundle;
        returns its bytes."""
        idx_Bl = self._as_idxBl(tokens)
        maps = [a.reshape(a.shape[0], pn, pn) for a, pn in zip(idx_Bl, self.patch_nums)]
        return save_tokens(
            path,
            maps,
            self.codebook_size,
            self.bundle_sha256,
            image_size=image_size,
            scales=self.patch_nums,
        )

    def __repr__(self) -> str:
        return super().__repr__().replace(", K=", f", scales={list(self.patch_nums)}, K=", 1)
