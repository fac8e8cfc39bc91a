"""Recipe of the imported single-scale families: taming's VQGAN, LlamaGen's VQ models and
diffusers' VQModel (``vqedge.models.single_scale.SingleScaleVQ``).

The same bundle kind and graphs as vqedge's own single-scale models (encoder, quantizer,
decoder): the models share one surface, the families' quant_conv / post_quant_conv inside the
encoder and decoder graphs and each family's own lookup in the quantizer graph. What differs
from vqedge's own:

- the gate, calibration and quality run at the model's size (256 x 256 centre squares of
  the photos), the size these models are trained and used at;
- their attention sees the whole latent, so a tile's tokens depend on the whole image: the
  manifest says ``"tiling": false`` and the runtime refuses tiled calls;
- the int8 variant is reported, not refused (``Recipe.imported``).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqedge.export.recipe import Graphs, session
from vqedge.export.single_scale_recipe import SingleScaleRecipe
from vqedge.export.validate import ExportValidationError, format_report, validate_fp32
from vqedge.models.data import held_out_paths
from vqedge.runtime.images import fit_square, float_to_uint8, uint8_to_float
from vqedge.runtime.inputs import read_image
from vqedge.runtime.manifest import DECODER, ENCODER, QUANTIZER
from vqedge.runtime.metrics import psnr

# the side these families are trained and used at: validation, calibration and quality
MODEL_SIDE = 256
# int8 calibration images (training photos, MODEL_SIDE squares)
FAMILY_CALIBRATION_IMAGES = 8
TILING_REFUSED = (
    "its attention sees the whole latent, so tiles would change the tokens: tiled calls are refused"
)


class FamilySingleScaleRecipe(SingleScaleRecipe):
    """taming / LlamaGen / diffusers: one token map per image, at any multiple of f."""

    imported = True

    def input_extra(self) -> dict[str, Any]:
        extra = {"tiling": False, "tiling_note": TILING_REFUSED}
        stride = self.model.backbone.attention_stride
        # the runtime's default max_side keeps this attention's score matrix bounded
        return extra | ({"attention_stride": stride} if stride else {})

    def examples(self) -> dict[str, torch.Tensor]:
        cb, f = self.model.quantize, self.config.downsample_factor
        # batch 2 at trace time (validated at 1 and 3), a non-square map
        return {
            ENCODER: torch.rand(2, 3, 6 * f, 10 * f) * 2 - 1,
            QUANTIZER: torch.randn(2, cb.embedding_dim, 6, 10),
            DECODER: torch.randint(0, cb.num_embeddings, (2, 6, 10)),
        }

    @cached_property
    def photos(self) -> list[np.ndarray]:
        """The held-out photos, centre square, resized to MODEL_SIDE (uint8)."""
        return [fit_square(read_image(p), MODEL_SIDE) for p in held_out_paths()]

    def validate(self, graphs: Graphs) -> tuple[bool, str, list[dict[str, Any]]]:
        f = self.config.downsample_factor
        h, w = MODEL_SIDE // 2 // f * f, MODEL_SIDE * 3 // 4 // f * f
        batches = [
            uint8_to_float(self.photos[0]),  # 1 x 3 x 256 x 256
            uint8_to_float(np.stack(self.photos)),  # 3 x 3 x 256 x 256
            uint8_to_float(np.ascontiguousarray(self.photos[1][:h, :w])),  # not square
        ]
        images = [torch.from_numpy(x) for x in batches]
        passed, results = validate_fp32(self.model, graphs, images)
        return passed, format_report(results), results

    calibration_side = MODEL_SIDE

    def calibration_count(self) -> int:
        return FAMILY_CALIBRATION_IMAGES

    def quality(
        self, graphs: Graphs, ref_idx: list[np.ndarray] | None
    ) -> tuple[dict[str, Any], list[np.ndarray]]:
        s_enc, s_q = session(graphs[ENCODER]), session(graphs[QUANTIZER])
        all_idx = []
        for img in self.photos:
            (latent,) = s_enc.run(None, {"image": uint8_to_float(img)})
            all_idx.append(s_q.run(None, {"latent": latent})[0])
        q = self.decoder_quality(graphs, graphs[DECODER], all_idx)
        agree = None
        if ref_idx is not None:
            same = [(a == b).ravel() for a, b in zip(all_idx, ref_idx)]
            agree = float(np.mean(np.concatenate(same)))
        q["token_agreement"] = agree
        q["held_out_preprocessing"] = f"centre square, Lanczos to {MODEL_SIDE}x{MODEL_SIDE}"
        return q, all_idx

    def decoder_quality(
        self, graphs: Graphs, decoder: Path, idx: list[np.ndarray]
    ) -> dict[str, Any]:
        s = session(decoder)
        psnrs = []
        for img, i in zip(self.photos, idx):
            (recon,) = s.run(None, {"indices": i})
            if not np.isfinite(recon).all():
                raise ExportValidationError(f"{decoder.name}: NaN/Inf on the held-out photos")
            psnrs.append(psnr(float_to_uint8(recon)[0], img))
        return {"held_out_psnr": float(np.mean(psnrs))}
