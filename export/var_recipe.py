"""Recipe of VAR's VQVAE (vqedge.models.var): a multi-scale bundle through the one pipeline.

VAR's model offers the export surface every model does (encoder, quant_conv, its multi-scale
quantizer, post_quant_conv, decoder, and ``runtime_config``: f, K, C, patch_nums, resolution),
so it is exported with the multi-scale recipe's graphs, gate, calibration and quality measure.

Imported weights are the authors'; their int8 variant is reported, not refused: each variant
records its token agreement with fp32 per scale and whether it is fit for training a
next-scale generator (tokens agreeing on at least ``fidelity.TOKENS_MIN_AGREEMENT`` of positions).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vqedge.export.multi_scale_recipe import MultiScaleRecipe
from vqedge.export.recipe import CALIBRATION_IMAGES, Graphs
from vqedge.models.var import FAMILY
from vqedge.runtime.fidelity import TOKENS_MIN_AGREEMENT

__all__ = ["VARRecipe"]

# int8 calibration images: a full-size model's calibration keeps every activation of every
# image in memory, so the count is bounded by pixels rather than fixed
CALIBRATION_PIXELS = 4 * 256 * 256


class VARRecipe(MultiScaleRecipe):
    """VAR's VQVAE: the multi-scale recipe, with per-scale token agreement, generator
    fitness and an int8 variant that is reported, not refused."""

    # an imported family: the pipeline reports the int8 variant's losses, never refuses it
    imported = True

    def calibration_count(self) -> int:
        R = self.config.resolution
        return max(1, min(CALIBRATION_IMAGES, CALIBRATION_PIXELS // (R * R)))

    def quality(
        self, graphs: Graphs, ref_idx: np.ndarray | None
    ) -> tuple[dict[str, Any], np.ndarray]:
        q, idx = super().quality(graphs, ref_idx)
        if ref_idx is None:  # fp32: the reference itself
            per_scale = [1.0] * len(self.config.patch_nums)
        else:
            split = self.config.split_scales
            per_scale = [float((a == b).mean()) for a, b in zip(split(idx), split(ref_idx))]
        q["token_agreement_per_scale"] = per_scale
        return q, idx

    def manifest_extra(self) -> dict[str, Any]:
        c = self.model.config
        arch = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(c).items()}
        return super().manifest_extra() | {
            "architecture": {"family": FAMILY, **arch},
            "generator_training": {
                "min_token_agreement": TOKENS_MIN_AGREEMENT,
                "rule": "a precision is fit for tokenizing a generator's training set when its "
                "tokens agree with fp32's on at least min_token_agreement of the positions",
            },
        }
