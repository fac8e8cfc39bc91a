"""Export of a multi-scale (VAR) tokenizer: graphs, the exact-parity gate, variants.

The bundle accepts one image size, R x R (R = pn[-1] * f), declared in its manifest. The
per-scale loop unrolls at trace time; its resizes are fixed matrices for that size (see
vqedge.models.multiscale), so the graphs are exact there, which the gate proves graph by
graph and scale by scale. Graphs: encoder (image -> latent), quantizer (latent -> indices
[B, L]), scales (indices -> f_hat, f_hat after each scale, VAR's teacher-forcing input),
decoder (f_hat -> image) and the fused tokenizer (image -> indices, reconstruction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from vqedge.export.bundle import (
    _calibration,
    _manifest,
    cpu_graphs,
    export_fp32,
    fp16_variant,
    gate,
    int8_gate,
)
from vqedge.export.graphs import (
    EncoderGraph,
    FhatDecoderGraph,
    MultiScaleQuantizerGraph,
    ScalesGraph,
)
from vqedge.export.validate import (
    ExportValidationError,
    format_multiscale_report,
    session,
    validate_multiscale,
)
from vqedge.export.variants import fuse_multiscale, to_int8
from vqedge.models.data import held_out_paths
from vqedge.models.multiscale import MultiScaleVQVAE
from vqedge.runtime.images import fit_square, float_to_uint8, uint8_to_float
from vqedge.runtime.inputs import read_image
from vqedge.runtime.metrics import psnr

GRAPHS = ("encoder", "quantizer", "scales", "decoder")


def size_policy(model: MultiScaleVQVAE) -> str:
    R = model.config.resolution
    return f"exactly {R}x{R} (H = W = patch_nums[-1] * f); other sizes are refused"


def held_out_images(side: int) -> list[np.ndarray]:
    """The held-out photos, centre square, resized to side x side (uint8 [side, side, 3])."""
    return [fit_square(read_image(p), side) for p in held_out_paths()]


def _validation_batches(photos: list[np.ndarray]) -> list[torch.Tensor]:
    R = photos[0].shape[0]
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (2, R, R, 3), dtype=np.uint8)  # far from the training data
    return [
        torch.from_numpy(uint8_to_float(photos[0])),  # 1 x 3 x R x R
        torch.from_numpy(uint8_to_float(np.stack(photos))),  # 3 x 3 x R x R
        torch.from_numpy(uint8_to_float(noise)),
    ]


def _prefix_psnr(
    scales: Path, decoder: Path, idx: np.ndarray, photos: list[np.ndarray]
) -> list[float]:
    """Held-out PSNR (dB, mean over photos) after each prefix of scales."""
    _, f_hat_each, _ = session(scales).run(None, {"indices": idx})
    B, K = f_hat_each.shape[:2]
    # every prefix of every photo in one decoder run: [B * K, C, s, s]
    f_hat_all = np.ascontiguousarray(f_hat_each.reshape(B * K, *f_hat_each.shape[2:]))
    imgs = float_to_uint8(session(decoder).run(None, {"f_hat": f_hat_all})[0])
    imgs = imgs.reshape(B, K, *imgs.shape[1:])
    return [float(np.mean([psnr(imgs[b, k], photos[b]) for b in range(B)])) for k in range(K)]


def _quality(
    graphs: dict[str, Path], photos: list[np.ndarray], ref_idx: np.ndarray | None
) -> tuple[dict[str, Any], np.ndarray]:
    """Held-out PSNR at the last scale and after each prefix of scales; token agreement."""
    side = photos[0].shape[0]
    x = uint8_to_float(np.stack(photos))
    idx, recon = session(graphs["tokenizer"]).run(None, {"image": x})
    if not np.isfinite(recon).all():
        raise ExportValidationError(f"{graphs['tokenizer'].parent.name}: NaN/Inf on held-out")
    prefix = _prefix_psnr(graphs["scales"], graphs["decoder"], idx, photos)
    out = float_to_uint8(recon)
    q = {
        "held_out_psnr": float(np.mean([psnr(a, b) for a, b in zip(out, photos)])),
        "held_out_psnr_per_prefix": prefix,
        "token_agreement": None if ref_idx is None else float((idx == ref_idx).mean()),
        "held_out_preprocessing": f"centre square, Lanczos to {side}x{side}",
    }
    return q, idx


def build_multiscale(
    model: MultiScaleVQVAE, ckpt: Path, tmp: Path, precisions, log
) -> dict[str, Any]:
    cfg, f, R = model.config, model.downsample_factor, model.config.resolution
    s, C = cfg.patch_nums[-1], cfg.code_dim
    examples = {  # batch 2 at trace time; validated at batch 1 and 3
        "encoder": torch.rand(2, 3, R, R) * 2 - 1,
        "quantizer": torch.randn(2, C, s, s),
        "scales": torch.randint(0, cfg.codebook_size, (2, cfg.scale_offsets[-1])),
        "decoder": torch.randn(2, C, s, s),
    }
    wrappers = {
        "encoder": EncoderGraph,
        "quantizer": MultiScaleQuantizerGraph,
        "scales": ScalesGraph,
        "decoder": FhatDecoderGraph,
    }
    paths, parts = export_fp32(
        model,
        tmp,
        wrappers,
        examples,
        lambda g: fuse_multiscale(*(g[n] for n in GRAPHS)),
        log,
        multiscale=True,
    )

    log("validating against PyTorch, scale by scale")
    photos = held_out_images(R)  # read once: validation and every variant's quality
    passed, results = validate_multiscale(model, paths, _validation_batches(photos))
    gate(passed, format_multiscale_report(results), log)

    variants: dict[str, dict[str, Any]] = {"fp32": {"graphs": dict(paths)}}
    exact = {"quantizer": paths["quantizer"], "scales": paths["scales"]}  # fp32 everywhere
    if "fp16" in precisions:
        variants["fp16"] = fp16_variant(tmp, parts, exact, log)
    calib = _calibration(f, side=R)
    s_enc, s_q, s_sc = (session(paths[n]) for n in ("encoder", "quantizer", "scales"))
    calib_fhat = []
    for x in calib:
        idx = s_q.run(None, {"latent": s_enc.run(None, {"image": x})[0]})[0]
        calib_fhat.append(s_sc.run(None, {"indices": idx})[0])
    if "int8" in precisions:
        log("quantizing int8 (static QDQ, calibrated on training photos)")
        (tmp / "int8").mkdir()
        g = dict(exact)
        for name, data, inp in (("encoder", calib, "image"), ("decoder", calib_fhat, "f_hat")):
            g[name] = tmp / "int8" / f"{name}.onnx"
            to_int8(paths[name], g[name], inp, data)
        variants["int8"] = {"graphs": g}
    for prec, v in variants.items():
        if prec != "fp32":
            g = v["graphs"]
            g["tokenizer"] = tmp / prec / "tokenizer.onnx"
            onnx.save(fuse_multiscale(*(onnx.load(str(g[n])) for n in GRAPHS)), str(g["tokenizer"]))
    cpu_graphs(tmp, variants, ("f_hat", calib_fhat), log)

    log("measuring held-out quality of each variant")
    fp32_q, fp32_idx = _quality(paths, photos, None)
    variants["fp32"]["quality"] = fp32_q
    for prec, v in variants.items():
        idx = fp32_idx
        if prec != "fp32":
            v["quality"], idx = _quality(v["graphs"], photos, fp32_idx)
        if "cpu_graphs" in v:  # the same tokens; the last prefix decodes every scale
            dec = v["cpu_graphs"]["decoder"]
            prefix = _prefix_psnr(v["graphs"]["scales"], dec, idx, photos)
            v["quality"]["cpu"] = {"held_out_psnr": prefix[-1], "held_out_psnr_per_prefix": prefix}
    for prec, v in variants.items():
        q = v["quality"]
        log(
            f"  {prec}: held-out PSNR {q['held_out_psnr']:.2f} dB, agreement {q['token_agreement']}"
            + (f"; CPU-provider graphs {q['cpu']['held_out_psnr']:.2f} dB" if "cpu" in q else "")
        )
    int8_gate(variants, fp32_q["held_out_psnr"])

    offsets = list(cfg.scale_offsets)
    scales = {
        "patch_nums": list(cfg.patch_nums),
        "offsets": offsets[:-1],
        "num_tokens": offsets[-1],
        "resolution": R,
        "token_order": "scales coarse to fine, each row-major, concatenated into [B, L]",
    }
    return _manifest(
        model,
        ckpt,
        tmp,
        variants,
        results,
        kind="multi-scale",
        size_policy=size_policy(model),
        extra={"scales": scales},
    )
