"""The exported graphs: thin inference-only wrappers around a trained model, and the export.

Straight-through, losses and usage statistics are training-only and stay out of the graphs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from vqedge.models.vqvae import VQTokenizerBase

EXPORTER = "dynamo"  # torch.onnx.export(dynamo=True): torch.export-based, maintained
OPSET = 18
IO = {
    "encoder": (["image"], ["latent"]),
    "quantizer": (["latent"], ["indices"]),
    "decoder": (["indices"], ["image"]),
}


class EncoderGraph(nn.Module):
    """image [B, 3, H, W] (H, W multiples of f) -> latent [B, C, H/f, W/f]."""

    def __init__(self, model: VQTokenizerBase) -> None:
        super().__init__()
        self.encoder = model.encoder

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)


class QuantizerGraph(nn.Module):
    """latent [B, C, h, w] -> indices [B, h, w] int64: argmin_k |z|^2 + |e_k|^2 - 2 z.e_k."""

    def __init__(self, model: VQTokenizerBase) -> None:
        super().__init__()
        self.register_buffer("codebook_KC", model.quantize.get_codebook().detach().clone())
        self.l2_normalize = model.quantize.l2_normalize

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if self.l2_normalize:  # the same projection as VectorQuantizer.project
            latent = F.normalize(latent, dim=1)
        z = latent.permute(0, 2, 3, 1)  # [B, h, w, C]
        e = self.codebook_KC
        # the same formula, term order and argmin as VectorQuantizer.nearest
        d = z.pow(2).sum(-1, keepdim=True) + e.pow(2).sum(1) - 2.0 * z @ e.t()  # [B, h, w, K]
        return d.argmin(-1)


class DecoderGraph(nn.Module):
    """indices [B, h, w] int64 -> image [B, 3, h*f, w*f] in [-1, 1] (codebook lookup inside)."""

    def __init__(self, model: VQTokenizerBase) -> None:
        super().__init__()
        self.register_buffer("codebook_KC", model.quantize.get_codebook().detach().clone())
        self.decoder = model.decoder

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        q = F.embedding(indices, self.codebook_KC).permute(0, 3, 1, 2)  # [B, C, h, w]
        return self.decoder(q).clamp(-1.0, 1.0)


# symbolic dim names of each graph input/output, by tensor name
DIM_NAMES = {
    "image": ["batch", None, "height", "width"],
    "latent": ["batch", None, "latent_height", "latent_width"],
    "indices": ["batch", "latent_height", "latent_width"],
}


def export_graph(module: nn.Module, example: torch.Tensor, name: str, path: Path) -> None:
    """Trace one wrapper to ONNX with dynamic batch, height and width."""
    inputs, outputs = IO[name]
    # every dim but the channel dim of NCHW tensors is dynamic
    dims = {i: torch.export.Dim.DYNAMIC for i, label in enumerate(DIM_NAMES[inputs[0]]) if label}
    module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=OPSET,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes={inputs[0]: dims},
            external_data=False,
            verbose=False,
        )
    program.optimize()
    model = program.model_proto
    for vi in list(model.graph.input) + list(model.graph.output):
        for d, label in zip(vi.type.tensor_type.shape.dim, DIM_NAMES[vi.name]):
            if label and not d.HasField("dim_value"):
                d.dim_param = label
    onnx.save(model, str(path))
