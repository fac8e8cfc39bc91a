"""Recipe of a lookup-free tokenizer (LFQ: Open-MAGVIT2; FSQ: vqedge's own with
``fsq_levels``): one token map [B, H/f, W/f] like a single-scale bundle, but no codebook.

Graphs: encoder (image -> latent), quantizer (latent -> index, computed: the sign bits or
the FSQ digits as a mixed-radix number) and decoder (index -> its code, computed in the graph
by floor division and remainder, then the decoder). The bundle holds no ``codebook.npy``: the
manifest's ``quantizer`` object (``LFQ.bundle_config`` / ``FSQ.bundle_config``) is what the
runtime needs to compute a code. The gate, calibration and quality run at 256 x 256 as for
the imported families; tiling is refused where the model says its decode of a token reads
the whole map (Open-MAGVIT2's adaptive GroupNorm).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from vqedge.export.family_recipe import FamilySingleScaleRecipe
from vqedge.export.graphs import EncoderGraph
from vqedge.runtime.manifest import DECODER, ENCODER, LOOKUP_FREE, QUANTIZER

TILING_REFUSED = (
    "its decoder normalizes by statistics of the whole code map, so tiles would change the "
    "image: tiled calls are refused"
)


class LookupFreeQuantizerGraph(nn.Module):
    """latent [B, C, h, w] -> indices [B, h, w] int64, computed (no search)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.quantize = model.quantize

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.quantize.indices(latent)


class LookupFreeDecoderGraph(nn.Module):
    """indices [B, h, w] int64 -> image [B, 3, h*f, w*f] in [-1, 1]: each index's code
    computed in the graph, then post_quant_conv and the decoder."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.quantize = model.quantize
        self.post_quant_conv = model.post_quant_conv
        self.decoder = model.decoder

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        code = self.quantize.embed(indices)
        return self.decoder(self.post_quant_conv(code)).clamp(-1.0, 1.0)


class LookupFreeRecipe(FamilySingleScaleRecipe):
    """Open-MAGVIT2 and FSQ models: single-scale graphs with a computed code."""

    kind = LOOKUP_FREE
    wrappers = {
        ENCODER: EncoderGraph,
        QUANTIZER: LookupFreeQuantizerGraph,
        DECODER: LookupFreeDecoderGraph,
    }

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        # an imported family's int8 variant is reported, vqedge's own is gated
        self.imported = bool(getattr(model, "imported", False))

    def input_extra(self) -> dict[str, Any]:
        if getattr(self.model, "tiles", True):
            return {}
        return {"tiling": False, "tiling_note": TILING_REFUSED}

    def codebook(self) -> np.ndarray | None:
        return None

    def manifest_extra(self) -> dict[str, Any]:
        return {"quantizer": self.model.quantize.bundle_config()}
