"""The Tokenizer: a bundle's graphs on onnxruntime, image <-> token map, numpy in and out."""

from __future__ import annotations

import hashlib
import math
import platform
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from vqedge.runtime.arena import use_shared_arena
from vqedge.runtime.config import VQVAEConfig
from vqedge.runtime.images import float_to_uint8, pad_to_multiple
from vqedge.runtime.inputs import check_indices, to_batch, to_uint8_image, token_map_hw
from vqedge.runtime.manifest import (
    MANIFEST,
    BundleError,
    manifest_config,
    read_manifest,
    sha256_file,
    verified_file,
)
from vqedge.runtime.providers import (
    CPU,
    ProviderList,
    lookup_providers,
    make_session,
    provider_names,
    resolve_providers,
)
from vqedge.runtime.tiling import TILE_ABOVE, decode_tiled, encode_tiled
from vqedge.runtime.tokens import TokenFile, load_tokens, save_tokens

BUNDLES_DIR = Path(__file__).parent / "bundles"
# latents per quantizer call: 4 MiB of scores against a codebook of 1024 codes
LOOKUP_LATENTS = 1024
DEFAULT_BUNDLE = "vqvae-f4"
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
# largest image side accepted by the untiled methods (tiled ones take any size)
DEFAULT_MAX_SIDE = 4096
# providers whose outputs can stay in CUDA memory between sessions (IO binding)
CUDA_DEVICE = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def cpu_signature() -> str:
    """The machine and, on Linux, the CPU's model and instruction-set flags."""
    sig = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            lines = [ln for ln in fh if ln.startswith(("model name", "flags"))][:2]
        sig += "".join(lines)
    except OSError:
        sig += platform.processor()
    return sig


def list_bundles() -> list[str]:
    """Names of the bundles shipped inside the package."""
    if not BUNDLES_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / "manifest.json").is_file())


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


def default_session_options(threads: int | None = None) -> ort.SessionOptions:
    """The session options ``Tokenizer.load`` uses unless given its own.

    Parameters
    ----------
    threads : int, optional
        Intra-op threads per session (default: onnxruntime's choice).
    """
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # A tokenizer runs several sessions one after another; threads that spin after a run
    # steal the cores from the next session (encode -> quantize -> decode took 255 ms with
    # spinning, 158 ms without, at 256x256 on 2 cores).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # one shared CPU arena, grown by request: less peak memory at the same speed
    use_shared_arena(opts)
    return opts


