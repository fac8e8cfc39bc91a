"""Recipe of a multi-scale (VAR) tokenizer: one image size, tokens of every scale.

The bundle accepts one image size, R x R (R = pn[-1] * f), declared in its manifest. The
per-scale loop unrolls at trace time; its resizes are fixed matrices for that size (see
vqedge.models.multiscale), so the graphs are exact there, which the gate proves graph by
graph and scale by scale. Graphs: encoder (image -> latent), quantizer (latent -> indices
[B, L]), scales (indices -> f_hat, f_hat after each scale, VAR's teacher-forcing input) and
decoder (f_hat -> image).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqedge.export.graphs import (
    EncoderGraph,
    FhatDecoderGraph,
    MultiScaleQuantizerGraph,
    ScalesGraph,
)
from vqedge.export.recipe import (
    Calibration,
    Graphs,
    Recipe,
    session,
    training_crops,
)
from vqedge.export.validate import (
    ExportValidationError,
    format_multiscale_report,
    validate_multiscale,
)
from vqedge.models.data import held_out_paths
from vqedge.runtime.images import fit_square, float_to_uint8, uint8_to_float
from vqedge.runtime.inputs import read_image
from vqedge.runtime.manifest import DECODER, ENCODER, MULTI_SCALE, QUANTIZER, SCALES
from vqedge.runtime.metrics import psnr

# image pixels the decoder runs on at once when measuring every prefix of scales
DECODE_PIXELS = 4 * 256 * 256


class MultiScaleRecipe(Recipe):
    kind = MULTI_SCALE
    io = {
        ENCODER: (["image"], ["latent"]),
        QUANTIZER: (["latent"], ["indices"]),
        SCALES: (["indices"], ["f_hat", "f_hat_each", "var_input"]),
        DECODER: (["f_hat"], ["image"]),
    }
    # one image size, so only the batch is dynamic
    dim_names = {
        "image": ["batch", None, None, None],
        "latent": ["batch", None, None, None],
        "indices": ["batch", None],
        "f_hat": ["batch", None, None, None],
        "f_hat_each": ["batch", None, None, None, None],
        "var_input": ["batch", None, None],
    }
    wrappers = {
        ENCODER: EncoderGraph,
        QUANTIZER: MultiScaleQuantizerGraph,
        SCALES: ScalesGraph,
        DECODER: FhatDecoderGraph,
    }

    def examples(self) -> dict[str, torch.Tensor]:
        cfg = self.config
        R, s, C = cfg.resolution, cfg.patch_nums[-1], cfg.code_dim
        return {  # batch 2 at trace time; validated at batch 1 and 3
            ENCODER: torch.rand(2, 3, R, R) * 2 - 1,
            QUANTIZER: torch.randn(2, C, s, s),
            SCALES: torch.randint(0, cfg.codebook_size, (2, cfg.scale_offsets[-1])),
            DECODER: torch.randn(2, C, s, s),
        }

    def flop_inputs(self) -> dict[str, list[int]]:
        H, W = self.flop_size()
        f, C = self.config.downsample_factor, self.config.code_dim
        latent = [1, C, H // f, W // f]
        L = self.config.scale_offsets[-1]
        return {ENCODER: [1, 3, H, W], QUANTIZER: latent, SCALES: [1, L], DECODER: latent}

    def size_policy(self) -> str:
        R = self.config.resolution
        return f"exactly {R}x{R} (H = W = patch_nums[-1] * f); other sizes are refused"

    @cached_property
    def photos(self) -> list[np.ndarray]:
        """The held-out photos, centre square, resized to R x R (uint8 [R, R, 3])."""
        R = self.config.resolution
        return [fit_square(read_image(p), R) for p in held_out_paths()]

    def validate(self, graphs: Graphs) -> tuple[bool, str, list[dict[str, Any]]]:
        R = self.config.resolution
        noise = np.random.default_rng(1).integers(0, 256, (2, R, R, 3), dtype=np.uint8)
        batches = [
            torch.from_numpy(uint8_to_float(self.photos[0])),  # 1 x 3 x R x R
            torch.from_numpy(uint8_to_float(np.stack(self.photos))),  # 3 x 3 x R x R
            torch.from_numpy(uint8_to_float(noise)),  # far from the training data
        ]
        passed, results = validate_multiscale(self.model, graphs, batches)
        return passed, format_multiscale_report(results), results

    def calibration(self, graphs: Graphs) -> dict[str, Calibration]:
        images = training_crops(self.config.resolution, self.calibration_count())
        s_enc, s_q, s_sc = (session(graphs[n]) for n in (ENCODER, QUANTIZER, SCALES))
        f_hat = []
        for x in images:
            idx = s_q.run(None, {"latent": s_enc.run(None, {"image": x})[0]})[0]
            f_hat.append(s_sc.run(None, {"indices": idx})[0])
        return {ENCODER: ("image", images), DECODER: ("f_hat", f_hat)}

    def _prefix_psnr(self, scales: Path, decoder: Path, idx: np.ndarray) -> list[float]:
        """Held-out PSNR (dB, mean over photos) after each prefix of scales, the decoder run
        on at most DECODE_PIXELS at a time (a full-size decoder's activations for every
        prefix of every photo at once would take many GB)."""
        _, f_hat_each, _ = session(scales).run(None, {"indices": idx})
        B, K = f_hat_each.shape[:2]
        f_hat_all = f_hat_each.reshape(B * K, *f_hat_each.shape[2:])  # photo-major
        dec = session(decoder)
        n = max(1, DECODE_PIXELS // self.config.resolution**2)
        recon = np.concatenate(
            [
                dec.run(None, {"f_hat": np.ascontiguousarray(f_hat_all[i : i + n])})[0]
                for i in range(0, B * K, n)
            ]
        )
        if not np.isfinite(recon).all():
            raise ExportValidationError(f"{decoder.name}: NaN/Inf on the held-out photos")
        imgs = float_to_uint8(recon)
        imgs = imgs.reshape(B, K, *imgs.shape[1:])
        return [
            float(np.mean([psnr(imgs[b, k], self.photos[b]) for b in range(B)])) for k in range(K)
        ]

    def quality(
        self, graphs: Graphs, ref_idx: np.ndarray | None
    ) -> tuple[dict[str, Any], np.ndarray]:
        side = self.photos[0].shape[0]
        x = uint8_to_float(np.stack(self.photos))
        (latent,) = session(graphs[ENCODER]).run(None, {"image": x})
        (idx,) = session(graphs[QUANTIZER]).run(None, {"latent": latent})
        # the last prefix decodes every scale: the reconstruction
        prefix = self._prefix_psnr(graphs[SCALES], graphs[DECODER], idx)
        q = {
            "held_out_psnr": prefix[-1],
            "held_out_psnr_per_prefix": prefix,
            "token_agreement": None if ref_idx is None else float((idx == ref_idx).mean()),
            "held_out_preprocessing": f"centre square, Lanczos to {side}x{side}",
        }
        return q, idx

    def decoder_quality(self, graphs: Graphs, decoder: Path, idx: np.ndarray) -> dict[str, Any]:
        prefix = self._prefix_psnr(graphs[SCALES], decoder, idx)
        return {"held_out_psnr": prefix[-1], "held_out_psnr_per_prefix": prefix}

    def manifest_extra(self) -> dict[str, Any]:
        cfg = self.config
        offsets = list(cfg.scale_offsets)
        return {
            "scales": {
                "patch_nums": list(cfg.patch_nums),
                "offsets": offsets[:-1],
                "num_tokens": offsets[-1],
                "resolution": cfg.resolution,
                "token_order": "scales coarse to fine, each row-major, concatenated into [B, L]",
            }
        }
