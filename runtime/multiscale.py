"""The Tokenizer of a multi-scale (VAR) bundle: one token map per scale, one image size.

``Tokenizer.load`` returns this class for a bundle whose manifest says ``"kind":
"multi-scale"``; the API is the single-scale one, with tokens as idx_Bl lists (one int64
[B, pn*pn] array per scale, coarse to fine) or as their concatenation [B, L].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vqedge.runtime.images import fit_square
from vqedge.runtime.inputs import to_batch, to_uint8_image
from vqedge.runtime.tokenizer import Tokenizer
from vqedge.runtime.tokens import save_tokens


class MultiScaleTokenizer(Tokenizer):
    """A multi-scale bundle on onnxruntime.

    Images must be exactly ``resolution`` x ``resolution``
    (``vqedge.runtime.images.fit_square`` makes any photo so); other sizes are refused.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.patch_nums: tuple[int, ...] = self.config.patch_nums
        self.resolution: int | None = self.config.resolution
        self.num_tokens = self.config.scale_offsets[-1]

    # -- facts ----------------------------------------------------------------------------

    @property
    def info(self) -> dict[str, Any]:
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

    def _prepare(self, images: Any) -> tuple[np.ndarray, tuple[int, int]]:
        x = to_batch(images, self.max_side)
        self._check_size(x.shape[2], x.shape[3])
        return x, (x.shape[2], x.shape[3])

    # -- tokens ---------------------------------------------------------------------------

    def split(self, idx_BL: np.ndarray) -> list[np.ndarray]:
        """Concatenated tokens [B, L] -> idx_Bl, one [B, pn*pn] array per scale."""
        return self.config.split_scales(idx_BL)

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

    def _as_idxBl(self, indices: Any) -> list[np.ndarray]:
        if isinstance(indices, list | tuple):
            return self.check_idxBl(indices)
        a = np.asarray(indices)
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
        return tuple(self._session("scales").run(None, {"indices": idx_BL}))

    def quantize(self, latent: np.ndarray) -> np.ndarray:
        """Latent [B, C, s, s] -> tokens int64 [B, L], every scale (the scale loop needs the
        whole latent, so it is not split into blocks)."""
        z = np.ascontiguousarray(latent, dtype=np.float32)
        C, s = self.config.code_dim, self.patch_nums[-1]
        if z.shape[1:] != (C, s, s):
            raise ValueError(f"latent must be float [B, {C}, {s}, {s}], got shape {z.shape}")
        return self._run("quantizer", "latent", z)[0]

    def _decode_fhat(self, f_hat: np.ndarray) -> np.ndarray:
        return self._run("decoder", "f_hat", np.ascontiguousarray(f_hat, dtype=np.float32))[0]

    # -- the stages -----------------------------------------------------------------------

    def decode(
        self, indices: Any, output: str = "uint8", size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Tokens [B, L] or idx_Bl (all scales or a prefix) -> images [B, R, R, 3] (uint8) or
        float32 [B, 3, R, R]; a prefix decodes its coarser approximation."""
        f_hat, _, _ = self._scales(self._as_idxBl(indices))
        return self._finish(self._decode_fhat(f_hat), size, output)

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

    def decode_file(self, token_file: Any) -> np.ndarray:
        """What a multi-scale .vqt holds (every scale) -> uint8 [B, R, R, 3]."""
        return self.decode(token_file.scales)

    def describe_tokens(self, tokens: Any) -> str:
        """Tokens in words, e.g. "680 tokens over 10 scales"."""
        return f"{self.num_tokens} tokens over {len(self.patch_nums)} scales"

    @property
    def preprocessing(self) -> str | None:
        """How images are adapted before they are tokenized."""
        R = self.resolution
        return f"images are fitted to {R}x{R}: centre square, Lanczos"

    def describe(self) -> list[tuple[str, str]]:
        rows = super().describe()
        R = self.resolution
        scales = f"{list(self.patch_nums)} ({self.num_tokens} tokens), images exactly {R}x{R}"
        return [*rows[:2], ("scales", scales), *rows[2:]]

    # -- VAR-style token lists ------------------------------------------------------------

    def img_to_idxBl(self, images: Any) -> list[np.ndarray]:
        """Images -> idx_Bl: one int64 [B, pn*pn] array per scale, coarse to fine."""
        return self.split(self.encode(images))

    def idxBl_to_img(
        self,
        idx_Bl: list[np.ndarray],
        hw: tuple[int, int] | None = None,
        output: str = "uint8",
        last_one: bool = True,
    ) -> np.ndarray | list[np.ndarray]:
        """idx_Bl (every scale, or the first k) -> images.

        ``last_one`` decodes f_hat after the last given scale; ``last_one=False`` gives the
        progressive reconstructions, one image batch per given scale. ``hw`` exists for the
        single-scale signature and must be None or (R, R).
        """
        if hw is not None:
            self._check_size(*hw)
        checked = self.check_idxBl(idx_Bl)
        f_hat, f_hat_each, _ = self._scales(checked)
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

    # -- what a fixed-size bundle cannot do -----------------------------------------------

    def _no_tiles(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError(
            f"tiling does not apply to a multi-scale bundle: it tokenizes whole "
            f"{self.resolution}x{self.resolution} images (fit_square other sizes)"
        )

    encode_tiled = decode_tiled = reconstruct_tiled = _no_tiles

    # -- token files ----------------------------------------------------------------------

    def save_tokens(
        self, path: str | Path, indices: Any, image_size: tuple[int, int] | None = None
    ) -> int:
        """Write every scale's maps ([B, pn, pn] each) to a .vqt file tied to this bundle."""
        idx_Bl = self._as_idxBl(indices)
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
        return (
            super()
            .__repr__()
            .replace("Tokenizer(", "MultiScaleTokenizer(", 1)
            .replace(", K=", f", scales={list(self.patch_nums)}, K=", 1)
        )
