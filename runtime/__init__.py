"""vqedge.runtime: run exported vqedge bundles with numpy and onnxruntime only (never torch).

``from vqedge.runtime import load`` is the entry point: ``load(bundle)`` returns the tokenizer
of the bundle's kind (``Tokenizer``, ``MultiScaleTokenizer`` or ``LookupFreeTokenizer``, all
``TokenizerBase``). The
names below are imported on first use, so ``import vqedge.runtime`` (and ``vqedge --help``)
does not load onnxruntime.
"""

from importlib import import_module
from typing import Any

from vqedge.runtime.config import VQVAEConfig
from vqedge.runtime.metrics import codebook_stats, psnr

_LAZY = {
    "load": "vqedge.runtime.kinds",
    "TokenizerBase": "vqedge.runtime.base",
    "Tokenizer": "vqedge.runtime.tokenizer",
    "MultiScaleTokenizer": "vqedge.runtime.multiscale",
    "LookupFreeTokenizer": "vqedge.runtime.lookup_free",
    "list_bundles": "vqedge.runtime.session",
    "save_tokens": "vqedge.runtime.tokens",
    "load_tokens": "vqedge.runtime.tokens",
    "BundleError": "vqedge.runtime.manifest",
    "ProviderError": "vqedge.runtime.providers",
    "PrecisionError": "vqedge.runtime.verify",
    "PrecisionPlan": "vqedge.runtime.plan",
    "Verdict": "vqedge.runtime.verdict",
}

__all__ = ["VQVAEConfig", "codebook_stats", "psnr", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vqedge.runtime' has no attribute {name!r}")
