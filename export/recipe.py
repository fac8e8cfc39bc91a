"""What the export pipeline asks of a bundle kind: the recipe interface and shared data.

A recipe is everything kind-specific about exporting one model: the graph wrappers and their
inputs/outputs, the trace inputs, the validator (the parity gate), the int8 calibration data,
the held-out quality measure and the manifest fields of its own. ``vqedge.export.pipeline``
runs the same sequence for every recipe; adding a kind adds a recipe module and one line in
the pipeline's registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vqedge.export.validate import session
from vqedge.models.data import default_train_paths
from vqedge.runtime.config import VQVAEConfig
from vqedge.runtime.images import uint8_to_float
from vqedge.runtime.inputs import read_image

# graph name -> (input names, output names)
GraphIO = dict[str, tuple[list[str], list[str]]]
# graph name -> path of one graph file
Graphs = dict[str, Path]
# int8 calibration of one graph: (its input name, input arrays)
Calibration = tuple[str, list[np.ndarray]]
# side of the square image a single-scale model's GFLOP per image are counted at
FLOP_SIDE = 256

__all__ = ["Calibration", "GraphIO", "Graphs", "Recipe", "session", "training_crops"]


# training crops that calibrate an int8 variant, and their side (a model of one resolution
# takes its own)
CALIBRATION_IMAGES = 12
CALIBRATION_SIDE = 128


def training_crops(side: int, n: int = CALIBRATION_IMAGES) -> list[np.ndarray]:
    """Random side x side crops of training photos (never the held-out ones), float
    [1, 3, side, side] each: int8 calibration images."""
    rng = np.random.default_rng(0)
    arrays = []
    for path in default_train_paths()[:n]:
        img = read_image(path)
        y = rng.integers(0, img.shape[0] - side + 1)
        x = rng.integers(0, img.shape[1] - side + 1)
        arrays.append(uint8_to_float(img[y : y + side, x : x + side]))
    return arrays


class Recipe(ABC):
    """How to export one kind of tokenizer; one instance per export of ``model``.

    The encoder and decoder get reduced-precision variants; every other graph (the
    quantizer's nearest-code lookup, a multi-scale bundle's scales) stays fp32 in every
    variant: reduced precision there would flip tokens without making anything faster.
    """

    kind: str  # the manifest's "kind" (vqedge.runtime.manifest.SINGLE_SCALE, ...)
    io: GraphIO  # the graphs, in the order they run
    dim_names: dict[str, list[str | None]]  # symbolic dims of each tensor (None: fixed)
    wrappers: dict[str, type[nn.Module]]  # graph name -> inference wrapper

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        # what the bundle tells the runtime (f, K, code dim, scales): the model's own surface
        self.config: VQVAEConfig = model.runtime_config

    @abstractmethod
    def examples(self) -> dict[str, torch.Tensor]:
        """Trace input of each graph: sizes that validation never repeats."""

    @abstractmethod
    def size_policy(self) -> str:
        """The input size rule, written into the manifest and every graph."""

    @abstractmethod
    def validate(self, graphs: Graphs) -> tuple[bool, str, list[dict[str, Any]]]:
        """The gate: every fp32 graph against PyTorch; (passed, readable report, cases)."""

    def calibration_count(self) -> int:
        """How many training crops calibrate int8 (a large model may take fewer)."""
        return CALIBRATION_IMAGES

    @abstractmethod
    def calibration(self, graphs: Graphs) -> dict[str, Calibration]:
        """int8 calibration of the encoder and the decoder, computed with the fp32 graphs.
        The decoder's data also checks the CPU-provider decoder against the plain one."""

    @abstractmethod
    def quality(self, graphs: Graphs, ref_idx: Any | None) -> tuple[dict[str, Any], Any]:
        """Held-out quality of one variant's graphs run in turn: (figures, its tokens);
        ``ref_idx`` (fp32's tokens) gives the token agreement."""

    @abstractmethod
    def decoder_quality(self, graphs: Graphs, decoder: Path, idx: Any) -> dict[str, Any]:
        """Held-out quality when ``decoder`` decodes the variant's own tokens ``idx``."""

    # an imported family's model: the int8 variant is reported, not refused (see pipeline)
    imported: bool = False

    def config_dict(self) -> dict[str, Any]:
        """The manifest's ``config``: a ``VQVAEConfig.to_dict()``, what the runtime reads."""
        return self.config.to_dict()

    def input_extra(self) -> dict[str, Any]:
        """Fields of the manifest's ``input`` of this model only (e.g. ``tiling``)."""
        return {}

    def flop_size(self) -> list[int]:
        """[H, W] of the image the manifest's GFLOP per image are counted at: the model's
        size (a multi-scale model's resolution; 256 x 256 for a single-scale one)."""
        R = self.config.resolution
        return [R, R] if R else [FLOP_SIDE, FLOP_SIDE]

    @abstractmethod
    def flop_inputs(self) -> dict[str, list[int]]:
        """Each graph's input shape for one image of ``flop_size()``."""

    def codebook(self) -> np.ndarray | None:
        """The bundle's ``codebook.npy``, float32 [K, C]; None: the kind has none (its codes
        are computed from the index)."""
        return self.model.quantize.get_codebook().numpy().astype(np.float32)

    def manifest_extra(self) -> dict[str, Any]:
        """Manifest fields of this kind only."""
        return {}
