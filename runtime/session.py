"""The session core every tokenizer kind sits on: one opened bundle on onnxruntime.

``BundleSessions`` holds the manifest, the chosen providers, one lazily created and
sha256-verified session per graph, the optimized-graph cache, the codebook and the facts
common to every kind. The kinds (vqedge.runtime.base.TokenizerBase and its subclasses) sit
over it.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from vqedge.runtime.arena import release_memory, use_shared_arena
from vqedge.runtime.cache import FILE_MODE
from vqedge.runtime.config import BundleConfig
from vqedge.runtime.device import cpu_signature
from vqedge.runtime.fidelity import DECODER_STAGE, ENCODER_STAGE
from vqedge.runtime.manifest import (
    DECODER,
    ENCODER,
    MANIFEST,
    QUANTIZER,
    SINGLE_SCALE,
    BundleError,
    bundle_config,
    read_manifest,
    sha256_file,
    verified_file,
)
from vqedge.runtime.plan import PrecisionPlan
from vqedge.runtime.providers import (
    CPU,
    DEVICE_MEMORY,
    OPENVINO,
    ProviderList,
    lookup_providers,
    make_session,
    provider_names,
    resolve_providers,
    run_precision,
)

if TYPE_CHECKING:
    from vqedge.runtime.verdict import Verdict

BUNDLES_DIR = Path(__file__).parent / "bundles"
DEFAULT_BUNDLE = "vqvae-f4"


def list_bundles() -> list[str]:
    """Names of the bundles shipped inside the package."""
    if not BUNDLES_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / MANIFEST).is_file())


def bundle_path(bundle: str | Path | None) -> Path:
    """A bundle folder from a path or a shipped bundle's name (None: the default)."""
    if bundle is None:
        bundle = DEFAULT_BUNDLE
    p = Path(bundle)
    if p.is_dir():
        return p
    if isinstance(bundle, str) and (BUNDLES_DIR / bundle).is_dir():
        return BUNDLES_DIR / bundle
    raise BundleError(
        f"no bundle at {bundle!r}: pass a bundle folder or one of the shipped bundles "
        f"{list_bundles()}"
    )


def default_session_options(threads: int | None = None, arena: bool = True) -> ort.SessionOptions:
    """The session options ``load`` uses unless given its own.

    Parameters
    ----------
    threads : int, optional
        Intra-op threads per session (default: onnxruntime's choice).
    arena : bool
        One shared CPU arena grown by request (less peak memory at the same speed). Without
        it a large run's activations go back to the system when it ends instead of staying
        as the arena's peak: what a long-running server wants.
    """
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # A tokenizer runs its sessions one after another: threads that spin after a run steal
    # the cores from the next session (benchmarks/results has the measurement).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if arena:
        use_shared_arena(opts)
    else:
        opts.enable_cpu_mem_arena = False
    return opts


def variant_name(precision: str) -> str:
    """The bundle variant a run precision reads: bf16 runs the fp32 graphs."""
    return "fp32" if precision == "bf16" else precision


def check_variant(root: Path, manifest: dict[str, Any], precision: str) -> None:
    """Refuse a precision whose variant the bundle lacks, or one of whose files is missing."""
    variant = variant_name(precision)
    if variant not in manifest["variants"]:
        raise BundleError(
            f"bundle {root.name} has no {variant} variant (it has "
            f"{sorted(manifest['variants'])}); export it with --precisions {variant}"
        )
    v = manifest["variants"][variant]
    graphs = [*v["graphs"].values(), *v.get("cpu_graphs", {}).values()]
    # a lookup-free bundle has no codebook file: its codes are computed from the index
    codebook = [manifest["codebook"]["file"]] if "codebook" in manifest else []
    rels = [*codebook, *(g["file"] for g in graphs), *v.get("weights", [])]
    rels += [w for g in graphs for w in g.get("weights", [])]
    for rel in rels:
        if not (root / rel).is_file():
            raise BundleError(f"bundle file {rel} is missing from {root}")


# the graph each stage of a precision plan chooses; the others (the nearest-code lookup, a
# multi-scale bundle's scales) always run the fp32 graphs
STAGE_OF_GRAPH = {ENCODER: ENCODER_STAGE, DECODER: DECODER_STAGE}


