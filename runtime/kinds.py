"""``load``: a bundle as the tokenizer of its kind, and the table of kinds it reads.

A bundle's manifest names its kind (``single-scale``, ``multi-scale``); ``KINDS`` names the
class that runs each, imported when a bundle of that kind is loaded. Adding a kind adds its
module and one entry here (docs/extending.md).
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

from vqedge.runtime.limits import check_max_side
from vqedge.runtime.manifest import LOOKUP_FREE, MULTI_SCALE, SINGLE_SCALE, BundleError
from vqedge.runtime.providers import ProviderList
from vqedge.runtime.session import BundleSessions
from vqedge.runtime.verify import verify_at_load

if TYPE_CHECKING:
    from vqedge.runtime.base import TokenizerBase

# manifest kind -> "module:class" of the TokenizerBase subclass that runs it
KINDS: dict[str, str] = {
    SINGLE_SCALE: "vqedge.runtime.tokenizer:Tokenizer",
    MULTI_SCALE: "vqedge.runtime.multiscale:MultiScaleTokenizer",
    LOOKUP_FREE: "vqedge.runtime.lookup_free:LookupFreeTokenizer",
}


def kind_class(kind: str) -> type[TokenizerBase]:
    """The class that runs bundles of ``kind`` (imported on first use)."""
    module, name = KINDS[kind].split(":")
    return getattr(import_module(module), name)


def load(
    bundle: str | Path | None = None,
    providers: str | ProviderList = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    strict: bool = True,
    session_options: ort.SessionOptions | None = None,
    max_side: int | None = None,
    cache_dir: str | Path | None = None,
    verify: bool = True,
) -> TokenizerBase:
    """Load a bundle as the tokenizer of its kind.

    Parameters
    ----------
    bundle : str or Path, optional
        A bundle folder, or the name of a shipped bundle (``list_bundles()``); None loads
        the shipped default.
    providers : "auto", a provider name, or a list of names / (name, options) pairs
        "auto" takes the best available of TensorRT, CUDA, ROCm, DirectML, CoreML,
        OpenVINO, then the CPU provider. A list is passed to onnxruntime as it is.
    precision : {"fp32", "fp16", "int8", "bf16"}
        The bundle variant to run (``vqedge.runtime.providers.RUN_PRECISIONS``). bf16 runs
        the fp32 graphs at bf16 on the OpenVINO provider, and on no other.
    threads : int, optional
        Intra-op threads per session (default: onnxruntime's choice). Idle threads do not
        spin, so the sessions of one tokenizer, or several tokenizers in one process, do not
        steal each other's cores.
    strict : bool
        Raise when a provider or precision that was asked for does not run (else warn
        loudly, and ``info`` reports what runs).
    session_options : onnxruntime.SessionOptions, optional
        Used as given (``threads`` then does not apply).
    max_side : int, optional
        Largest image side, in pixels, the untiled methods take in and give out. Default:
        ``DEFAULT_MAX_SIDE``, or less for a model with self-attention, whose memory grows
        with the fourth power of the side (``vqedge.runtime.limits.default_max_side``).
    cache_dir : str or Path, optional
        Keep onnxruntime's optimized graphs here and load them on later runs (faster
        start). Entries are keyed by bundle, graph, provider, onnxruntime version and CPU,
        since an optimized graph is only valid where it was made.
    verify : bool
        Run the bundle's check set (``vqedge.runtime.verify``) at this precision the first
        time this bundle, precision, providers and CPU are seen (the verdict is cached in
        ``verify.cache_root()``): a precision that does not give the bundle's tokens here
        raises ``PrecisionError`` with ``strict``, else warns and runs fp32 instead.
        ``info["verification"]`` has the verdict.

    Returns
    -------
    TokenizerBase
        The class registered in ``KINDS`` for the manifest's ``kind`` (``Tokenizer`` or
        ``MultiScaleTokenizer``).

    Raises
    ------
    BundleError
        Missing bundle, tampered or missing file, an unknown format or kind, an absent
        variant.
    ProviderError
        With ``strict``, a provider or precision that was asked for does not run
        (``PrecisionError``, a subclass: it runs, but not as the bundle promises).
    """
    check_max_side(max_side)
    sessions = BundleSessions.open(
        bundle, providers, precision, threads, strict, session_options, cache_dir
    )
    if sessions.kind not in KINDS:
        raise BundleError(
            f"bundle {sessions.root.name} is of kind {sessions.kind!r}; this vqedge runs "
            f"{sorted(KINDS)}: upgrade vqedge"
        )
    tok = kind_class(sessions.kind)(sessions, max_side)
    if not verify:
        return tok

    def reload(fallback: str) -> TokenizerBase:
        return load(
            bundle, providers, fallback, threads, strict, session_options, max_side, cache_dir
        )

    return verify_at_load(tok, strict, reload)


__all__ = ["KINDS", "kind_class", "load"]
