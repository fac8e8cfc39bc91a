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
from torch import nn

from vqedge.models.multiscale import MultiScaleQuantizer

LATENT_ATOL = 1e-4
IMAGE_ATOL = 1e-3
# the gate's tolerances, as every manifest records them
TOLERANCES = {"latent_atol": LATENT_ATOL, "image_atol": IMAGE_ATOL, "indices": "identical"}
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
    failures: list[str] = field(default_factory=list)


def session(path: Path) -> ort.InferenceSession:
    """A CPU-provider session: every export check runs there."""
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def count_ties(
    quantizer: nn.Module,
    latent: torch.Tensor,
    idx_a: np.ndarray,
    idx_b: np.ndarray,
) -> tuple[int, int]:
    """(mismatches, ties) between two index maps [B, h, w] of the same latent [B, C, h, w];
    ``quantizer`` is any codebook with ``project`` and ``get_codebook``."""
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
def validate_fp32(model: nn.Module, graphs: dict[str, Path], images: list[torch.Tensor]):
    """Compare every fp32 graph with PyTorch on each image batch [B, 3, H, W] (H, W % f == 0):
    ``model.encode``, ``model.quantize_latent`` and ``model.decode_indices``, the methods every
    single-scale model offers.

    Returns
    -------
    (passed, results) : (bool, list of dict)
    """
    model.eval()
    s = {name: session(path) for name, path in graphs.items()}
    results = []
    for x in images:
        latent = model.encode(x)
        t_idx = model.quantize_latent(latent)
        t_img = model.decode_indices(t_idx)

        o_latent = s["encoder"].run(None, {"image": x.numpy()})[0]
        o_idx = s["quantizer"].run(None, {"latent": latent.numpy()})[0]
        o_img = s["decoder"].run(None, {"indices": t_idx.numpy()})[0]
        mism, ties = count_ties(model.quantize, latent, o_idx, t_idx.numpy())
        r = CaseResult(
            shape=list(x.shape),
            latent_max_abs=float(np.abs(o_latent - latent.numpy()).max()),
            index_mismatches=mism,
            index_ties=ties,
            image_max_abs=float(np.abs(o_img - t_img.numpy()).max()),
        )
        if o_idx.dtype != np.int64 or o_idx.shape != tuple(t_idx.shape):
            r.failures.append(f"quantizer gave {o_idx.dtype} {o_idx.shape}, expected int64")
        if r.latent_max_abs > LATENT_ATOL:
            r.failures.append(f"latent differs by {r.latent_max_abs:.2e} > {LATENT_ATOL}")
        if mism > ties:
            r.failures.append(f"indices differ at {mism - ties} positions that are not ties")
        if r.image_max_abs > IMAGE_ATOL:
            r.failures.append(f"image differs by {r.image_max_abs:.2e} > {IMAGE_ATOL}")
        results.append(asdict(r))
    return all(not r["failures"] for r in results), results


def format_report(results: list[dict]) -> str:
    lines = ["export validation against PyTorch:"]
    for r in results:
        status = "FAIL" if r["failures"] else "ok"
        lines.append(
            f"  {status:4} {'x'.join(map(str, r['shape'])):>14}  latent {r['latent_max_abs']:.1e}"
            f"  index mismatches {r['index_mismatches']} (ties {r['index_ties']})"
            f"  image {r['image_max_abs']:.1e}"
        )
        lines += [f"       - {f}" for f in r["failures"]]
    return "\n".join(lines)


def _first_scale_ties(
    model: nn.Module, latent: torch.Tensor, a_Bl: list[np.ndarray], b_Bl: list[np.ndarray]
) -> tuple[int, int, int]:
    """(first differing scale or -1, mismatches there, ties there) between two idx_Bl of the
    same latent; ``b_Bl`` is PyTorch's, whose residual defines that scale's inputs."""
    q: MultiScaleQuantizer = model.quantize
    B, C = latent.shape[:2]
    f_rest = latent
    for si, (a, b) in enumerate(zip(a_Bl, b_Bl)):
        diff = a != b
        if diff.any():
            z = q.down(f_rest, si).permute(0, 2, 3, 1).reshape(B, -1, C).double().numpy()[diff]
            e = q.get_codebook().double().numpy()
            d_a = ((z - e[a[diff]]) ** 2).sum(1)
            d_b = ((z - e[b[diff]]) ** 2).sum(1)
            scale = (z**2).sum(1) + (e[b[diff]] ** 2).sum(1) + 1.0
            return si, int(diff.sum()), int((np.abs(d_a - d_b) <= TIE_RTOL * scale).sum())
        f_rest = f_rest - q.up_phi(q.embed(torch.from_numpy(b), si), si)
    return -1, 0, 0