class BundleSessions:
    """One bundle opened on onnxruntime: the core shared by every tokenizer kind.

    Use ``BundleSessions.open``; sessions are created on first use, each from a graph file
    whose sha256 (and that of every external-weights file it reads) is checked first. Each
    stage of the precision plan runs its own variant's graph: the encoder graph from the
    plan's encoder precision, the decoder graph from its decoder precision; the quantizer
    (nearest-code lookup) and a multi-scale bundle's scales graph always run at fp32.

    Attributes
    ----------
    root : Path
        The bundle folder.
    manifest : dict
        The bundle's manifest.
    kind : str
        The bundle kind (``SINGLE_SCALE`` or ``MULTI_SCALE``).
    config : BundleConfig
        What the bundle's tokens are (f, K, C, the scales).
    plan : PrecisionPlan
        The precision each stage runs at: the one asked for, or fp32 for a stage a lenient
        load could not give it (bf16 off OpenVINO, or a precision whose check failed).
    providers : list
        The providers asked for, resolved at fp32 (a bf16 stage adds OpenVINO's bf16 hint to
        its own list, ``stage_providers``).
    lookup_providers : list
        The providers of the quantizer graph (the nearest-code lookup).
    bundle_sha256 : str
        sha256 of manifest.json: the bundle's identity, written into token files.
    on_device : bool
        Whether the first provider keeps outputs in device memory (IO binding applies).
    verification : vqedge.runtime.verdict.Verdict or None
        The on-device check's verdict for the plan (``vqedge.runtime.verify``); None when
        ``load(verify=False)``.
    """

    def __init__(
        self,
        root: Path,
        manifest: dict[str, Any],
        providers: str | ProviderList,
        plan: PrecisionPlan,
        options: ort.SessionOptions,
        strict: bool,
        graph_cache: Path | None = None,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.kind: str = manifest.get("kind", SINGLE_SCALE)
        self.config: BundleConfig = bundle_config(manifest)
        self.asked_providers = providers
        self.providers = resolve_providers(providers, "fp32")
        self.lookup_providers = lookup_providers(providers, self.providers)
        self.options = options
        self.strict = strict
        self.graph_cache = graph_cache
        # read when first asked: the export measures its check set before the manifest,
        # which then records it, is written (once)
        self._bundle_sha256: str | None = None
        self.on_device = provider_names(self.providers)[0] in DEVICE_MEMORY
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._files: dict[str, str] = {}  # graph -> the bundle file its session runs
        self._checked: set[str] = set()  # weights files whose sha256 was checked
        self._codebook: np.ndarray | None = None
        self._fresh_options: Callable[[], ort.SessionOptions] | None = None
        self.plan = PrecisionPlan()
        self.stage_providers: dict[str, ProviderList] = {}
        for stage, precision in plan.stages.items():
            self._set_stage(stage, precision)
        self.verification: Verdict | None = None

    @classmethod
    def open(
        cls,
        bundle: str | Path | None = None,
        providers: str | ProviderList = "auto",
        plan: PrecisionPlan | None = None,
        threads: int | None = None,
        strict: bool = True,
        session_options: ort.SessionOptions | None = None,
        graph_cache: Path | None = None,
    ) -> BundleSessions:
        """Read and check a bundle's manifest and open its session core.

        The arguments are ``load``'s (see there); ``plan`` must be resolved (no "auto"
        stage) and ``graph_cache`` is the folder of optimized graphs (None: none kept). The
        encoder's session is created here, so a provider that does not run fails at load,
        not at first use.

        Raises
        ------
        BundleError
            Missing bundle, a manifest it cannot read, an absent variant or a missing file.
        ProviderError
            With ``strict``, a provider or precision that was asked for does not run.
        """
        plan = plan or PrecisionPlan()
        if not plan.resolved:
            raise ValueError(f"BundleSessions.open takes a resolved plan, got {plan}")
        root = bundle_path(bundle)
        # each file's sha256 is checked when it is first read (verified_file), so that the
        # variants that are not used are never hashed
        manifest = read_manifest(root, verify=False)
        for precision in set(plan.stages.values()):
            check_variant(root, manifest, precision)
        own_options = session_options is None
        if session_options is None:
            session_options = default_session_options(threads)
        core = cls(root, manifest, providers, plan, session_options, strict, graph_cache)
        if own_options:
            # each cached graph names its own weights file in its options: fresh options per
            # graph, or onnxruntime warns on every overwrite (options the user gave are used
            # as given)
            core._fresh_options = lambda: default_session_options(threads)
        core.session(ENCODER)
        return core

    # -- the plan -------------------------------------------------------------------------

    def _set_stage(self, stage: str, precision: str) -> None:
        resolved = resolve_providers(self.asked_providers, precision)
        ran = run_precision(resolved, precision, self.strict)
        self.stage_providers[stage] = resolved if ran == precision else self.providers
        self.plan = replace(self.plan, **{stage: ran})

    def set_stage(self, stage: str, precision: str) -> None:
        """Run ``stage`` at ``precision`` from now on (its session is made again on next use;
        the other stages' sessions stay open): the lenient fallback and ``"auto"``'s trials
        reuse this core rather than loading the bundle again."""
        check_variant(self.root, self.manifest, precision)
        self._set_stage(stage, precision)
        for graph, s in STAGE_OF_GRAPH.items():
            if s == stage:
                self._sessions.pop(graph, None)
                self._files.pop(graph, None)

    def precision_of(self, graph: str) -> str:
        """The precision ``graph`` runs at (fp32 for the lookup and the scales graph)."""
        stage = STAGE_OF_GRAPH.get(graph)
        return self.plan.stages[stage] if stage else "fp32"

    def variant_of(self, graph: str) -> dict[str, Any]:
        """The manifest variant ``graph`` is read from. The lookup and the scales graph are
        fp32 graphs in every variant: they come from the encoder's and decoder's variant."""
        stage = STAGE_OF_GRAPH.get(graph, ENCODER_STAGE if graph == QUANTIZER else DECODER_STAGE)
        return self.manifest["variants"][variant_name(self.plan.stages[stage])]

    def providers_of(self, graph: str) -> ProviderList:
        """The providers ``graph`` runs on."""
        if graph == QUANTIZER:
            return self.lookup_providers
        stage = STAGE_OF_GRAPH.get(graph)
        return self.stage_providers[stage] if stage else self.providers

    @property
    def bundle_sha256(self) -> str:
        """sha256 of the bundle's manifest.json (see the class docstring)."""
        if self._bundle_sha256 is None:
            self._bundle_sha256 = sha256_file(self.root / MANIFEST)
        return self._bundle_sha256

    # -- sessions -------------------------------------------------------------------------

    def graph_file(self, graph: str, providers: ProviderList | None = None) -> str:
        """The bundle file that runs ``graph`` on ``providers`` (default: its own).

        Where onnxruntime's CPU provider comes first and the variant has ``cpu_graphs``, its
        form for that provider (the decoder's ConvTransposes as phase convolutions: int8
        kernels and no column buffer there; OpenVINO and GPUs run the plain form).
        """
        return self._graph_entry(graph, providers)["file"]

    def _graph_entry(self, graph: str, providers: ProviderList | None = None) -> dict[str, Any]:
        if providers is None:
            providers = self.providers_of(graph)
        variant = self.variant_of(graph)
        alt = variant.get("cpu_graphs", {}).get(graph)
        if alt is not None and provider_names(providers)[0] == CPU:
            return alt
        graphs = variant["graphs"]
        if graph not in graphs:
            raise BundleError(
                f"bundle {self.root.name} has no {graph} graph (it has {sorted(graphs)})"
            )
        return graphs[graph]

    def session(self, graph: str) -> ort.InferenceSession:
        """The session of ``graph``, created (from verified files) on first use."""
        sess = self._sessions.get(graph)
        if sess is None:
            providers = self.providers_of(graph)
            entry = self._graph_entry(graph, providers)
            rel = entry["file"]
            # the weights this graph reads: its own list where the export split them per
            # graph, else its variant's
            weights = entry.get("weights", self.variant_of(graph).get("weights", []))
            # onnxruntime names a profile by its prefix and the second it started: one prefix
            # per graph, or sessions started within a second write the same file
            prefix = self.options.profile_file_prefix
            if self.options.enable_profiling:
                self.options.profile_file_prefix = f"{prefix}-{graph}"
            try:
                if self.graph_cache is None:
                    sess = self._verified_session(rel, weights, graph, self.options)
                else:
                    sess = self._cached_session(rel, weights, graph)
            finally:
                self.options.profile_file_prefix = prefix
            # what creating it freed (weights read, then repacked) would otherwise stay
            # resident and add to every later peak
            release_memory()
            if graph in STAGE_OF_GRAPH:
                self._check_precision_ran(graph, sess)
            self._files[graph] = rel
            self._sessions[graph] = sess
        return sess

    def run(self, graph: str, name: str, x: np.ndarray) -> list[np.ndarray]:
        """Run ``graph`` on one input ``name`` -> its outputs."""
        return self.session(graph).run(None, {name: x})

    def _check_precision_ran(self, graph: str, sess: ort.InferenceSession) -> None:
        """bf16 runs on OpenVINO only: where a lenient load fell back to another provider,
        the stage runs at fp32, and ``plan`` says so."""
        if self.precision_of(graph) == "bf16" and sess.get_providers()[0] != OPENVINO:
            warnings.warn(
                f"{graph} runs on {sess.get_providers()[0]}, which has no bf16: it runs at fp32",
                RuntimeWarning,
                stacklevel=4,
            )
            self.plan = replace(self.plan, **{STAGE_OF_GRAPH[graph]: "fp32"})

    def _verified_session(
        self, rel: str, weights: list[str], graph: str, options: ort.SessionOptions
    ) -> ort.InferenceSession:
        model = verified_file(self.root, self.manifest, rel)
        # onnxruntime reads external data relative to the graph's folder, unverified
        for w in weights:
            if w not in self._checked:
                verified_file(self.root, self.manifest, w)
                self._checked.add(w)
        return make_session(
            model, self.providers_of(graph), options, self.strict, self.precision_of(graph)
        )

    def _cached_session(self, rel: str, weights: list[str], graph: str) -> ort.InferenceSession:
        """Load the optimized graph from the cache, or make it there on this first run."""
        providers = self.providers_of(graph)
        machine = hashlib.sha256(cpu_signature().encode()).hexdigest()[:12]
        first = provider_names(providers)[0].replace("ExecutionProvider", "")
        variant = variant_name(self.precision_of(graph))
        stem = Path(rel).name.split(".")[0]  # encoder, decoder_cpu, ...
        key = f"{self.bundle_sha256[:12]}-{variant}-{stem}-{first}-ort{ort.__version__}"
        cached = self.graph_cache / f"{key}-{machine}.onnx"
        opts = self._fresh_options() if self._fresh_options else self.options
        saved = opts.optimized_model_filepath, opts.graph_optimization_level
        saved_log = opts.log_severity_level
        # the key above already holds what onnxruntime warns about when it saves one
        opts.log_severity_level = 3
        try:
            if cached.is_file():  # made from this bundle's verified file (the key has its sha)
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                return make_session(cached, providers, opts, self.strict, self.precision_of(graph))
            opts.optimized_model_filepath = str(cached)
            # format 2 graphs keep their weights outside the graph: the optimized copy gets a
            # weights file of its own beside it, named after it (one per cached graph); small
            # tensors (shapes, axes) stay inside, where shape inference reads them
            opts.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", f"{cached.name}.data"
            )
            sess = self._verified_session(rel, weights, graph, opts)
            for made in (cached, cached.with_name(f"{cached.name}.data")):
                if made.is_file():
                    os.chmod(made, FILE_MODE)
            return sess
        finally:
            opts.optimized_model_filepath, opts.graph_optimization_level = saved
            opts.log_severity_level = saved_log

    def end_profiling(self) -> dict[str, Path]:
        """Stop onnxruntime's profiler in every open session -> {graph: its JSON trace}."""
        return {g: Path(s.end_profiling()) for g, s in self._sessions.items()}

    # -- facts ----------------------------------------------------------------------------

    @property
    def codebook(self) -> np.ndarray:
        """The codebook, float32 [K, C]."""
        if self._codebook is None:
            rel = self.manifest["codebook"]["file"]
            self._codebook = np.load(verified_file(self.root, self.manifest, rel))
        return self._codebook

    def info(self) -> dict[str, Any]:
        """Model facts, the plan that runs (a precision per stage) and the providers running
        each open session; ``verification`` is the verdict as JSON carries it."""
        return {
            "bundle": str(self.root),
            "name": self.manifest.get("name"),
            "kind": self.kind,
            "downsample_factor": self.config.downsample_factor,
            "codebook_size": self.config.codebook_size,
            "code_dim": self.config.code_dim,
            "bits_per_pixel": self.config.bits_per_pixel,
            "precision": self.plan.to_dict(),
            "providers_requested": provider_names(self.providers),
            "provider_options": {
                name: dict(opts)
                for name, opts in (p for p in self.providers if isinstance(p, tuple))
            },
            "providers_in_use": {g: s.get_providers() for g, s in self._sessions.items()},
            "graph_files": dict(self._files),
            # the export's figures describe one variant's whole round trip: a mixed plan has none
            "quality": (
                self.manifest["variants"][variant_name(self.plan.uniform)].get("quality")
                if self.plan.uniform
                else None
            ),
            "verification": None if self.verification is None else self.verification.to_dict(),
        }


__all__ = [
    "BUNDLES_DIR",
    "DEFAULT_BUNDLE",
    "BundleSessions",
    "bundle_path",
    "default_session_options",
    "list_bundles",
]
