"""The session core every tokenizer kind sits on: one opened bundle on onnxruntime.

``BundleSessions`` holds the manifest, the chosen providers, one lazily created and
sha256-verified session per graph, the optimized-graph cache, the codebook and the facts
common to every kind. The kinds (vqedge.runtime.base.TokenizerBase and its subclasses) sit
over it.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from vqedge.runtime.arena import release_memory, use_shared_arena
from vqedge.runtime.config import VQVAEConfig
from vqedge.runtime.device import cpu_signature
from vqedge.runtime.limits import DEFAULT_MAX_SIDE
from vqedge.runtime.manifest import (
    DECODER,
    ENCODER,
    MANIFEST,
    MULTI_SCALE,
    QUANTIZER,
    SCALES,
    SINGLE_SCALE,
    BundleError,
    manifest_config,
    read_manifest,
    sha256_file,
    verified_file,
)
from vqedge.runtime.providers import (
    CPU,
    DEVICE_MEMORY,
    OPENVINO,
    RUN_PRECISIONS,
    ProviderList,
    lookup_providers,
    make_session,
    provider_names,
    resolve_providers,
    run_precision,
)

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


class BundleSessions:
    """One bundle opened on onnxruntime: the core shared by every tokenizer kind.

    Use ``BundleSessions.open``; sessions are created on first use, each from a graph file
    whose sha256 (and that of every external-weights file of its variant) is checked first.

    Attributes
    ----------
    root : Path
        The bundle folder.
    manifest : dict
        The bundle's manifest.
    kind : str
        The bundle kind (``SINGLE_SCALE`` or ``MULTI_SCALE``).
    config : VQVAEConfig
        The model config.
    precision : str
        The precision that runs: the one asked for, or fp32 where a lenient load could not
        give bf16.
    providers : list
        The providers of the encoder and decoder graphs.
    lookup_providers : list
        The providers of the quantizer graph (the nearest-code lookup).
    bundle_sha256 : str
        sha256 of manifest.json: the bundle's identity, written into token files.
    on_device : bool
        Whether the first provider keeps outputs in device memory (IO binding applies).
    """

    def __init__(
        self,
        root: Path,
        manifest: dict[str, Any],
        providers: str | ProviderList,
        precision: str,
        options: ort.SessionOptions,
        strict: bool,
        cache_dir: Path | None = None,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.kind: str = manifest.get("kind", SINGLE_SCALE)
        self.config: VQVAEConfig = manifest_config(manifest)
        resolved = resolve_providers(providers, precision)
        self.precision = run_precision(resolved, precision, strict)
        self.providers = resolved
        self.lookup_providers = lookup_providers(providers, resolved)
        self.options = options
        self.strict = strict
        self.cache_dir = cache_dir
        self.variant: dict[str, Any] = manifest["variants"][variant_name(precision)]
        self.bundle_sha256 = sha256_file(root / MANIFEST)
        self.on_device = provider_names(resolved)[0] in DEVICE_MEMORY
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._files: dict[str, str] = {}  # graph -> the bundle file its session runs
        self._weights_checked = False
        self._codebook: np.ndarray | None = None
        self._fresh_options: Callable[[], ort.SessionOptions] | None = None
        # the on-device check's verdict for this precision (``vqedge.runtime.verify``)
        self.verification: dict[str, Any] | None = None

    @classmethod
    def open(
        cls,
        bundle: str | Path | None = None,
        providers: str | ProviderList = "auto",
        precision: str = "fp32",
        threads: int | None = None,
        strict: bool = True,
        session_options: ort.SessionOptions | None = None,
        cache_dir: str | Path | None = None,
    ) -> BundleSessions:
        """Read and check a bundle's manifest and open its session core.

        The arguments are ``load``'s (see there). The encoder's session is created here, so
        a provider that does not run fails at load, not at first use.

        Raises
        ------
        BundleError
            Missing bundle, a manifest it cannot read, an absent variant or a missing file.
        ProviderError
            With ``strict``, a provider or precision that was asked for does not run.
        """
        if precision not in RUN_PRECISIONS:
            raise ValueError(f"precision must be one of {RUN_PRECISIONS}, got {precision!r}")
        root = bundle_path(bundle)
        # each file's sha256 is checked when it is first read (verified_file), so that the
        # variants that are not used are never hashed
        manifest = read_manifest(root, verify=False)
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
        for rel in rels:
            if not (root / rel).is_file():
                raise BundleError(f"bundle file {rel} is missing from {root}")
        own_options = session_options is None
        if session_options is None:
            session_options = default_session_options(threads)
        cache = Path(cache_dir) if cache_dir is not None else None
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        core = cls(root, manifest, providers, precision, session_options, strict, cache)
        if own_options:
            # each cached graph names its own weights file in its options: fresh options per
            # graph, or onnxruntime warns on every overwrite (options the user gave are used
            # as given)
            core._fresh_options = lambda: default_session_options(threads)
        core.session(ENCODER)
        return core

    # -- sessions -------------------------------------------------------------------------

    def graph_file(self, graph: str, providers: ProviderList | None = None) -> str:
        """The bundle file that runs ``graph`` on ``providers`` (default: the core's).

        Where onnxruntime's CPU provider comes first and the variant has ``cpu_graphs``, its
        form for that provider (the decoder's ConvTransposes as phase convolutions: int8
        kernels and no column buffer there; OpenVINO and GPUs run the plain form).
        """
        if providers is None:
            providers = self.lookup_providers if graph == QUANTIZER else self.providers
        alt = self.variant.get("cpu_graphs", {}).get(graph)
        if alt is not None and provider_names(providers)[0] == CPU:
            return alt["file"]
        graphs = self.variant["graphs"]
        if graph not in graphs:
            raise BundleError(
                f"bundle {self.root.name} has no {graph} graph (it has {sorted(graphs)})"
            )
        return graphs[graph]["file"]

    def session(self, graph: str) -> ort.InferenceSession:
        """The session of ``graph``, created (from verified files) on first use."""
        sess = self._sessions.get(graph)
        if sess is None:
            providers = self.lookup_providers if graph == QUANTIZER else self.providers
            rel = self.graph_file(graph, providers)
            # onnxruntime names a profile by its prefix and the second it started: one prefix
            # per graph, or sessions started within a second write the same file
            prefix = self.options.profile_file_prefix
            if self.options.enable_profiling:
                self.options.profile_file_prefix = f"{prefix}-{graph}"
            try:
                if self.cache_dir is None:
                    sess = self._verified_session(rel, providers, self.options)
                else:
                    sess = self._cached_session(rel, providers)
            finally:
                self.options.profile_file_prefix = prefix
            # what creating it freed (weights read, then repacked) would otherwise stay
            # resident and add to every later peak
            release_memory()
            if graph != QUANTIZER:
                self._check_precision_ran(graph, sess)
            self._files[graph] = rel
            self._sessions[graph] = sess
        return sess

    def run(self, graph: str, name: str, x: np.ndarray) -> list[np.ndarray]:
        """Run ``graph`` on one input ``name`` -> its outputs."""
        return self.session(graph).run(None, {name: x})

    def _check_precision_ran(self, graph: str, sess: ort.InferenceSession) -> None:
        """bf16 runs on OpenVINO only: where a lenient load fell back to another provider,
        the precision that runs is fp32, and ``precision`` says so."""
        if self.precision == "bf16" and sess.get_providers()[0] != OPENVINO:
            warnings.warn(
                f"{graph} runs on {sess.get_providers()[0]}, which has no bf16: it runs at fp32",
                RuntimeWarning,
                stacklevel=4,
            )
            self.precision = "fp32"

    def _weights(self) -> list[str]:
        return list(self.variant.get("weights", []))

    def _verified_session(
        self, rel: str, providers: ProviderList, options: ort.SessionOptions
    ) -> ort.InferenceSession:
        model = verified_file(self.root, self.manifest, rel)
        if not self._weights_checked:
            # onnxruntime reads external data relative to the graph's folder, unverified
            for w in self._weights():
                verified_file(self.root, self.manifest, w)
            self._weights_checked = True
        return make_session(model, providers, options, self.strict, self.precision)

    def _cached_session(self, rel: str, providers: ProviderList) -> ort.InferenceSession:
        """Load the optimized graph from the cache, or make it there on this first run."""
        machine = hashlib.sha256(cpu_signature().encode()).hexdigest()[:12]
        first = provider_names(providers)[0].replace("ExecutionProvider", "")
        variant = variant_name(self.precision)
        stem = Path(rel).name.split(".")[0]  # encoder, decoder_cpu, ...
        key = f"{self.bundle_sha256[:12]}-{variant}-{stem}-{first}-ort{ort.__version__}"
        cached = self.cache_dir / f"{key}-{machine}.onnx"
        opts = self._fresh_options() if self._fresh_options else self.options
        saved = opts.optimized_model_filepath, opts.graph_optimization_level
        saved_log = opts.log_severity_level
        # the key above already holds what onnxruntime warns about when it saves one
        opts.log_severity_level = 3
        try:
            if cached.is_file():  # made from this bundle's verified file (the key has its sha)
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                return make_session(cached, providers, opts, self.strict, self.precision)
            opts.optimized_model_filepath = str(cached)
            # format 2 graphs keep their weights outside the graph: the optimized copy gets a
            # weights file of its own beside it, named after it (one per cached graph); small
            # tensors (shapes, axes) stay inside, where shape inference reads them
            opts.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", f"{cached.name}.data"
            )
            return self._verified_session(rel, providers, opts)
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
        """Model facts, the precision that runs and the providers running each open session."""
        return {
            "bundle": str(self.root),
            "name": self.manifest.get("name"),
            "kind": self.kind,
            "downsample_factor": self.config.downsample_factor,
            "codebook_size": self.config.codebook_size,
            "code_dim": self.config.code_dim,
            "bits_per_pixel": self.config.bits_per_pixel,
            "precision": self.precision,
            "providers_requested": provider_names(self.providers),
            "provider_options": {
                name: dict(opts)
                for name, opts in (p for p in self.providers if isinstance(p, tuple))
            },
            "providers_in_use": {g: s.get_providers() for g, s in self._sessions.items()},
            "graph_files": dict(self._files),
            "quality": self.variant.get("quality"),
            "verification": self.verification,
        }


__all__ = [
    "BUNDLES_DIR",
    "DECODER",
    "DEFAULT_BUNDLE",
    "DEFAULT_MAX_SIDE",
    "ENCODER",
    "MULTI_SCALE",
    "QUANTIZER",
    "SCALES",
    "SINGLE_SCALE",
    "BundleSessions",
    "bundle_path",
    "default_session_options",
    "list_bundles",
]
