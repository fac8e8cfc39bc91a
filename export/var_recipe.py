"""Recipe of VAR's VQVAE (vqedge.models.var): a multi-scale bundle through the one pipeline.

VAR's model is exported with the multi-scale recipe's graphs, gate, calibration and quality
measure; what differs is only where VAR's layers sit. Its encoder ends in ``quant_conv`` and
its decoder starts with ``post_quant_conv``, so the recipe exports an export view of the model
(``VARExportView``) whose ``encoder`` and ``decoder`` include them, whose ``quantize`` is the
model's own multi-scale quantizer, and whose ``config`` is the VQVAEConfig the runtime reads
(f, K, C, patch_nums, resolution). The view shares the model's modules: nothing is copied.

Imported weights are the authors'; their int8 variant is reported, not refused: each variant
records its token agreement with fp32 per scale and whether it is fit for training a
next-scale generator (tokens agreeing on at least ``GENERATOR_MIN_AGREEMENT`` of positions).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vqedge.export.multi_scale import MultiScaleRecipe
from vqedge.export.recipe import CALIBRATION_IMAGES, GENERATOR_MIN_AGREEMENT, Graphs, session
from vqedge.export.validate import ExportValidationError
from vqedge.models.var import FAMILY, VARVQVAE
from vqedge.runtime.config import VQVAEConfig
from vqedge.runtime.images import float_to_uint8
from vqedge.runtime.metrics import psnr

__all__ = ["GENERATOR_MIN_AGREEMENT", "VARExportView", "VARRecipe", "var_config"]

# int8 calibration images: a full-size model's calibration keeps every activation of every
# image in memory, so the count is bounded by pixels rather than fixed
CALIBRATION_PIXELS = 4 * 256 * 256


def var_config(model: VARVQVAE) -> VQVAEConfig:
    """The VQVAEConfig a bundle of ``model`` carries: what the runtime reads (f, K, C,
    patch_nums, resolution), in VAR's numbers. Its training fields do not apply (no EMA)."""
    return model.config.quantizer_config


class VARExportView(nn.Module):
    """VAR's VQVAE in the multi-scale recipe's terms, sharing the model's modules.

    ``encoder``: image -> f (VAR's encoder, then quant_conv); ``quantize``: VAR's quantizer;
    ``decoder``: f_hat -> image before the clamp (post_quant_conv, then VAR's decoder).
    """

    def __init__(self, model: VARVQVAE) -> None:
        super().__init__()
        self.var = model
        self.config = var_config(model)
        if self.config.resolution != model.resolution:
            raise ValueError(
                f"{FAMILY}: resolution {model.resolution} does not match patch_nums "
                f"{list(model.patch_nums)} x f={self.config.downsample_factor}"
            )
        self.encoder = nn.Sequential(model.encoder, model.quant_conv)
        self.quantize = model.quantize
        self.decoder = nn.Sequential(model.post_quant_conv, model.decoder)

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, R, R] -> f [B, Cvae, s, s] (VAR's encode)."""
        return self.var.encode(img)

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat [B, Cvae, s, s] -> images [B, 3, R, R] in [-1, 1] (VAR's fhat_to_img)."""
        return self.var.decode(f_hat)


class VARRecipe(MultiScaleRecipe):
    """VAR's VQVAE: the multi-scale recipe over ``VARExportView``, with per-scale token
    agreement, generator fitness and an int8 variant that is reported, not refused."""

    # an imported family: the pipeline reports the int8 variant's losses, never refuses it
    imported = True

    def __init__(self, model: VARVQVAE | VARExportView) -> None:
        view = model if isinstance(model, VARExportView) else VARExportView(model)
        super().__init__(view)

    def calibration_count(self) -> int:
        R = self.model.config.resolution
        return max(1, min(CALIBRATION_IMAGES, CALIBRATION_PIXELS // (R * R)))

    def _prefix_psnr(self, scales: Path, decoder: Path, idx: np.ndarray) -> list[float]:
        """Held-out PSNR (dB, mean over photos) after each prefix of scales, decoding one
        prefix of every photo at a time: a full-size decoder's activations at every prefix
        of every photo at once would take many GB."""
        _, f_hat_each, _ = session(scales).run(None, {"indices": idx})
        dec = session(decoder)
        out = []
        for k in range(f_hat_each.shape[1]):
            recon = dec.run(None, {"f_hat": np.ascontiguousarray(f_hat_each[:, k])})[0]
            if not np.isfinite(recon).all():
                raise ExportValidationError(f"{decoder.name}: NaN/Inf on the held-out photos")
            imgs = float_to_uint8(recon)
            out.append(float(np.mean([psnr(im, ph) for im, ph in zip(imgs, self.photos)])))
        return out

    def quality(
        self, graphs: Graphs, ref_idx: np.ndarray | None
    ) -> tuple[dict[str, Any], np.ndarray]:
        q, idx = super().quality(graphs, ref_idx)
        if ref_idx is None:  # fp32: the reference itself
            per_scale = [1.0] * len(self.model.config.patch_nums)
        else:
            split = self.model.config.split_scales
            per_scale = [float((a == b).mean()) for a, b in zip(split(idx), split(ref_idx))]
        q["token_agreement_per_scale"] = per_scale
        return q, idx

    def manifest_extra(self) -> dict[str, Any]:
        c = self.model.var.config
        arch = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(c).items()}
        return super().manifest_extra() | {
            "architecture": {"family": FAMILY, **arch},
            "generator_training": {
                "min_token_agreement": GENERATOR_MIN_AGREEMENT,
                "rule": "a precision is fit for tokenizing a generator's training set when its "
                "tokens agree with fp32's on at least min_token_agreement of the positions",
            },
        }
