"""``load``: a bundle as the tokenizer of its kind.

A bundle's manifest names its kind; the table of kinds (``vqedge.runtime.kind.KINDS``) names
the class that runs each, imported when a bundle of that kind is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import onnxruntime as ort

from vqedge.runtime.cache import GRAPHS, private_dir
from vqedge.runtime.fidelity import TIERS, TOKENS
from vqedge.runtime.kind import kind_of
from vqedge.runtime.limits import check_max_side
from vqedge.runtime.manifest import ENCODER
from vqedge.runtime.plan import AUTO, PrecisionArg, PrecisionPlan
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
    precision: PrecisionArg | PrecisionPlan = "fp32",
    threads: int | None = None,
    strict: bool = True,
    session_options: ort.SessionOptions | None = None,
    max_side: int | None = None,
    cache_dir: str | Path | None = None,
    verify: bool = True,
    encoder_tier: str = TOKENS,
    cache_graphs: bool = False,
) -> TokenizerBase:
    """Load a bundle as the tokenizer of its kind, its plan checked on this device.

    Parameters
    ----------
    bundle : str or Path, optional
        A bundle folder, or the name of a shipped bundle (``list_bundles()``); None loads
        the shipped default.
    providers : "auto", a provider name, or a list of names / (name, options) pairs
        "auto" takes the best available of TensorRT, CUDA, ROCm, DirectML, CoreML,
        OpenVINO, then the CPU provider. A list is passed to onnxruntime as it is.
    precision : str, {"encoder": str, "decoder": str}, or "auto"
        The precision plan (``vqedge.runtime.plan``): one of "fp32", "fp16", "int8", "bf16"
        for every stage, a precision per stage (a stage left out runs fp32), or "auto" (for
        every stage, or as one stage's value): the fastest precision the bundle has on
        these providers that holds the stage's fidelity tier on the check set here (fp32,
        fp16, int8; bf16 on OpenVINO only), timed on the check images and cached like the
        verdicts. The nearest-code lookup and a multi-scale bundle's scales always run at
        fp32. bf16 runs the fp32 graphs at bf16 on the OpenVINO provider, and on no other.
    threads : int, optional
        Intra-op threads per session (default: onnxruntime's choice). Idle threads do not
        spin, so the sessions of one tokenizer, or several tokenizers in one process, do not
        steal each other's cores.
    strict : bool
        Raise when a provider or precision that was asked for does not run, or a stage does
        not hold its fidelity tier here (else warn loudly: that stage runs fp32, and
        ``verification`` says so).
    session_options : onnxruntime.SessionOptions, optional
        Used as given (``threads`` then does not apply).
    max_side : int, optional
        Largest image side, in pixels, the untiled methods take in and give out. Default:
        ``DEFAULT_MAX_SIDE``, or less for a model with self-attention, whose memory grows
        with the fourth power of the side (``vqedge.runtime.limits.default_max_side``).
    cache_dir : str or Path, optional
        The cache root (default: $VQEDGE_CACHE_DIR, else $XDG_CACHE_HOME/vqedge, else
        ~/.cache/vqedge): verdicts in ``verdicts/``, optimized graphs in ``graphs/``.
        Created private to the user; a folder that others may write or that another user
        owns is not used (one warning), and every load then measures its verdict.
    verify : bool
        Judge each stage of the plan on the bundle's check set by its fidelity tier
        (``vqedge.runtime.fidelity``): the encoder keeps at least 99% of the exporting
        machine's fp32 tokens (tokens tier), the decoder decodes fp32's tokens within 40 dB
        of fp32's decode (pixels tier). Judgements are cached per stage under a key of the
        bundle, plan, providers, session options, machine, versions and rules, and re-judged
        on every read. A stage that does not hold raises ``PrecisionError`` with ``strict``,
        else warns and runs fp32. A bundle without a check set is refused with ``strict``
        (``PrecisionError``: re-export it, or pass ``verify=False``) and loads unverified
        otherwise. ``verify=False`` checks nothing (``verification`` is None).
    encoder_tier : {"tokens", "pixels"}
        "pixels" accepts an encoder whose tokens differ from fp32's so long as its round trip
        loses at most ``fidelity.PIXELS_ENCODER_MAX_DROP_DB`` against fp32's (not for
        tokenizing a generator's training set).
    cache_graphs : bool
        Keep onnxruntime's optimized graphs in the cache's ``graphs/`` and load them on
        later runs (a faster start; off by default: it writes a copy of every graph it
        opens). Entries are keyed by bundle, graph, provider, onnxruntime version and CPU.

    Returns
    -------
    TokenizerBase
        The runtime class of the manifest's ``kind`` in ``vqedge.runtime.kind.KINDS``;
        ``tok.plan`` is the plan that runs and ``tok.verification`` its verdict (``Verdict``).

    Raises
    ------
    BundleError
        Missing bundle, tampered or missing file, an unknown format or kind, an absent
        variant.
    ProviderError
        With ``strict``, a provider or precision that was asked for does not run
        (``PrecisionError``, a subclass: it runs, but a stage does not hold its tier here,
        or the bundle carries no check set to say).
    ValueError
        An unknown precision, stage or tier.
    """
    check_max_side(max_side)
    asked = PrecisionPlan.parse(precision)
    if encoder_tier not in TIERS:
        raise ValueError(f"encoder_tier must be one of {TIERS}, got {encoder_tier!r}")
    if not verify and not asked.resolved:
        raise ValueError("precision='auto' measures on the check set: it needs verify=True")
    start = PrecisionPlan(**{s: "fp32" if p == AUTO else p for s, p in asked.stages.items()})
    graphs = private_dir(GRAPHS, cache_dir) if cache_graphs else None
    sessions = BundleSessions.open(
        bundle, providers, start, threads, strict, session_options, graphs
    )
    tok = kind_class(sessions.kind)(sessions, max_side)
    if verify:
        verify_at_load(tok, asked, strict, encoder_tier, cache_dir)
        sessions.session(ENCODER)  # again where "auto" or a fallback switched its graph
    return tok


__all__ = ["kind_class", "load"]
