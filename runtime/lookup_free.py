"""The lookup-free tokenizer: LFQ (Open-MAGVIT2) and FSQ bundles (manifest kind
``lookup-free``): an image of any size <-> one token map int64 [B, h, w], like a single-scale
bundle, but with no codebook file: an index's code is computed from the index.

The manifest's ``quantizer`` says how:

- ``{"quantizer": "lfq", "bits": C, "factorized_bits": [a, b], "scale": s}``: K = 2^C; the
  code of index i is s * (2 * bit_c(i) - 1) on channel c, bit 0 the lowest. With
  ``factorized_bits`` the index is also two sub-tokens, the low ``a`` bits and the high
  ``b`` bits, the two token maps Open-MAGVIT2's AR model predicts (``factorize``).
- ``{"quantizer": "fsq", "levels": [L_0, ..., L_{C-1}]}``: K = prod(L); the index is a
  mixed-radix number of digits d_c in [0, L_c), channel 0 the lowest digit, and the code on
  channel c is (d_c - L_c // 2) / (L_c // 2) (vector-quantize-pytorch's FSQ).

The graphs compute the same in onnxruntime; these numpy forms serve what runs outside the
graphs (``codes``, ``idxBl_to_var_input``, the demo's palette).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from vqedge.runtime.inputs import check_indices
from vqedge.runtime.manifest import LOOKUP_FREE, QUANTIZER, BundleError
from vqedge.runtime.session import BundleSessions
from vqedge.runtime.tokenizer import Tokenizer

LFQ, FSQ = "lfq", "fsq"


def parse_quantizer(manifest: dict[str, Any], code_dim: int, codebook_size: int) -> dict:
    """The manifest's ``quantizer``, checked against the config's code dim and K.

    Raises
    ------
    BundleError
        Missing, of an unknown type, or disagreeing with the config.
    """
    q = manifest.get("quantizer")
    kind = q.get("quantizer") if isinstance(q, dict) else None
    if kind == LFQ:
        bits, fb = q.get("bits"), q.get("factorized_bits", [])
        ok = type(bits) is int and bits == code_dim and 2**bits == codebook_size
        ok = ok and isinstance(fb, list) and (not fb or (len(fb) == 2 and sum(fb) == bits))
        ok = ok and isinstance(q.get("scale", 1.0), int | float)
    elif kind == FSQ:
        levels = q.get("levels")
        ok = isinstance(levels, list) and all(type(v) is int and v >= 3 for v in levels)
        ok = ok and len(levels) == code_dim and math.prod(levels) == codebook_size
    else:
        ok = False
    if not ok:
        raise BundleError(
            f"lookup-free bundle manifest 'quantizer' {q!r} is not understood: expected "
            f'{{"quantizer": "lfq", "bits": {code_dim}, "factorized_bits": [a, b]}} or '
            f'{{"quantizer": "fsq", "levels": [...{code_dim} levels, product {codebook_size}]}}'
        )
    return q


class LookupFreeTokenizer(Tokenizer):
    """A lookup-free bundle on onnxruntime: images of any size <-> one token map.

    Everything a single-scale ``Tokenizer`` offers (the same graphs, names and token files;
    tiling where the manifest allows it), plus the code of an index computed rather than
    looked up (``codes``) and, for LFQ with ``factorized_bits``, the two sub-token maps
    (``factorize`` / ``unfactorize``).
    """

    KIND = LOOKUP_FREE

    def __init__(self, sessions: BundleSessions, max_side: int | None = None) -> None:
        super().__init__(sessions, max_side)
        cfg = self.config
        self.quantizer: dict[str, Any] = parse_quantizer(
            sessions.manifest, cfg.code_dim, cfg.codebook_size
        )
        self._codebook: np.ndarray | None = None

    def quantize(self, latent: np.ndarray) -> np.ndarray:
        """Latent [B, C, h, w] -> token map int64 [B, h, w] (the quantizer graph alone), in
        one run: computing an index needs no scores against K codes, so no blocks."""
        z = np.ascontiguousarray(latent, dtype=np.float32)
        C = self.config.code_dim
        if z.ndim != 4 or z.shape[1] != C:
            raise ValueError(f"latent must be float [B, {C}, h, w], got shape {z.shape}")
        return self.sessions.run(QUANTIZER, "latent", z)[0]

    @property
    def factorized_bits(self) -> tuple[int, ...]:
        """(a, b): the bits of the two sub-tokens, low first; () where there are none."""
        return tuple(self.quantizer.get("factorized_bits", ()))

    def _radix(self) -> np.ndarray:
        if self.quantizer["quantizer"] == LFQ:
            return np.full(self.config.code_dim, 2, np.int64)
        return np.asarray(self.quantizer["levels"], np.int64)

    def codes(self, tokens: Any) -> np.ndarray:
        """Token map [B, h, w] -> the codes the decoder reads, float32 [B, C, h, w]."""
        idx = check_indices(tokens, self.codebook_size)
        radix = self._radix()
        basis = np.cumprod(np.concatenate([[1], radix[:-1]]))
        digits = (idx[:, None] // basis[None, :, None, None]) % radix[None, :, None, None]
        if self.quantizer["quantizer"] == LFQ:
            return ((digits * 2 - 1) * float(self.quantizer.get("scale", 1.0))).astype(np.float32)
        half = (radix // 2).astype(np.float32)[None, :, None, None]
        return ((digits.astype(np.float32) - half) / half).astype(np.float32)

    @property
    def codebook(self) -> np.ndarray:
        """Every code, float32 [K, C], computed on first use (there is no codebook file;
        2^18 x 18 floats, 19 MB, for Open-MAGVIT2)."""
        if self._codebook is None:
            idx = np.arange(self.codebook_size, dtype=np.int64).reshape(1, -1, 1)
            self._codebook = self.codes(idx)[0, :, :, 0].T.copy()
        return self._codebook

    def factorize(self, tokens: Any) -> tuple[np.ndarray, np.ndarray]:
        """Token map [B, h, w] -> (low sub-tokens, high sub-tokens), each int64 [B, h, w]
        in [0, 2^a) and [0, 2^b): the two maps Open-MAGVIT2's AR model predicts.

        Raises
        ------
        ValueError
            Bad tokens, or a bundle whose quantizer records no factorization.
        """
        a = self._factor_bits()[0]
        idx = check_indices(tokens, self.codebook_size)
        return idx & ((1 << a) - 1), idx >> a

    def unfactorize(self, low: Any, high: Any) -> np.ndarray:
        """(low, high) sub-token maps -> the token map [B, h, w] (``factorize``'s inverse)."""
        a, b = self._factor_bits()
        lo, hi = check_indices(low, 1 << a), check_indices(high, 1 << b)
        if lo.shape != hi.shape:
            raise ValueError(f"sub-token maps differ in shape: {lo.shape} and {hi.shape}")
        return lo | (hi << a)

    def _factor_bits(self) -> tuple[int, int]:
        fb = self.factorized_bits
        if len(fb) != 2:
            raise ValueError(
                f"bundle {self.root.name} records no token factorization (its quantizer is "
                f"{self.quantizer['quantizer']})"
            )
        return fb[0], fb[1]

    def idxBl_to_var_input(self, idx_Bl: list[np.ndarray]) -> np.ndarray:
        """idx_Bl -> the codes of every token as one sequence, float32 [B, L, C]."""
        if not idx_Bl:
            raise ValueError("idx_Bl must hold at least one scale")
        flat = np.concatenate([np.asarray(i).reshape(len(i), -1) for i in idx_Bl], axis=1)
        return self.codes(flat[:, None, :])[:, :, 0].transpose(0, 2, 1).copy()

    def describe(self) -> list[tuple[str, str]]:
        """``vqedge info`` rows: the single-scale ones and the quantizer."""
        q = self.quantizer
        if q["quantizer"] == LFQ:
            what = f"LFQ: sign of {q['bits']} channels, K = 2^{q['bits']}"
            if self.factorized_bits:
                what += (
                    f", sub-tokens of {self.factorized_bits[0]} + {self.factorized_bits[1]} bits"
                )
        else:
            what = f"FSQ: levels {q['levels']}, K = {self.codebook_size}"
        return [*super().describe(), ("quantizer", what + " (no codebook file)")]


__all__ = ["LookupFreeTokenizer", "parse_quantizer"]
