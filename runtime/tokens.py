"""Token files: the token maps of one or more images, bit-packed and tied to their bundle.

Byte layout (all integers little-endian)::

    offset  size  field
    0       7     magic  b"VQETOK\\x00"
    7       1     format version (uint8), currently 1
    8       4     header length L in bytes (uint32)
    12      4     crc32 of the header bytes (uint32, zlib.crc32)
    16      L     header: UTF-8 JSON object
    16+L    P     payload: the indices, bit-packed

The header holds ``format_version``, ``codebook_size`` (K), ``bits``, ``bundle_sha256`` (the
sha256 of the bundle's manifest.json), ``image_size`` ([H, W] or null), ``shapes`` (one
[B, h, w] per scale, coarsest first), ``payload_bytes`` (P) and ``payload_crc32``.

The payload is every scale's indices flattened in C order and concatenated, N in all, each
written as an unsigned integer of ``bits = max(1, ceil(log2 K))`` bits, most significant bit
first, with no padding between tokens; the last byte is zero-padded, so P = ceil(N * bits / 8).
Nothing may follow the payload.
"""

from __future__ import annotations

import json
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vqedge.runtime.atomic import write_bytes_atomic

MAGIC = b"VQETOK\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<7sBII")  # magic, version, header length, header crc32


class TokenFileError(ValueError):
    """A token file that is foreign, truncated, corrupt, too new, or for another bundle."""


def bits_for(codebook_size: int) -> int:
    """Bits per token for a codebook of ``codebook_size`` entries: max(1, ceil(log2 K))."""
    if isinstance(codebook_size, bool) or not isinstance(codebook_size, int | np.integer):
        raise ValueError(f"codebook_size must be an int, got {codebook_size!r}")
    if not 1 <= codebook_size <= 2**63:
        raise ValueError(f"codebook_size must be in [1, 2**63], got {codebook_size}")
    return max(1, (int(codebook_size) - 1).bit_length())


@dataclass(frozen=True, eq=False)
class TokenFile:
    """The content of a token file; ``scales`` are int64 maps [B, h, w], coarsest first."""

    scales: list[np.ndarray]
    codebook_size: int
    bits: int
    bundle_sha256: str
    image_size: tuple[int, int] | None

    @property
    def indices(self) -> np.ndarray:
        """The token map [B, h, w] of a single-scale file."""
        if len(self.scales) != 1:
            raise ValueError(f"file holds {len(self.scales)} scales; use .scales, not .indices")
        return self.scales[0]

    @property
    def bits_per_pixel(self) -> float:
        """Index bits (excluding header and byte padding) per image pixel: N * bits / (B*H*W).

        With no ``image_size``, the finest token map's h * w stands for the pixel count.
        """
        batch = self.scales[0].shape[0]
        h, w = self.image_size or max((s.shape[1:] for s in self.scales), key=np.prod)
        return sum(s.size for s in self.scales) * self.bits / (batch * h * w)


def _width(bits: int) -> int:
    return next(w for w in (8, 16, 32, 64) if bits <= w)


def _pack(values: np.ndarray, bits: int) -> bytes:
    nbytes = _width(bits) // 8
    be = values.astype(f">u{nbytes}").view(np.uint8).reshape(-1, nbytes)
    return np.packbits(np.unpackbits(be, axis=1)[:, 8 * nbytes - bits :]).tobytes()


def _unpack(payload: bytes, n: int, bits: int) -> np.ndarray:
    nbytes = _width(bits) // 8
    bitmat = np.zeros((n, 8 * nbytes), np.uint8)
    raw = np.unpackbits(np.frombuffer(payload, np.uint8), count=n * bits)
    bitmat[:, 8 * nbytes - bits :] = raw.reshape(n, bits)
    return np.packbits(bitmat, axis=1).view(f">u{nbytes}").ravel().astype(np.int64)