class Tokenizer:
    """Image <-> token map with an exported bundle, on onnxruntime.

    Images go in as file paths, PIL images, uint8 [H, W, 3] / [N, H, W, 3] arrays, or
    float32 [N, 3, H, W] arrays in [-1, 1]. A size that is not a multiple of f is edge-padded
    at the bottom and right, and reconstructions are cropped back.

    A multi-scale (VAR) bundle loads as a MultiScaleTokenizer, the same API with one token
    map per scale (vqedge.runtime.multiscale).
    """

    # the scales of a multi-scale bundle (one per token map) and the one image side it
    # accepts; a single-scale bundle has none and takes any size
    patch_nums: tuple[int, ...] = ()
    resolution: int | None = None

    def __init__(
        self,
        root: Path,
        manifest: dict[str, Any],
        providers: str | ProviderList,
        precision: str,
        options: ort.SessionOptions,
        strict: bool,
        max_side: int,
        cache_dir: Path | None = None,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.config: VQVAEConfig = manifest_config(manifest)
        self.f = self.config.downsample_factor
        self.codebook_size = self.config.codebook_size
        self.precision = precision
        self.max_side = max_side
        self._providers = resolve_providers(providers, precision)
        self._lookup_providers = lookup_providers(providers, self._providers)
        self._options = options
        self._cache_dir = cache_dir
        self._strict = strict
        self._variant = manifest["variants"]["fp32" if precision == "bf16" else precision]
        self._sessions: dict[str, ort.InferenceSession] = {}
        self._files: dict[str, str] = {}  # graph -> the bundle file its session runs
        self._codebook: np.ndarray | None = None
        # identity of the bundle, written into token files
        self.bundle_sha256 = sha256_file(root / MANIFEST)
        # Fail at load, not at first use, when a provider asked for does not run.
        self._session("encoder")
        # On a GPU, keep the latent on the device between encoder and quantizer.
        self.io_binding = provider_names(self._providers)[0] in CUDA_DEVICE

    @classmethod
    def load(
        cls,
        bundle: str | Path | None = None,
        providers: str | ProviderList = "auto",
        precision: str = "fp32",
        threads: int | None = None,
        strict: bool = True,
        session_options: ort.SessionOptions | None = None,
        max_side: int = DEFAULT_MAX_SIDE,
        cache_dir: str | Path | None = None,
    ) -> Tokenizer:
        """Load a bundle.

        Parameters
        ----------
        bundle : str or Path, optional
            A bundle folder, or the name of a shipped bundle (``list_bundles()``); None loads
            the shipped default.
        providers : "auto", a provider name, or a list of names / (name, options) pairs
            "auto" takes the best available of TensorRT, CUDA, ROCm, DirectML, CoreML,
            OpenVINO, then the CPU provider. A list is passed to onnxruntime as it is.
        precision : {"fp32", "fp16", "bf16", "int8"}
            The bundle variant to run. bf16 runs the fp32 graphs at bf16 on the OpenVINO
            provider.
        threads : int, optional
            Intra-op threads per session (default: onnxruntime's choice). Idle threads do
            not spin, so the sessions of one tokenizer, or several tokenizers in one
            process, do not steal each other's cores.
        strict : bool
            Raise when a provider that was asked for does not run (else warn loudly).
        session_options : onnxruntime.SessionOptions, optional
            Used as given (``threads`` then does not apply).
        max_side : int
            Largest image side the untiled methods accept.
        cache_dir : str or Path, optional
            Keep onnxruntime's optimized graphs here and load them on later runs (faster
            start). Entries are keyed by bundle, graph, provider, onnxruntime version and
            CPU, since an optimized graph is only valid where it was made.

        Raises
        ------
        BundleError
            Missing bundle, tampered or missing file, a newer format, an absent variant.
        ProviderError
            With ``strict``, a provider that was asked for does not run.
        """
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        root = bundle_path(bundle)
        # Each file's sha256 is checked when it is first read (verified_file): hashing the
        # whole bundle here took 29 ms of a 0.3 s cold start, mostly for unused variants.
        manifest = read_manifest(root, verify=False)
        variant = "fp32" if precision == "bf16" else precision
        if variant not in manifest["variants"]:
            raise BundleError(
                f"bundle {root.name} has no {variant} variant (it has "
                f"{sorted(manifest['variants'])}); export it with --precisions {variant}"
            )
        v = manifest["variants"][variant]
        graphs = [*v["graphs"].values(), *v.get("cpu_graphs", {}).values()]
        for rel in [manifest["codebook"]["file"], *(g["file"] for g in graphs)]:
            if not (root / rel).is_file():
                raise BundleError(f"bundle file {rel} is missing from {root}")
        if session_options is None:
            session_options = default_session_options(threads)
        cache = Path(cache_dir) if cache_dir is not None else None
        if cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
        if manifest.get("kind") == "multi-scale" and cls is Tokenizer:
            from vqedge.runtime.multiscale import MultiScaleTokenizer

            cls = MultiScaleTokenizer
        return cls(root, manifest, providers, precision, session_options, strict, max_side, cache)

    # -- sessions -------------------------------------------------------------------------

    def _session(self, graph: str) -> ort.InferenceSession:
        sess = self._sessions.get(graph)
        if sess is None:
            providers = self._lookup_providers if graph == "quantizer" else self._providers
            rel = self._files[graph] = self.graph_file(graph, providers)
            # onnxruntime names a profile by its prefix and the second it started: one prefix
            # per graph, or sessions started within a second write the same file
            prefix = self._options.profile_file_prefix
            if self._options.enable_profiling:
                self._options.profile_file_prefix = f"{prefix}-{graph}"
            try:
                if self._cache_dir is None:
                    sess = self._verified_session(rel, providers, self._options)
                else:
                    sess = self._cached_session(rel, providers)
            finally:
                self._options.profile_file_prefix = prefix
            self._sessions[graph] = sess
        return sess

    @property
    def _fused_runs_alike(self) -> bool:
        """Whether the fused graph runs as the three graphs would: the same providers for the
        lookup and the decoder's plain form (else reconstruct runs the three in turn, which
        on the CPU provider measured as fast: 140.9 against 140.5 ms at fp32, 256x256)."""
        plain = self._variant["graphs"]["decoder"]["file"]
        return self._lookup_providers == self._providers and self.graph_file("decoder") == plain

    def graph_file(self, graph: str, providers: ProviderList | None = None) -> str:
        """The bundle file that runs ``graph`` on ``providers`` (default: the tokenizer's).

        Where onnxruntime's CPU provider comes first and the variant has ``cpu_graphs``, its
        form for that provider (the decoder's ConvTransposes as phase convolutions: int8
        kernels and no column buffer there; OpenVINO and GPUs run the plain form).
        """
        providers = self._providers if providers is None else providers
        alt = self._variant.get("cpu_graphs", {}).get(graph)
        if alt is not None and provider_names(providers)[0] == CPU:
            return alt["file"]
        return self._variant["graphs"][graph]["file"]

    def _verified_session(
        self, rel: str, providers: ProviderList, options: ort.SessionOptions
    ) -> ort.InferenceSession:
        model = verified_file(self.root, self.manifest, rel)
        return make_session(model, providers, options, self._strict, self.precision)

    def _cached_session(self, rel: str, providers: ProviderList) -> ort.InferenceSession:
        """Load the optimized graph from the cache, or make it there on this first run."""
        machine = hashlib.sha256(cpu_signature().encode()).hexdigest()[:12]
        first = provider_names(providers)[0].replace("ExecutionProvider", "")
        variant, stem = Path(rel).parent.name, Path(rel).stem  # e.g. fp32, decoder_cpu
        key = f"{self.bundle_sha256[:12]}-{variant}-{stem}-{first}-ort{ort.__version__}"
        cached = self._cache_dir / f"{key}-{machine}.onnx"
        opts = self._options
        saved = opts.optimized_model_filepath, opts.graph_optimization_level
        saved_log = opts.log_severity_level
        # the key above already holds what onnxruntime warns about when it saves one
        opts.log_severity_level = 3
        try:
            if cached.is_file():  # made from this bundle's verified file (the key has its sha)
                opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
                return make_session(cached, providers, opts, self._strict, self.precision)
            opts.optimized_model_filepath = str(cached)
            return self._verified_session(rel, providers, opts)
        finally:
            opts.optimized_model_filepath, opts.graph_optimization_level = saved
            opts.log_severity_level = saved_log

    def end_profiling(self) -> dict[str, Path]:
        """Stop onnxruntime's profiler in every open session (``enable_profiling`` in the
        session options) -> {graph: the JSON trace it wrote}."""
        return {g: Path(s.end_profiling()) for g, s in self._sessions.items()}

    def _run(self, graph: str, name: str, x: np.ndarray) -> list[np.ndarray]:
        return self._session(graph).run(None, {name: x})

    # -- facts ----------------------------------------------------------------------------

    @property
    def codebook(self) -> np.ndarray:
        """The codebook, float32 [K, C]."""
        if self._codebook is None:
            rel = self.manifest["codebook"]["file"]
            self._codebook = np.load(verified_file(self.root, self.manifest, rel))
        return self._codebook

    @property
    def info(self) -> dict[str, Any]:
        """Model facts, the precision, and the providers actually running each session."""
        return {
            "bundle": str(self.root),
            "name": self.manifest.get("name"),
            "kind": self.manifest.get("kind", "single-scale"),
            "downsample_factor": self.f,
            "codebook_size": self.codebook_size,
            "code_dim": self.config.code_dim,
            "bits_per_pixel": self.config.bits_per_pixel,
            "precision": self.precision,
            "providers_requested": provider_names(self._providers),
            "providers_in_use": {g: s.get_providers() for g, s in self._sessions.items()},
            "graph_files": dict(self._files),
            "io_binding": self.io_binding,
            "quality": self._variant.get("quality"),
        }

    def token_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) of the token map of an H x W image."""
        return math.ceil(height / self.f), math.ceil(width / self.f)

    # -- the stages -----------------------------------------------------------------------

    def _prepare(self, images: Any) -> tuple[np.ndarray, tuple[int, int]]:
        x = to_batch(images, self.max_side)
        size = (x.shape[2], x.shape[3])
        return pad_to_multiple(x, self.f), size

    def encode_latent(self, images: Any) -> np.ndarray:
        """Images -> latent float32 [B, C, h, w] (the encoder graph alone)."""
        x, _ = self._prepare(images)
        return self._run("encoder", "image", x)[0]

    def quantize(self, latent: np.ndarray) -> np.ndarray:
        """Latent [B, C, h, w] -> indices int64 [B, h, w] (the quantizer graph alone).

        Run over blocks of latent rows: the lookup's scores are [latents, K] floats, 16 MiB
        for one 256x256 image and 128 MiB for eight; blocks of LOOKUP_LATENTS keep them at
        4 MiB, and were faster too (batch 8 at 256x256: 22 against 27 ms, peak RSS 83
        against 344 MiB). Every latent's token is its own, so the blocks change nothing.
        """
        z = np.ascontiguousarray(latent, dtype=np.float32)
        C = self.config.code_dim
        if z.ndim != 4 or z.shape[1] != C:
            raise ValueError(f"latent must be float [B, {C}, h, w], got shape {z.shape}")
        B, _, h, w = z.shape
        if B * h * w <= LOOKUP_LATENTS:
            return self._run("quantizer", "latent", z)[0]
        rows = max(1, LOOKUP_LATENTS // w)
        idx = np.empty((B, h, w), np.int64)
        for b in range(B):
            for r in range(0, h, rows):
                block = np.ascontiguousarray(z[b : b + 1, :, r : r + rows])
                idx[b, r : r + rows] = self._run("quantizer", "latent", block)[0][0]
        return idx

    def encode(self, images: Any) -> np.ndarray:
        """Images -> token indices int64 [B, h, w], h = ceil(H / f), w = ceil(W / f)."""
        x, _ = self._prepare(images)
        return self._encode_prepared(x)

    def _encode_prepared(self, x: np.ndarray) -> np.ndarray:
        if self.io_binding:
            return self._encode_bound(x)
        return self.quantize(self._run("encoder", "image", x)[0])

    def _encode_bound(self, x: np.ndarray) -> np.ndarray:
        """Encoder -> quantizer with the latent left on the device between the two graphs."""
        device = "cuda" if provider_names(self._providers)[0] in CUDA_DEVICE else "cpu"
        enc, quant = self._session("encoder"), self._session("quantizer")
        b1 = enc.io_binding()
        b1.bind_cpu_input("image", x)
        b1.bind_output("latent", device)
        enc.run_with_iobinding(b1)
        latent = b1.get_outputs()[0]
        b2 = quant.io_binding()
        b2.bind_ortvalue_input("latent", latent)
        b2.bind_output("indices", "cpu")
        quant.run_with_iobinding(b2)
        return b2.copy_outputs_to_cpu()[0]

    def decode(
        self, indices: Any, output: str = "uint8", size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Token indices [B, h, w] (or [h, w]) -> images.

        Parameters
        ----------
        output : {"uint8", "float"}
            uint8 [B, H, W, 3], or float32 [B, 3, H, W] in [-1, 1].
        size : (H, W), optional
            Crop to this original image size (default: the full h*f x w*f).
        """
        idx = check_indices(indices, self.codebook_size)
        img = self._run("decoder", "indices", idx)[0]
        return self._finish(img, size, output)

    def reconstruct(self, images: Any, output: str = "uint8") -> tuple[np.ndarray, np.ndarray]:
        """Images -> (reconstructions at the input size, indices [B, h, w]): the fused graph
        where it runs as the three graphs would, else the three in turn."""
        x, size = self._prepare(images)
        if not self._fused_runs_alike:
            idx = self._encode_prepared(x)
            return self.decode(idx, output=output, size=size), idx
        idx, img = self._run("tokenizer", "image", x)
        return self._finish(img, size, output), idx

    @staticmethod
    def _finish(img: np.ndarray, size: tuple[int, int] | None, output: str) -> np.ndarray:
        if output not in ("uint8", "float"):
            raise ValueError(f"output must be 'uint8' or 'float', got {output!r}")
        if size is not None:
            img = img[:, :, : size[0], : size[1]]
        return float_to_uint8(img) if output == "uint8" else np.ascontiguousarray(img)

    # -- any size, bounded memory (see vqedge.runtime.tiling) -----------------------------

    def encode_tiled(self, image: Any, tile: int = 512, overlap: int = 64) -> np.ndarray:
        """One image of any size -> token map int64 [1, h, w], tile by tile."""
        return encode_tiled(self, to_uint8_image(image), tile, overlap)

    def decode_tiled(
        self,
        indices: Any,
        tile: int = 512,
        overlap: int = 64,
        size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """One token map [1, h, w] -> uint8 image [1, H, W, 3], tile by tile."""
        return decode_tiled(self, check_indices(indices, self.codebook_size), tile, overlap, size)

    def encode_image(self, image: Any) -> tuple[np.ndarray, np.ndarray]:
        """One image of any size -> (indices [1, h, w], the uint8 image tokenized), tile by
        tile above TILE_ABOVE pixels: what the CLI and dataset tokenization run per file."""
        img = to_uint8_image(image)
        if max(img.shape[:2]) > TILE_ABOVE:
            return self.encode_tiled(img), img
        return self.encode(img), img

    def reconstruct_image(self, image: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image of any size -> (uint8 reconstruction [1, H, W, 3], indices [1, h, w],
        the uint8 image tokenized), tile by tile above TILE_ABOVE pixels."""
        img = to_uint8_image(image)
        if max(img.shape[:2]) > TILE_ABOVE:
            recon, idx = self.reconstruct_tiled(img)
            return recon, idx, img
        recon, idx = self.reconstruct(img)
        return recon, idx, img

    def decode_file(self, token_file: TokenFile) -> np.ndarray:
        """What a single-scale .vqt holds -> uint8 [B, H, W, 3], cropped to its image_size,
        tile by tile above TILE_ABOVE pixels."""
        idx = token_file.indices
        size = tuple(token_file.image_size) if token_file.image_size else None
        if max(idx.shape[1:]) * self.f <= TILE_ABOVE:
            return self.decode(idx, size=size)
        return np.concatenate(
            [self.decode_tiled(idx[b : b + 1], size=size) for b in range(len(idx))]
        )

    def describe_tokens(self, tokens: np.ndarray) -> str:
        """A token map [B, h, w] in words, e.g. "64x48 token map"."""
        t = np.asarray(tokens)
        return f"{t.shape[-2]}x{t.shape[-1]} token map"

    @property
    def preprocessing(self) -> str | None:
        """None: images of any size are taken as they are (edge-padded to a multiple of f)."""
        return None

    def describe(self) -> list[tuple[str, str]]:
        """Label / value rows for ``vqedge info``."""
        info = self.info
        return [
            ("kind", info["kind"]),
            (
                "model",
                f"f={self.f}, K={self.codebook_size}, code dim {self.config.code_dim}, "
                f"{self.config.bits_per_pixel:.3f} bits per pixel",
            ),
            ("precision", self.precision),
            ("graphs", ", ".join(self.graph_file(g) for g in ("encoder", "quantizer", "decoder"))),
            ("providers", ", ".join(f"{g}: {p[0]}" for g, p in info["providers_in_use"].items())),
        ]

    def reconstruct_tiled(
        self, image: Any, tile: int = 512, overlap: int = 64
    ) -> tuple[np.ndarray, np.ndarray]:
        """One image of any size -> (uint8 reconstruction [1, H, W, 3], indices [1, h, w])."""
        img = to_uint8_image(image)
        idx = encode_tiled(self, img, tile, overlap)
        return decode_tiled(self, idx, tile, overlap, size=img.shape[:2]), idx

    # -- token files (see vqedge.runtime.tokens) -----------------------------------------

    def save_tokens(
        self, path: str | Path, indices: np.ndarray, image_size: tuple[int, int] | None = None
    ) -> int:
        """Write a token map [B, h, w] as a .vqt file tied to this bundle; returns its bytes."""
        return save_tokens(
            path, indices, self.codebook_size, self.bundle_sha256, image_size=image_size
        )

    def load_tokens(self, path: str | Path, force: bool = False) -> TokenFile:
        """Read a .vqt file; tokens of another bundle (or another K) are refused unless
        ``force`` (a different K is refused always)."""
        tf = load_tokens(path, bundle_sha256=self.bundle_sha256, force=force)
        if tf.codebook_size != self.codebook_size:
            raise ValueError(
                f"{path} holds indices for K={tf.codebook_size}, the bundle has "
                f"K={self.codebook_size}"
            )
        return tf

    # -- VAR-style token lists ------------------------------------------------------------

    def img_to_idxBl(self, images: Any) -> list[np.ndarray]:
        """Images -> idx_Bl: one int64 [B, h*w] array per scale (one scale here)."""
        idx = self.encode(images)
        return [idx.reshape(idx.shape[0], -1)]

    def idxBl_to_img(
        self, idx_Bl: list[np.ndarray], hw: tuple[int, int] | None = None, output: str = "uint8"
    ) -> np.ndarray:
        """idx_Bl -> images; the last scale is decoded ([B, h, w], or [B, l] with ``hw``;
        a [B, l] without ``hw`` is taken as a square map)."""
        if not idx_Bl:
            raise ValueError("idx_Bl must hold at least one scale")
        idx = np.asarray(idx_Bl[-1])
        if idx.ndim == 2:
            idx = idx.reshape(idx.shape[0], *token_map_hw(idx.shape[1], hw))
        return self.decode(idx, output=output)

    def idxBl_to_var_input(self, idx_Bl: list[np.ndarray]) -> np.ndarray:
        """idx_Bl -> code embeddings of every token as one sequence, float32 [B, L, C]."""
        if not idx_Bl:
            raise ValueError("idx_Bl must hold at least one scale")
        flat = np.concatenate([np.asarray(i).reshape(len(i), -1) for i in idx_Bl], axis=1)
        flat = check_indices(flat[:, None, :], self.codebook_size)[:, 0]  # [B, L]
        return self.codebook[flat]

    def __repr__(self) -> str:
        return (
            f"Tokenizer({self.root.name}, f={self.f}, K={self.codebook_size}, "
            f"precision={self.precision}, providers={provider_names(self._providers)})"
        )


def load(
    bundle: str | Path | None = None,
    providers: str | ProviderList = "auto",
    precision: str = "fp32",
    threads: int | None = None,
    strict: bool = True,
    session_options: ort.SessionOptions | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
    cache_dir: str | Path | None = None,
) -> Tokenizer:
    """Load a bundle as the tokenizer of its kind (see ``Tokenizer.load``)."""
    return Tokenizer.load(
        bundle, providers, precision, threads, strict, session_options, max_side, cache_dir
    )
