"""The model configs: ``VQVAEConfig``, the architecture the trainer builds (and the manifest
records, so that a bundle rebuilds its PyTorch model), and ``BundleConfig``, the facts about
its tokens a bundle gives the runtime (f, K, C, the scales), read from the manifest.

Torch-free on purpose, so that the runtime reads the same facts the trainer wrote.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_FACTORS = (4, 8, 16)


class TokenFacts:
    """What both configs derive from f, K and the scales (``downsample_factor``,
    ``codebook_size``, ``patch_nums``)."""

    downsample_factor: int
    codebook_size: int
    patch_nums: tuple[int, ...]

    @property
    def resolution(self) -> int | None:
        """The one image side a multi-scale tokenizer accepts (pn[-1] * f); None: any size."""
        return self.patch_nums[-1] * self.downsample_factor if self.patch_nums else None

    @property
    def scale_offsets(self) -> tuple[int, ...]:
        """Where each scale starts in the concatenated [B, L] tokens, then L itself."""
        offsets = [0]
        for pn in self.patch_nums:
            offsets.append(offsets[-1] + pn * pn)
        return tuple(offsets)

    @property
    def bits_per_token(self) -> int:
        """Whole bits that hold one index in [0, K)."""
        return max(1, math.ceil(math.log2(self.codebook_size)))

    @property
    def bits_per_pixel(self) -> float:
        """log2(K) x tokens per image pixel: log2(K) / f^2, or log2(K) * L / side^2 for scales."""
        if self.patch_nums:
            return math.log2(self.codebook_size) * self.scale_offsets[-1] / self.resolution**2
        return math.log2(self.codebook_size) / self.downsample_factor**2

    def split_scales(self, idx_BL: Any) -> list[Any]:
        """Concatenated tokens [B, L] (numpy or torch) -> one [B, pn*pn] slice per scale."""
        o = self.scale_offsets
        return [idx_BL[:, a:b] for a, b in zip(o, o[1:])]


@dataclass(frozen=True)
class VQVAEConfig(TokenFacts):
    """Architecture and tokenization facts of a configurable VQ-VAE.

    The downsampling factor ``f`` is ``2 ** (len(channel_mult) - 1)``: each level after the
    first halves the resolution.
    """

    # image channels (RGB)
    in_channels: int = 3
    # width of the first level; level i is base_channels * channel_mult[i] wide
    base_channels: int = 32
    # one entry per resolution level; len(channel_mult) - 1 stride-2 steps set f
    channel_mult: tuple[int, ...] = (1, 2, 4)
    # residual blocks per level (encoder and decoder alike)
    num_res_blocks: int = 1
    # extra residual blocks at the latent resolution, on each side of the quantizer
    num_mid_blocks: int = 2
    # K, the number of codes
    codebook_size: int = 1024
    # C, the dimension of one code
    code_dim: int = 16
    # weight of the commitment term of the VQ loss
    commitment_cost: float = 0.25
    # codebook learnt by exponential moving averages instead of gradients
    ema: bool = True
    # decay of the EMA codebook and of the usage counts
    ema_decay: float = 0.99
    # a code whose EMA usage count falls below this is restarted from encoder outputs
    dead_code_threshold: float = 1.0
    # look codes up by direction (unit-length latents and codes, cosine similarity)
    l2_normalize: bool = False
    # VAR's next-scale token maps: side of each scale's map, coarse to fine, the last one the
    # latent side; empty for a single-scale tokenizer. Fixes the image side to pn[-1] * f.
    patch_nums: tuple[int, ...] = ()
    # VAR's Phi blend h * (1 - r) + conv(h) * r after upsampling each scale's codes
    quant_resi: float = 0.5
    # Phi convolutions shared across scales by nearest tick (VAR: 4)
    num_phi: int = 4
    # finite scalar quantization instead of a codebook: levels of each latent channel
    # (e.g. [8, 5, 5, 5]); sets code_dim to their count and codebook_size to their product
    fsq_levels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "patch_nums", tuple(int(p) for p in self.patch_nums))
        object.__setattr__(self, "fsq_levels", tuple(int(v) for v in self.fsq_levels))
        if self.fsq_levels:
            if self.patch_nums or any(v < 3 for v in self.fsq_levels):
                raise ValueError(
                    f"config fsq_levels {list(self.fsq_levels)}: each level must be at least "
                    "3, and FSQ does not combine with patch_nums"
                )
            object.__setattr__(self, "codebook_size", math.prod(self.fsq_levels))
            object.__setattr__(self, "code_dim", len(self.fsq_levels))
        ints = {
            "in_channels": self.in_channels,
            "base_channels": self.base_channels,
            "codebook_size": self.codebook_size,
            "code_dim": self.code_dim,
        }
        for name, value in ints.items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"config {name} must be a positive integer, got {value!r}")
        if self.num_res_blocks < 0 or self.num_mid_blocks < 0:
            raise ValueError("config num_res_blocks and num_mid_blocks must be >= 0")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"config channel_mult must be positive, got {self.channel_mult}")
        if self.downsample_factor not in SUPPORTED_FACTORS:
            raise ValueError(
                f"config channel_mult {self.channel_mult} gives f={self.downsample_factor}; "
                f"expected f in {SUPPORTED_FACTORS} (3, 4 or 5 levels)"
            )
        if self.codebook_size < 2:
            raise ValueError("config codebook_size must be at least 2")
        if not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"config ema_decay must be in (0, 1), got {self.ema_decay}")
        pns = self.patch_nums
        if pns:
            if pns[0] < 1 or any(a >= b for a, b in zip(pns, pns[1:])):
                raise ValueError(
                    f"config patch_nums must be positive and strictly increasing, got {pns}"
                )
            if self.l2_normalize:
                raise ValueError(
                    "config l2_normalize cannot be combined with patch_nums: residual "
                    "quantization needs the latent's magnitude"
                )
            if self.num_phi < 1:
                raise ValueError(f"config num_phi must be at least 1, got {self.num_phi}")

    @property
    def is_multiscale(self) -> bool:
        """True for a VAR-style tokenizer with one token map per scale."""
        return bool(self.patch_nums)

    @property
    def downsample_factor(self) -> int:
        """f: image pixels per token along each side."""
        return 2 ** (len(self.channel_mult) - 1)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["patch_nums"] = list(self.patch_nums)
        # only where set, so that codebook bundles' manifests stay as they were
        if self.fsq_levels:
            d["fsq_levels"] = list(self.fsq_levels)
        else:
            del d["fsq_levels"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VQVAEConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> VQVAEConfig:
        try:
            d = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"model config not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"model config {path} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"model config {path} must hold a JSON object")
        return cls.from_dict(d)


@dataclass(frozen=True)
class BundleConfig(TokenFacts):
    """What a bundle tells the runtime about its tokens: no architecture, no training fields.

    Read from the manifest's ``config`` (``vqedge.runtime.manifest.bundle_config``), which
    keeps the layout of the config the model was built from, so that every bundle reads.
    """

    # f: image pixels per token along each side
    downsample_factor: int
    # K, the number of codes
    codebook_size: int
    # C, the dimension of one code (the latent's channels)
    code_dim: int
    # codes looked up by direction (cosine similarity)
    l2_normalize: bool = False
    # next-scale token maps: the side of each scale's map, coarse to fine; empty for one grid
    patch_nums: tuple[int, ...] = ()

    @classmethod
    def of(cls, config: VQVAEConfig) -> BundleConfig:
        """The bundle facts of a model config."""
        return cls(
            downsample_factor=config.downsample_factor,
            codebook_size=config.codebook_size,
            code_dim=config.code_dim,
            l2_normalize=config.l2_normalize,
            patch_nums=config.patch_nums,
        )
