"""The export gate: onnxruntime against PyTorch on real images, graph by graph.

Tolerances: latents within 1e-4 (max abs), indices identical, images within 1e-3 (max abs).
An index that differs only because two code distances tie within float rounding is counted
as a tie, not a failure.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from vqedge.models.quantizer import VectorQuantizer
from vqedge.models.vqvae import VQTokenizerBase

LATENT_ATOL = 1e-4
IMAGE_ATOL = 1e-3
# two distances closer than this (relative to their magnitude) are a float-rounding tie
TIE_RTOL = 1e-5


class ExportValidationError(RuntimeError):
    """The exported graphs do not match PyTorch; the message is the readable report."""


@dataclass
class CaseResult:
    shape: list[int]
    latent_max_abs: float
    index_mismatches: int
    index_ties: int
    image_max_abs: float
    fused_index_mismatches: int
    fused_index_ties: int
    fused_image_max_abs: float
    failures: list[str] = field(default_factory=list)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def count_ties(
    quantizer: VectorQuantizer, latent: torch.Tensor, idx_a: np.ndarray, idx_b: np.ndarray
) -> tuple[int, int]:
    """(mismatches, ties) between two index maps [B, h, w] of the same latent [B, C, h, w]."""
    diff = idx_a != idx_b
    if not diff.any():
        return 0, 0
    z = quantizer.project(latent).permute(0, 2, 3, 1).double().numpy()[diff]  # [M, C]
    e = quantizer.get_codebook().double().numpy()
    d_a = ((z - e[idx_a[diff]]) ** 2).sum(1)
    d_b = ((z - e[idx_b[diff]]) ** 2).sum(1)
    scale = (z**2).sum(1) + (e[idx_a[diff]] ** 2).sum(1) + 1.0
    ties = int((np.abs(d_a - d_b) <= TIE_RTOL * scale).sum())
    return int(diff.sum()), ties


@torch.no_grad()
def validate_fp32(model: VQTokenizerBase, graphs: dict[str, Path], images: list[torch.Tensor]):
    """Compare every fp32 graph with PyTorch on each image batch [B, 3, H, W] (H, W % f == 0).

    Returns
    -------
    (passed, results) : (bool, list of dict)
    """
    model.eval()
    s = {name: session(path) for name, path in graphs.items()}
    results = []
    for x in images:
        latent = model.encode(x)
        _, _, t_idx = model.quantize(latent)
        t_img = model.decode_indices(t_idx)

        o_latent = s["encoder"].run(None, {"image": x.numpy()})[0]
        o_idx = s["quantizer"].run(None, {"latent": latent.numpy()})[0]
        o_img = s["decoder"].run(None, {"indices": t_idx.numpy()})[0]
        f_idx, f_img = s["tokenizer"].run(None, {"image": x.numpy()})
        mism, ties = count_ties(model.quantize, latent, o_idx, t_idx.numpy())
        f_mism, f_ties = count_ties(model.quantize, latent, f_idx, t_idx.numpy())
        # the fused reconstruction is compared with PyTorch decoding the same tokens
        f_ref = model.decode_indices(torch.from_numpy(f_idx)).numpy()
        r = CaseResult(
            shape=list(x.shape),
            latent_max_abs=float(np.abs(o_latent - latent.numpy()).max()),
            index_mismatches=mism,
            index_ties=ties,
            image_max_abs=float(np.abs(o_img - t_img.numpy()).max()),
            fused_index_mismatches=f_mism,
            fused_index_ties=f_ties,
            fused_image_max_abs=float(np.abs(f_img - f_ref).max()),
        )
        if o_idx.dtype != np.int64 or o_idx.shape != tuple(t_idx.shape):
            r.failures.append(f"quantizer gave {o_idx.dtype} {o_idx.shape}, expected int64")
        if r.latent_max_abs > LATENT_ATOL:
            r.failures.append(f"latent differs by {r.latent_max_abs:.2e} > {LATENT_ATOL}")
        if mism > ties or f_mism > f_ties:
            r.failures.append(
                f"indices differ at {mism - ties} (quantizer) and {f_mism - f_ties} (fused) "
                "positions that are not ties"
            )
        if max(r.image_max_abs, r.fused_image_max_abs) > IMAGE_ATOL:
            r.failures.append(
                f"image differs by {max(r.image_max_abs, r.fused_image_max_abs):.2e} > {IMAGE_ATOL}"
            )
        results.append(asdict(r))
    return all(not r["failures"] for r in results), results


def format_report(results: list[dict]) -> str:
    lines = ["export validation against PyTorch:"]
    for r in results:
        status = "FAIL" if r["failures"] else "ok"
        lines.append(
            f"  {status:4} {'x'.join(map(str, r['shape'])):>14}  latent {r['latent_max_abs']:.1e}"
            f"  index mismatches {r['index_mismatches']} (ties {r['index_ties']})"
            f"  image {r['image_max_abs']:.1e}  fused image {r['fused_image_max_abs']:.1e}"
        )
        lines += [f"       - {f}" for f in r["failures"]]
    return "\n".join(lines)
