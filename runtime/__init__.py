"""vqedge.runtime: run exported vqedge bundles with numpy and onnxruntime only (never torch).

``from vqedge.runtime import Tokenizer`` is the entry point. The names below are imported on
first use, so ``import vqedge.runtime`` (and ``vqedge --help``) does not load onnxruntime.
"""

from importlib import import_module
from typing import Any

from vqedge.runtime.config import VQVAEConfig
from vqedge.runtime.metrics import codebook_stats, psnr, to_uint8

_LAZY = {
    "load": "vqedge.runtime.tokenizer",
    "Tokenizer": "vqedge.runtime.tokenizer",
    "MultiScaleTokenizer": "vqedge.runtime.multiscale",
    "list_bundles": "vqedge.runtime.tokenizer",
    "save_tokens": "vqedge.runtime.tokens",
    "load_tokens": "vqedge.runtime.tokens",
    "BundleError": "vqedge.runtime.manifest",
    "ProviderError": "vqedge.runtime.providers",
}

__all__ = ["VQVAEConfig", "codebook_stats", "psnr", "to_uint8", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vqedge.runtime' has no attribute {name!r}")
