"""vqedge.models: the PyTorch tokenizers, training and the shipped trained default.

The names below are imported on first use, so that the torch-free family table
(``vqedge.models.registry``) can be read without importing torch.
"""

from importlib import import_module
from typing import Any

_LAZY = {
    "load_pretrained": "vqedge.models.checkpoint",
    "CheckpointError": "vqedge.models.import_checkpoint",
    "LlamaGenVQ": "vqedge.models.llamagen",
    "load_llamagen": "vqedge.models.llamagen",
    "FSQ": "vqedge.models.lookup_free",
    "FSQVQVAE": "vqedge.models.lookup_free",
    "LFQ": "vqedge.models.lookup_free",
    "OpenMagvit2": "vqedge.models.open_magvit2",
    "load_open_magvit2": "vqedge.models.open_magvit2",
    "VectorQuantizer": "vqedge.models.quantizer",
    "TamingVQGAN": "vqedge.models.taming",
    "load_taming": "vqedge.models.taming",
    "VARVQVAE": "vqedge.models.var",
    "load_var": "vqedge.models.var",
    "DiffusersVQModel": "vqedge.models.vqmodel",
    "load_vqmodel": "vqedge.models.vqmodel",
    "VQVAE": "vqedge.models.vqvae",
    "SimpleVQVAE": "vqedge.models.vqvae",
    "VQTokenizerBase": "vqedge.models.vqvae",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vqedge.models' has no attribute {name!r}")
