"""Recipe of a single-scale tokenizer: any image size (padded to a multiple of f), one token
map [B, H/f, W/f]. Graphs: encoder (image -> latent), quantizer (latent -> indices) and
decoder (indices -> image, codebook lookup inside)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqedge.export.graphs import DecoderGraph, EncoderGraph, QuantizerGraph
from vqedge.export.recipe import (
    CALIBRATION_SIDE,
    Calibration,
    Graphs,
    Recipe,
    session,
    training_crops,
)
from vqedge.export.validate import ExportValidationError, format_report, validate_fp32
from vqedge.models.data import held_out_paths
from vqedge.runtime.images import float_to_uint8, pad_to_multiple, uint8_to_float
from vqedge.runtime.inputs import read_image
from vqedge.runtime.manifest import DECODER, ENCODER, QUANTIZER, SINGLE_SCALE, SIZE_POLICY
from vqedge.runtime.metrics import psnr


class SingleScaleRecipe(Recipe):
    kind = SINGLE_SCALE
    io = {
        ENCODER: (["image"], ["latent"]),
        QUANTIZER: (["latent"], ["indices"]),
        DECODER: (["indices"], ["image"]),
    }
    dim_names = {
        "image": ["batch", None, "height", "width"],
        "latent": ["batch", None, "latent_height", "latent_width"],
        "indices": ["batch", "latent_height", "latent_width"],
    }
    wrappers = {ENCODER: EncoderGraph, QUANTIZER: QuantizerGraph, DECODER: DecoderGraph}

    def examples(self) -> dict[str, torch.Tensor]:
        cfg, f = self.config, self.config.downsample_factor
        return {
            ENCODER: torch.rand(2, 3, 32 * f, 40 * f) * 2 - 1,
            QUANTIZER: torch.randn(2, cfg.code_dim, 32, 40),
            DECODER: torch.randint(0, cfg.codebook_size, (2, 32, 40)),
        }

    def size_policy(self) -> str:
        return SIZE_POLICY

    def flop_inputs(self) -> dict[str, list[int]]:
        H, W = self.flop_size()
        f, C = self.config.downsample_factor, self.config.code_dim
        h, w = H // f, W // f
        return {ENCODER: [1, 3, H, W], QUANTIZER: [1, C, h, w], DECODER: [1, h, w]}

    def validate(self, graphs: Graphs) -> tuple[bool, str, list[dict[str, Any]]]:
        passed, results = validate_fp32(self.model, graphs, self._validation_images())
        return passed, format_report(results), results

    def _validation_images(self) -> list[torch.Tensor]:
        """Real held-out photos at full size and at sizes never seen at trace time."""
        photos = [read_image(p) for p in held_out_paths()]
        china, flower, chelsea = photos
        cases = [uint8_to_float(p) for p in photos]
        cases += [
            uint8_to_float(chelsea[100:164, 200:264]),  # 1x3x64x64
            uint8_to_float(np.stack([p[:72, :136] for p in photos])),  # 3x3x72x136
            uint8_to_float(china[:384, :512].transpose(1, 0, 2).copy()),  # 1x3x512x384
        ]
        f = self.config.downsample_factor
        return [torch.from_numpy(pad_to_multiple(x, f)) for x in cases]

    # side of the square training crops that calibrate int8
    calibration_side = CALIBRATION_SIDE

    def calibration(self, graphs: Graphs) -> dict[str, Calibration]:
        images = training_crops(self.calibration_side, self.calibration_count())
        s_enc, s_q = session(graphs[ENCODER]), session(graphs[QUANTIZER])
        idx = [s_q.run(None, {"latent": s_enc.run(None, {"image": x})[0]})[0] for x in images]
        return {ENCODER: ("image", images), DECODER: ("indices", idx)}

    def quality(
        self, graphs: Graphs, ref_idx: list[np.ndarray] | None
    ) -> tuple[dict[str, Any], list[np.ndarray]]:
        f = self.config.downsample_factor
        s = {name: session(graphs[name]) for name in self.io}
        psnrs, all_idx = [], []
        for path in held_out_paths():
            img = read_image(path)
            x = pad_to_multiple(uint8_to_float(img), f)
            (latent,) = s[ENCODER].run(None, {"image": x})
            (idx,) = s[QUANTIZER].run(None, {"latent": latent})
            (recon,) = s[DECODER].run(None, {"indices": idx})
            if not np.isfinite(recon).all():
                raise ExportValidationError(f"{graphs[DECODER].name}: NaN/Inf on {path.name}")
            out = float_to_uint8(recon[:, :, : img.shape[0], : img.shape[1]])[0]
            psnrs.append(psnr(out, img))
            all_idx.append(idx)
        agree = None
        if ref_idx is not None:
            same = [(a == b).ravel() for a, b in zip(all_idx, ref_idx)]
            agree = float(np.mean(np.concatenate(same)))
        return {"held_out_psnr": float(np.mean(psnrs)), "token_agreement": agree}, all_idx

    def decoder_quality(
        self, graphs: Graphs, decoder: Path, idx: list[np.ndarray]
    ) -> dict[str, Any]:
        s = session(decoder)
        psnrs = []
        for path, i in zip(held_out_paths(), idx):
            img = read_image(path)
            recon = s.run(None, {"indices": i})[0]
            out = float_to_uint8(recon[:, :, : img.shape[0], : img.shape[1]])[0]
            psnrs.append(psnr(out, img))
        return {"held_out_psnr": float(np.mean(psnrs))}
