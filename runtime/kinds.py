"""``load``: a bundle as the tokenizer of its kind.

A bundle's manifest names its kind; the table of kinds (``vqedge.runtime.kind.KINDS``) names
the class that runs each, imported when a bundle of that kind is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

from vqedge.runtime.kind import kind_of
from vqedge.runtime.limits import check_max_side
from vqedge.runtime.providers import ProviderList
from vqedge.runtime.session import BundleSessions
from vqedge.runtime.verify import verify_at_load

if TYPE_CHECKING:
    from vqedge.runtime.base import TokenizerBase


def kind_class(kind: str) -> type[TokenizerBase]:
    """The class that runs bundles of ``kind`` (imported on first use).

    Raises
    ------
    BundleError
        A kind this vqedge does not run.
    """
    return kind_of(kind).runtime_class()


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
        The runtime class of the manifest's ``kind`` in ``vqedge.runtime.kind.KINDS``.

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
    tok = kind_class(sessions.kind)(sessions, max_side)
    if not verify:
        return tok

    def reload(fallback: str) -> TokenizerBase:
        return load(
            bundle, providers, fallback, threads, strict, session_options, max_side, cache_dir
        )

    return verify_at_load(tok, strict, reload)


__all__ = ["kind_class", "load"]
