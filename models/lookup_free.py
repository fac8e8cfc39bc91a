"""Lookup-free quantizers: an index is computed from the latent, and its code from the index,
with no codebook to search or store.

- ``LFQ`` (Open-MAGVIT2, MAGVIT-v2): each of C channels is quantized to its sign, the code
  is +-1 per channel and the index is sum_c (z_c > 0) * 2^c, channel 0 the lowest bit.
- ``FSQ`` (finite scalar quantization, vector-quantize-pytorch's semantics): channel c is
  bounded by tanh and rounded to one of ``levels[c]`` values; the index is the mixed-radix
  number of those digits, channel 0 the lowest digit.

Both offer the export surface of a codebook (``indices``, ``embed``, ``project``,
``get_codebook``, ``num_embeddings``, ``embedding_dim``) and ``bundle_config()``, what a
lookup-free bundle's manifest records (``vqedge.runtime.lookup_free`` reads it back). The
integer arithmetic stays in floor division and remainder so that the exported graphs use
no bitwise operators. ``FSQVQVAE`` is vqedge's own VQ-VAE with an FSQ bottleneck.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vqedge.models.vqvae import VQVAE
from vqedge.runtime.config import VQVAEConfig

# vector-quantize-pytorch's FSQ: levels are bounded to (L - 1) * (1 + eps) / 2
FSQ_EPS = 1e-3


class LookupFree(nn.Module):
    """What LFQ and FSQ share: the codebook surface over ``digits`` / ``codes``."""

    # digits per channel (2 for LFQ) and each digit's place value, [C] (``_set_radix``)
    radix: torch.Tensor
    basis: torch.Tensor

    @property
    def num_embeddings(self) -> int:
        return math.prod(int(r) for r in self.radix)

    @property
    def embedding_dim(self) -> int:
        return int(self.radix.numel())

    # the export gate compares indices exactly; a tie is a latent exactly on a boundary
    l2_normalize = False
    unit_lookup = False

    def project(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def digits(self, z: torch.Tensor) -> torch.Tensor:
        """Latent [B, C, h, w] -> digits int64 [B, C, h, w], each in [0, radix_c)."""
        raise NotImplementedError

    def digit_codes(self, digits: torch.Tensor) -> torch.Tensor:
        """Digits float [B, C, h, w] (whole numbers) -> codes float [B, C, h, w]."""
        raise NotImplementedError

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Latent [B, C, h, w] -> indices int64 [B, h, w]."""
        if z.shape[1] != self.embedding_dim:
            raise ValueError(
                f"latent has {z.shape[1]} channels, the quantizer {self.embedding_dim}"
            )
        return (self.digits(z) * self.basis.view(1, -1, 1, 1)).sum(1)

    def embed(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        """Indices [B, h, w] -> codes [B, C, h, w].

        Integer arithmetic alone, so that the exported graph is exact at any K and in every
        variant: r = idx mod (basis_c * radix_c) is digit_c * basis_c plus the lower digits,
        and digit_c counts the multiples k * basis_c (0 < k < radix_c) that r reaches. (An
        integer division exports as a float one, inexact above 2^24 and overflowing fp16.)
        """
        r = torch.remainder(idx_Bhw.long().unsqueeze(1), self.span.view(1, -1, 1, 1))
        steps = self.steps.view(1, self.steps.shape[0], 1, 1, -1)  # [1, C, 1, 1, R - 1]
        # the digits as floats by Where, not Cast: the fp16 conversion mistypes a Cast's output
        digits = torch.where(r.unsqueeze(-1) >= steps, 1.0, 0.0).sum(-1)  # [B, C, h, w]
        return self.digit_codes(digits)

    def _set_radix(self, radix: tuple[int, ...]) -> None:
        """Register ``radix`` (digits per channel) and what indices and codes are computed
        with, all int64 [C] (``steps`` [C, max radix - 1])."""
        basis = [math.prod(radix[:c]) for c in range(len(radix))]
        span = [b * r for b, r in zip(basis, radix)]
        # k * basis_c for 0 < k < radix_c; past radix_c, span_c, which no remainder reaches
        steps = [
            [k * b if k < r else s for k in range(1, max(radix))]
            for b, r, s in zip(basis, radix, span)
        ]
        for name, v in (("radix", radix), ("basis", basis), ("span", span), ("steps", steps)):
            self.register_buffer(name, torch.tensor(v, dtype=torch.int64), persistent=False)

    def get_codebook(self) -> torch.Tensor:
        """Every code, [K, C] (only for checks: 2^18 x 18 floats for Open-MAGVIT2)."""
        idx = torch.arange(self.num_embeddings).view(-1, 1, 1)
        return self.embed(idx)[:, :, 0, 0]

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training: (codes with the straight-through gradient, commitment loss, indices)."""
        with torch.no_grad():
            idx = self.indices(z)
        q = self.quantized(z)
        loss = F.mse_loss(z, q.detach()) if self.training else z.new_zeros(())
        return q, loss, idx

    def quantized(self, z: torch.Tensor) -> torch.Tensor:
        """The codes of ``z`` [B, C, h, w], with the gradient the quantizer trains with."""
        return self.digit_codes(self.digits(z).float())


class LFQ(LookupFree):
    """Sign quantization of ``bits`` channels (Open-MAGVIT2's LFQ at inference).

    Parameters
    ----------
    bits : int
        C, the latent's channels; K = 2^bits.
    factorized_bits : tuple of int
        The two sub-tokens an autoregressive model predicts (Open-MAGVIT2: (9, 9)): the low
        ``factorized_bits[0]`` bits and the rest. Empty: no factorization recorded.
    scale : float
        The code's magnitude (Open-MAGVIT2: 1).
    """

    def __init__(
        self, bits: int, factorized_bits: tuple[int, ...] = (), scale: float = 1.0
    ) -> None:
        super().__init__()
        if not 1 <= bits <= 62:
            raise ValueError(f"LFQ bits must be in [1, 62], got {bits}")
        if factorized_bits and (len(factorized_bits) != 2 or sum(factorized_bits) != bits):
            raise ValueError(
                f"LFQ factorized_bits must be two counts summing to bits={bits}, "
                f"got {list(factorized_bits)}"
            )
        self.bits, self.factorized_bits, self.scale = bits, tuple(factorized_bits), float(scale)
        self._set_radix((2,) * bits)

    def digits(self, z: torch.Tensor) -> torch.Tensor:
        return (z > 0).long()

    def digit_codes(self, digits: torch.Tensor) -> torch.Tensor:
        return (digits * 2.0 - 1.0) * self.scale

    def quantized(self, z: torch.Tensor) -> torch.Tensor:
        q = self.digit_codes(self.digits(z).float())
        return z + (q - z).detach()

    def bundle_config(self) -> dict:
        """The manifest's ``quantizer``: "lfq", bits, factorized_bits and scale."""
        return {
            "quantizer": "lfq",
            "bits": self.bits,
            "factorized_bits": list(self.factorized_bits),
            "scale": self.scale,
        }


class FSQ(LookupFree):
    """Finite scalar quantization with ``levels[c]`` values on channel c, as
    vector-quantize-pytorch's ``FSQ(levels)`` (no projections, one codebook)."""

    def __init__(self, levels: tuple[int, ...]) -> None:
        super().__init__()
        levels = tuple(int(v) for v in levels)
        if not levels or any(v < 3 for v in levels):
            raise ValueError(f"FSQ levels must each be at least 3, got {list(levels)}")
        if math.prod(levels) > 2**62:
            raise ValueError(f"FSQ levels {list(levels)} give more than 2^62 codes")
        self.levels = levels
        self._set_radix(levels)
        # in float32 and in the reference's order, so that the same latents round alike
        lv = torch.tensor(levels, dtype=torch.int32)
        half_l = (lv - 1) * (1 + FSQ_EPS) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)
        self.register_buffer("half_l", half_l, persistent=False)
        self.register_buffer("offset", offset, persistent=False)
        self.register_buffer("shift", torch.atanh(offset / half_l), persistent=False)
        self.register_buffer("half_width", (lv // 2).float(), persistent=False)

    def _bounded(self, z: torch.Tensor) -> torch.Tensor:
        """tanh-bounded latent in level units, before rounding."""
        v = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
        return torch.tanh(z + v(self.shift)) * v(self.half_l) - v(self.offset)

    def digits(self, z: torch.Tensor) -> torch.Tensor:
        # the reference rounds, divides by half_width, then multiplies back and rounds again:
        # round(b) / hw * hw + hw is round(b) + hw in float32 for these small integers
        return (torch.round(self._bounded(z)) + self.half_width.view(1, -1, 1, 1)).long()

    def digit_codes(self, digits: torch.Tensor) -> torch.Tensor:
        hw = self.half_width.view(1, -1, 1, 1)
        return (digits - hw) / hw

    def quantized(self, z: torch.Tensor) -> torch.Tensor:
        b = self._bounded(z)
        return (b + (torch.round(b) - b).detach()) / self.half_width.view(1, -1, 1, 1)

    def bundle_config(self) -> dict:
        """The manifest's ``quantizer``: {"quantizer": "fsq", "levels": [...]}."""
        return {"quantizer": "fsq", "levels": list(self.levels)}


class FSQVQVAE(VQVAE):
    """vqedge's configurable VQ-VAE with an FSQ bottleneck (``config.fsq_levels``): no
    codebook to learn, every code reachable."""

    def _make_quantizer(self, cfg: VQVAEConfig) -> nn.Module:
        return FSQ(cfg.fsq_levels)

    def decode_indices(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantize.embed(idx_Bhw))


__all__ = ["FSQ", "FSQVQVAE", "LFQ", "LookupFree"]