@torch.no_grad()
def validate_multiscale(
    model: nn.Module, graphs: dict[str, Path], images: list[torch.Tensor]
) -> tuple[bool, list[dict]]:
    """Every fp32 multi-scale graph against PyTorch, scale by scale, on batches [B, 3, R, R].

    Indices must be identical at every scale. A mismatch is excused only when, at the first
    scale where the two differ, every difference is a float-rounding tie (later scales then
    quantize a different residual and are not compared).
    """
    model.eval()
    s = {name: session(path) for name, path in graphs.items()}
    split = model.runtime_config.split_scales
    results = []
    for x in images:
        latent = model.encode(x)
        t_Bl = [i.numpy() for i in model.quantize.f_to_idxBl(latent)]
        t_idx = np.concatenate(t_Bl, axis=1)
        t_each = model.quantize.idxBl_to_fhat_each([torch.from_numpy(i) for i in t_Bl])
        t_var = model.quantize.idxBl_to_var_input([torch.from_numpy(i) for i in t_Bl])
        t_img = model.decode(t_each[-1])

        o_latent = s["encoder"].run(None, {"image": x.numpy()})[0]
        o_idx = s["quantizer"].run(None, {"latent": latent.numpy()})[0]
        o_fhat, o_each, o_var = s["scales"].run(None, {"indices": t_idx})
        o_img = s["decoder"].run(None, {"f_hat": t_each[-1].numpy()})[0]
        o_Bl = split(o_idx)
        first, mism, ties = _first_scale_ties(model, latent, o_Bl, t_Bl)
        t_each_np = torch.stack(t_each, dim=1).numpy()
        r = {
            "shape": list(x.shape),
            "latent_max_abs": float(np.abs(o_latent - latent.numpy()).max()),
            "index_mismatches_per_scale": [int((a != b).sum()) for a, b in zip(o_Bl, t_Bl)],
            "first_mismatch_scale": first,
            "first_scale_ties": ties,
            "f_hat_max_abs": float(np.abs(o_each - t_each_np).max()),
            "var_input_max_abs": float(np.abs(o_var - t_var.numpy()).max()),
            "image_max_abs": float(np.abs(o_img - t_img.numpy()).max()),
            "failures": [],
        }
        fails = r["failures"]
        if o_idx.dtype != np.int64 or o_idx.shape != t_idx.shape:
            fails.append(
                f"quantizer gave {o_idx.dtype} {o_idx.shape}, expected int64 {t_idx.shape}"
            )
        if o_var.shape != tuple(t_var.shape):
            fails.append(f"var_input is {o_var.shape}, expected {tuple(t_var.shape)}")
        if r["latent_max_abs"] > LATENT_ATOL:
            fails.append(f"latent differs by {r['latent_max_abs']:.2e} > {LATENT_ATOL}")
        if mism > ties:
            fails.append(f"indices differ from scale {first} on, at positions that are not ties")
        if (
            max(
                r["f_hat_max_abs"],
                r["var_input_max_abs"],
                float(np.abs(o_fhat - t_each_np[:, -1]).max()),
            )
            > LATENT_ATOL
        ):
            fails.append(
                f"f_hat / var_input differ by {max(r['f_hat_max_abs'], r['var_input_max_abs']):.2e}"
                f" > {LATENT_ATOL}"
            )
        if r["image_max_abs"] > IMAGE_ATOL:
            fails.append(f"image differs by {r['image_max_abs']:.2e} > {IMAGE_ATOL}")
        results.append(r)
    return all(not r["failures"] for r in results), results


def format_multiscale_report(results: list[dict]) -> str:
    lines = ["multi-scale export validation against PyTorch:"]
    for r in results:
        status = "FAIL" if r["failures"] else "ok"
        per_scale = ",".join(map(str, r["index_mismatches_per_scale"]))
        lines.append(
            f"  {status:4} {'x'.join(map(str, r['shape'])):>14}  latent {r['latent_max_abs']:.1e}"
            f"  index mismatches per scale [{per_scale}] (ties {r['first_scale_ties']})"
            f"  f_hat {r['f_hat_max_abs']:.1e}  var_input {r['var_input_max_abs']:.1e}"
            f"  image {r['image_max_abs']:.1e}"
        )
        lines += [f"       - {f}" for f in r["failures"]]
    return "\n".join(lines)
