"""The base class of every tokenizer kind: what commands, dataset tokenization and the demo
may call on any bundle (``vqedge.runtime.load`` returns a subclass of it)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vqedge.runtime import verify as checks
from vqedge.runtime.config import BundleConfig
from vqedge.runtime.images import float_to_uint8
from vqedge.runtime.limits import default_max_side, size_advice
from vqedge.runtime.manifest import BundleError
from vqedge.runtime.providers import provider_names
from vqedge.runtime.tokens import TokenFile, load_tokens

if TYPE_CHECKING:
    from vqedge.runtime.plan import PrecisionPlan
    from vqedge.runtime.session import BundleSessions
    from vqedge.runtime.verdict import Verdict


class TokenizerBase(ABC):
    """What every tokenizer kind offers: the session core's facts under their public names,
    token-file reading, and the methods the commands, dataset tokenization and the demo call
    on any kind (abstract here; each kind says what its tokens are). Not used on its own."""

    KIND: str  # the manifest kind a subclass runs

    def __init__(self, sessions: BundleSessions, max_side: int | None = None) -> None:
        if sessions.kind != self.KIND:
            raise BundleError(
                f"bundle {sessions.root.name} is {sessions.kind}, not {self.KIND}: open it "
                "with vqedge.runtime.load()"
            )
        self.sessions = sessions
        self.max_side = default_max_side(sessions.manifest) if max_side is None else max_side

    @property
    def size_advice(self) -> str:
        """What to do with an image or token map above ``max_side`` (ends error messages)."""
        return size_advice(self.manifest, self.max_side)

    # -- what every kind offers -----------------------------------------------------------

    @abstractmethod
    def token_shape(self, height: int, width: int) -> tuple[int, int]:
        """The shape of one image's tokens for an H x W image."""

    @abstractmethod
    def encode_latent(self, images: Any) -> np.ndarray:
        """Images -> latent float32 [B, C, h, w] (the encoder graph alone)."""

    @abstractmethod
    def quantize(self, latent: np.ndarray) -> np.ndarray:
        """Latent -> tokens (the quantizer graph alone)."""

    @abstractmethod
    def encode(self, images: Any) -> np.ndarray:
        """Images -> tokens."""

    @abstractmethod
    def decode(
        self, tokens: Any, output: str = "uint8", size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """Tokens -> images (uint8 [B, H, W, 3], or float32 [B, 3, H, W] in [-1, 1])."""

    @abstractmethod
    def reconstruct(self, images: Any, output: str = "uint8") -> tuple[np.ndarray, np.ndarray]:
        """Images -> (reconstructions, tokens)."""

    @abstractmethod
    def encode_image(self, image: Any) -> tuple[np.ndarray, np.ndarray]:
        """One image file or array of any size -> (tokens, the uint8 image tokenized)."""

    @abstractmethod
    def reconstruct_image(self, image: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image of any size -> (uint8 reconstruction, tokens, the image tokenized)."""

    @abstractmethod
    def decode_file(self, token_file: TokenFile) -> np.ndarray:
        """What a .vqt file of this kind holds -> uint8 images [B, H, W, 3]."""

    @abstractmethod
    def save_tokens(
        self, path: str | Path, tokens: Any, image_size: tuple[int, int] | None = None
    ) -> int:
        """Write tokens as a .vqt file tied to this bundle; returns its bytes."""

    @abstractmethod
    def describe_tokens(self, tokens: Any) -> str:
        """Tokens in words, for messages."""

    @property
    @abstractmethod
    def preprocessing(self) -> str | None:
        """How encode_image / reconstruct_image adapt other sizes (None: taken as they are)."""

    @abstractmethod
    def describe(self) -> list[tuple[str, str]]:
        """Label / value rows for ``vqedge info``."""

    @abstractmethod
    def img_to_idxBl(self, images: Any) -> list[np.ndarray]:
        """Images -> idx_Bl: one int64 [B, l] array per scale, coarse to fine."""

    @abstractmethod
    def idxBl_to_img(self, idx_Bl: list[np.ndarray], *args: Any, **kwargs: Any) -> Any:
        """idx_Bl -> images."""

    @abstractmethod
    def idxBl_to_var_input(self, idx_Bl: list[np.ndarray]) -> np.ndarray:
        """idx_Bl -> the sequence an autoregressive model over the tokens reads."""

    def token_maps(self, tokens: Any) -> list[np.ndarray]:
        """One image's tokens (what ``encode_image`` gives, [1, ...]) as its 2-D token maps,
        coarse to fine; a kind with one token grid (the default here) has one map [h, w]."""
        t = np.asarray(tokens)
        if t.ndim < 2 or t.size != t.shape[-2] * t.shape[-1]:
            raise ValueError(f"expected one image's token map [1, h, w], got shape {t.shape}")
        return [t.reshape(t.shape[-2:])]

    @property
    def token_layout(self) -> dict[str, Any]:
        """The token layout as JSON-able facts (dataset shards, the demo): the ``kind``, and
        the sides of each image's token maps where they are fixed (``map_sides``, coarse to
        fine; empty when they follow the image size)."""
        return {"kind": self.KIND, "map_sides": []}

    # -- facts ----------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The bundle folder."""
        return self.sessions.root

    @property
    def manifest(self) -> dict[str, Any]:
        """The bundle's manifest."""
        return self.sessions.manifest

    @property
    def config(self) -> BundleConfig:
        """What the bundle's tokens are: f, K, C, the scales (not the architecture)."""
        return self.sessions.config

    @property
    def f(self) -> int:
        """Image pixels per token along each side."""
        return self.sessions.config.downsample_factor

    @property
    def codebook_size(self) -> int:
        """K, the number of codes."""
        return self.sessions.config.codebook_size

    @property
    def plan(self) -> PrecisionPlan:
        """The precision each stage runs at (see ``BundleSessions.plan``)."""
        return self.sessions.plan

    @property
    def verification(self) -> Verdict | None:
        """The on-device check's verdict on the plan (None: ``load(verify=False)``)."""
        return self.sessions.verification

    @property
    def bundle_sha256(self) -> str:
        """sha256 of the bundle's manifest.json, written into token files."""
        return self.sessions.bundle_sha256

    @property
    def codebook(self) -> np.ndarray:
        """The codebook, float32 [K, C]."""
        return self.sessions.codebook

    @property
    def info(self) -> dict[str, Any]:
        """Model facts, the precision that runs and the providers running each open session."""
        return self.sessions.info()

    def verify(self, encoder_tier: str = "tokens", cache_dir: str | Path | None = None) -> Verdict:
        """Judge each stage of the plan on the bundle's check set on this device now.

        Parameters
        ----------
        encoder_tier : {"tokens", "pixels"}
            The tier the encoder is held to.
        cache_dir : str or Path, optional
            The cache root whose judgements the new ones replace (default: ``load``'s).

        Returns
        -------
        vqedge.runtime.verdict.Verdict
            Each stage's figure, bar and whether it holds (``skipped`` where the bundle
            carries no check set).
        """
        return checks.check_plan(self, encoder_tier, cache_dir)

    def graph_file(self, graph: str) -> str:
        """The bundle file that runs ``graph`` on this tokenizer's providers."""
        return self.sessions.graph_file(graph)

    def end_profiling(self) -> dict[str, Path]:
        """Stop onnxruntime's profiler in every open session (``enable_profiling`` in the
        session options) -> {graph: the JSON trace it wrote}."""
        return self.sessions.end_profiling()

    def load_tokens(
        self, path: str | Path, force: bool = False, name: str | None = None
    ) -> TokenFile:
        """Read a .vqt file made for this bundle. Every header field is checked against the
        bundle (K always, the sizes this tokenizer decodes) before the payload is read;
        tokens of another bundle are refused unless ``force``. ``name`` is what errors call
        the file (default: its path)."""
        return load_tokens(
            path,
            bundle_sha256=self.bundle_sha256,
            force=force,
            codebook_size=self.codebook_size,
            name=name,
            **self._token_file_limits(),
        )

    def _token_file_limits(self) -> dict[str, Any]:
        """The sizes a token file for this tokenizer may declare (``tokens.load_tokens``)."""
        return {"max_image_side": self.max_side, "max_map_side": -(-self.max_side // self.f)}

    def _describe(self, graphs: tuple[str, ...]) -> list[tuple[str, str]]:
        """The rows every kind shows; its sessions are opened so the providers are the ones
        that run."""
        for g in graphs:
            self.sessions.session(g)
        info = self.info
        cfg = self.config
        return [
            ("bundle", f"{self.root} ({info['name']})"),
            ("kind", self.sessions.kind),
            (
                "model",
                f"f={self.f}, K={self.codebook_size}, code dim {cfg.code_dim}, "
                f"{cfg.bits_per_pixel:.3f} bits per pixel",
            ),
            ("precision", self.plan.describe()),
            ("graphs", ", ".join(info["graph_files"][g] for g in graphs)),
            (
                "providers",
                ", ".join(f"{g} on {info['providers_in_use'][g][0]}" for g in graphs),
            ),
            (
                "verified",
                "not checked (load(verify=False))"
                if self.verification is None
                else self.verification.describe(),
            ),
        ]

    @staticmethod
    def _finish(img: np.ndarray, size: tuple[int, int] | None, output: str) -> np.ndarray:
        if output not in ("uint8", "float"):
            raise ValueError(f"output must be 'uint8' or 'float', got {output!r}")
        if size is not None:
            img = img[:, :, : size[0], : size[1]]
        return float_to_uint8(img) if output == "uint8" else np.ascontiguousarray(img)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.root.name}, f={self.f}, K={self.codebook_size}, "
            f"precision={self.plan}, providers={provider_names(self.sessions.providers)})"
        )
