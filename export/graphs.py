"""The exported graphs: thin inference-only wrappers around a trained model, and the export.

Every exportable model offers the same surface (``encoder``, ``quant_conv``, ``quantize``,
``post_quant_conv``, ``decoder``, ``runtime_config``; vqedge's own have identity convolutions),
so one wrapper per graph serves them all. Straight-through, losses and usage statistics are
training-only and stay out of the graphs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import nn

from vqedge.models.quantizer import nearest_index

EXPORTER = "dynamo"  # torch.onnx.export(dynamo=True): torch.export-based, maintained
OPSET = 18


class EncoderGraph(nn.Module):
    """image [B, 3, H, W] -> latent [B, C, H/f, W/f] (the encoder, then quant_conv)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.quant_conv = model.quant_conv

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(image))


class QuantizerGraph(nn.Module):
    """latent [B, C, h, w] -> indices [B, h, w] int64, by the model's own lookup (the same
    projection and ``nearest_index`` as its quantizer)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.register_buffer("codebook_KC", model.quantize.get_codebook().detach().clone())
        self.l2_normalize = model.quantize.l2_normalize
        self.unit = model.quantize.unit_lookup

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        if self.l2_normalize:  # the quantizer's projection
            latent = F.normalize(latent, dim=1)
        z = latent.permute(0, 2, 3, 1)  # [B, h, w, C]
        return nearest_index(z, self.codebook_KC, unit=self.unit)


class DecoderGraph(nn.Module):
    """indices [B, h, w] int64 -> image [B, 3, h*f, w*f] in [-1, 1] (codebook lookup,
    post_quant_conv, decoder)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.register_buffer("codebook_KC", model.quantize.get_codebook().detach().clone())
        self.post_quant_conv = model.post_quant_conv
        self.decoder = model.decoder

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        q = F.embedding(indices, self.codebook_KC).permute(0, 3, 1, 2)  # [B, C, h, w]
        return self.decoder(self.post_quant_conv(q)).clamp(-1.0, 1.0)


class MultiScaleQuantizerGraph(nn.Module):
    """latent [B, C, s, s] -> indices [B, L] int64: every scale, unrolled, concatenated.

    MultiScaleQuantizer's own scale loop; its resizes are fixed matrices, so the graph is
    exact at the one latent side s.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.quantize = model.quantize

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.quantize.scale_loop(latent)[0], dim=1)


class ScalesGraph(nn.Module):
    """indices [B, L] -> f_hat [B, C, s, s], f_hat after each scale [B, SN, C, s, s] and
    VAR's teacher-forcing input [B, L - pn_1^2, C]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.quantize = model.quantize
        self.config = model.runtime_config

    def forward(self, indices: torch.Tensor):
        q = self.quantize
        idx_Bl = self.config.split_scales(indices)
        each = q.idxBl_to_fhat_each(idx_Bl)
        return each[-1], torch.stack(each, dim=1), q.idxBl_to_var_input(idx_Bl)


class FhatDecoderGraph(nn.Module):
    """f_hat [B, C, s, s] -> image [B, 3, s*f, s*f] in [-1, 1] (post_quant_conv, decoder)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.post_quant_conv = model.post_quant_conv
        self.decoder = model.decoder

    def forward(self, f_hat: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1.0, 1.0)


def export_graph(
    module: nn.Module,
    example: torch.Tensor,
    name: str,
    path: Path,
    io: tuple[list[str], list[str]],
    dim_names: dict[str, list[str | None]],
) -> None:
    """Trace one wrapper to ONNX with ``io`` = (input names, output names); ``dim_names``
    gives each input/output tensor's symbolic dim labels (None: a fixed dim). The dims of
    the first input that carry a label are dynamic."""
    inputs, outputs = io
    dims = {i: torch.export.Dim.DYNAMIC for i, label in enumerate(dim_names[inputs[0]]) if label}
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
        for d, label in zip(vi.type.tensor_type.shape.dim, dim_names[vi.name]):
            if label and not d.HasField("dim_value"):
                d.dim_param = label
    onnx.save(model, str(path))