def _check_map(a: np.ndarray, k: int, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must be an integer array of token indices, got dtype {a.dtype}")
    if a.ndim != 3 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty [B, h, w] token map, got shape {a.shape}")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= k:
        raise ValueError(f"{name} holds indices in [{lo}, {hi}], expected [0, {k}) for K={k}")
    return a


def save_tokens(
    path: str | Path,
    idx: np.ndarray | Sequence[np.ndarray],
    codebook_size: int,
    bundle_sha256: str,
    image_size: tuple[int, int] | None = None,
    scales: Sequence[int] | None = None,
) -> int:
    """Write token maps to ``path`` atomically (temporary file, fsync, os.replace).

    Parameters
    ----------
    path : str or Path
        The file to write; its folder must exist.
    idx : ndarray or sequence of ndarray
        One integer token map [B, h, w], or a list of them (multi-scale, coarsest first, one
        B for all), with every index in [0, codebook_size).
    codebook_size : int
        K, the number of codebook entries; each index is stored in ``bits_for(K)`` bits.
    bundle_sha256 : str
        sha256 (64 hex digits) of the manifest.json of the bundle that made the tokens.
    image_size : (int, int), optional
        The original (H, W) of the images, to crop decodes back to.
    scales : sequence of int, optional
        The expected side length pn of each scale (e.g. VAR's patch_nums); when given, map
        i must be [B, pn_i, pn_i]. Only checked, not stored (the shapes are).

    Returns
    -------
    int
        The number of bytes written.

    Raises
    ------
    ValueError
        Non-integer, empty, badly shaped or out-of-range indices, or a bad argument.
    """
    bits = bits_for(codebook_size)
    k = int(codebook_size)
    maps = [idx] if isinstance(idx, np.ndarray) else list(idx)
    if not maps:
        raise ValueError("idx is an empty list of scales; expected at least one token map")
    maps = [_check_map(a, k, f"scale {i}") for i, a in enumerate(maps)]
    if len({a.shape[0] for a in maps}) != 1:
        raise ValueError(f"scales differ in batch size: {[a.shape for a in maps]}")
    if scales is not None and [a.shape[1:] for a in maps] != [(p, p) for p in scales]:
        raise ValueError(f"maps {[a.shape for a in maps]} do not match scales {list(scales)}")
    sha = str(bundle_sha256).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ValueError(f"bundle_sha256 must be 64 hex digits, got {bundle_sha256!r}")
    if image_size is not None:
        image_size = tuple(int(v) for v in image_size)
        if len(image_size) != 2 or min(image_size) < 1:
            raise ValueError(f"image_size must be (H, W) of positive ints, got {image_size}")
    payload = _pack(np.concatenate([a.ravel() for a in maps]), bits)
    header = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "codebook_size": k,
            "bits": bits,
            "bundle_sha256": sha,
            "image_size": None if image_size is None else list(image_size),
            "shapes": [[int(d) for d in a.shape] for a in maps],
            "payload_bytes": len(payload),
            "payload_crc32": zlib.crc32(payload),
        }
    ).encode()
    data = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), zlib.crc32(header)) + header + payload
    write_bytes_atomic(path, data)
    return len(data)


def load_tokens(
    path: str | Path, bundle_sha256: str | None = None, force: bool = False
) -> TokenFile:
    """Read a token file written by :func:`save_tokens`.

    Parameters
    ----------
    path : str or Path
        The token file.
    bundle_sha256 : str, optional
        The manifest sha256 of the bundle about to decode the tokens; a file made by another
        bundle is refused unless ``force``.
    force : bool
        Load a file from another bundle anyway, with a warning.

    Returns
    -------
    TokenFile

    Raises
    ------
    TokenFileError
        A foreign, truncated, corrupt or newer-version file, or a bundle mismatch.
    """
    data = Path(path).read_bytes()
    if len(data) < _PREFIX.size:
        if MAGIC.startswith(data[: len(MAGIC)]):
            raise TokenFileError(f"{path}: truncated token file ({len(data)} bytes)")
        raise TokenFileError(f"{path}: foreign file, not a vqedge token file (bad magic)")
    magic, version, hlen, hcrc = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise TokenFileError(f"{path}: foreign file, not a vqedge token file (bad magic)")
    if not 1 <= version <= FORMAT_VERSION:
        raise TokenFileError(
            f"{path}: token format version {version}, this runtime reads up to "
            f"{FORMAT_VERSION}; upgrade vqedge"
        )
    end = _PREFIX.size + hlen
    if len(data) < end:
        raise TokenFileError(f"{path}: truncated header ({len(data) - _PREFIX.size} of {hlen} B)")
    raw = data[_PREFIX.size : end]
    if zlib.crc32(raw) != hcrc:
        raise TokenFileError(f"{path}: corrupt header (crc32 mismatch)")
    try:
        h = json.loads(raw)
        k, bits, sha = int(h["codebook_size"]), int(h["bits"]), str(h["bundle_sha256"])
        shapes = [tuple(int(d) for d in s) for s in h["shapes"]]
        nbytes, crc, size = int(h["payload_bytes"]), int(h["payload_crc32"]), h["image_size"]
        image_size = None if size is None else (int(size[0]), int(size[1]))
        n = sum(int(np.prod(s)) for s in shapes)
        ok = bits == bits_for(k) and shapes and all(len(s) == 3 and min(s) > 0 for s in shapes)
        if not ok or nbytes != (n * bits + 7) // 8:
            raise ValueError("inconsistent fields")
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise TokenFileError(f"{path}: corrupt header: {e}") from None
    payload = data[end:]
    if len(payload) != nbytes:
        what = "truncated payload" if len(payload) < nbytes else "trailing bytes after payload"
        raise TokenFileError(f"{path}: {what} ({len(payload)} B, expected {nbytes} B)")
    if zlib.crc32(payload) != crc:
        raise TokenFileError(f"{path}: corrupt payload (crc32 mismatch)")
    if bundle_sha256 is not None and bundle_sha256.lower() != sha:
        msg = f"{path}: tokens made by bundle {sha}, not by this bundle {bundle_sha256.lower()}"
        if not force:
            raise TokenFileError(msg + "; pass force=True to load anyway")
        warnings.warn(msg + "; loading anyway (force=True)", UserWarning, stacklevel=2)
    flat = _unpack(payload, n, bits)
    if flat.max() >= k:
        raise TokenFileError(f"{path}: corrupt payload (index {flat.max()} >= K={k})")
    splits = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]
    scales = [a.reshape(s) for a, s in zip(np.split(flat, splits), shapes)]
    return TokenFile(scales, k, bits, sha, image_size)
