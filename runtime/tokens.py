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
import math
import os
import reprlib
import struct
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from vqedge.runtime.atomic import write_bytes_atomic

MAGIC = b"VQETOK\x00"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<7sBII")  # magic, version, header length, header crc32
# header bytes load_tokens reads at most: a header is about 300 B plus ~20 B per scale
MAX_HEADER_BYTES = 64 * 1024
# scales a file may hold (VAR uses 10)
MAX_SCALES = 64
# tokens load_tokens reads unless the caller allows more: 8 B each once unpacked (128 MiB),
# sixteen 4096x4096 images at f=4
MAX_TOKENS = 2**24
_HEX = "0123456789abcdef"
# tokens unpacked at once (a multiple of 8, so each chunk starts on a byte)
_UNPACK_CHUNK = 2**18


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
    # in chunks of a multiple of 8 tokens (a whole number of bytes), so the bit matrices stay
    # small whatever n is: the int64 result is the only allocation that grows with the file
    nbytes = _width(bits) // 8
    data = np.frombuffer(payload, np.uint8)
    out = np.empty(n, np.int64)
    for start in range(0, n, _UNPACK_CHUNK):
        m = min(_UNPACK_CHUNK, n - start)
        lo = start * bits // 8
        raw = np.unpackbits(data[lo : lo + (m * bits + 7) // 8], count=m * bits)
        bitmat = np.zeros((m, 8 * nbytes), np.uint8)
        bitmat[:, 8 * nbytes - bits :] = raw.reshape(m, bits)
        out[start : start + m] = np.packbits(bitmat, axis=1).view(f">u{nbytes}").ravel()
    return out


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


def _int(h: dict, key: str, lo: int = 0) -> int:
    v = h.get(key)
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{key} must be an integer, got {reprlib.repr(v)}")
    if v < lo:
        raise ValueError(f"{key} must be >= {lo}, got {v}")
    return v


def _parse_header(raw: bytes) -> dict:
    """The header's fields, each type- and range-checked (no limits of the caller yet)."""
    h = json.loads(raw)
    if not isinstance(h, dict):
        raise ValueError(f"expected a JSON object, got {type(h).__name__}")
    k, bits = _int(h, "codebook_size", 1), _int(h, "bits", 1)
    if bits != bits_for(k):
        raise ValueError(f"bits={bits} does not match codebook_size={k} (expects {bits_for(k)})")
    shapes = h.get("shapes")
    if not isinstance(shapes, list) or not 1 <= len(shapes) <= MAX_SCALES:
        raise ValueError(
            f"shapes must be a list of 1 to {MAX_SCALES} [B, h, w], got {reprlib.repr(shapes)}"
        )
    for s in shapes:
        if not (isinstance(s, list) and len(s) == 3 and all(type(d) is int and d > 0 for d in s)):
            raise ValueError(
                f"each shape must be [B, h, w] of positive ints, got {reprlib.repr(s)}"
            )
    if len({s[0] for s in shapes}) != 1:
        raise ValueError(f"scales differ in batch size: {shapes}")
    sha = h.get("bundle_sha256")
    if not isinstance(sha, str) or len(sha) != 64 or not set(sha.lower()) <= set(_HEX):
        raise ValueError(f"bundle_sha256 must be 64 hex digits, got {reprlib.repr(sha)}")
    size = h.get("image_size")
    if size is not None and not (
        isinstance(size, list) and len(size) == 2 and all(type(d) is int and d > 0 for d in size)
    ):
        raise ValueError(
            f"image_size must be null or [H, W] of positive ints, got {reprlib.repr(size)}"
        )
    n = sum(math.prod(s) for s in shapes)
    nbytes = _int(h, "payload_bytes")
    if nbytes != (n * bits + 7) // 8:
        raise ValueError(
            f"payload_bytes={nbytes}, but shapes {shapes} at {bits} bits per token need "
            f"{(n * bits + 7) // 8} B"
        )
    return {
        "k": k,
        "bits": bits,
        "n": n,
        "shapes": [tuple(s) for s in shapes],
        "sha": sha.lower(),
        "image_size": None if size is None else tuple(size),
        "payload_bytes": nbytes,
        "payload_crc32": _int(h, "payload_crc32"),
    }


def load_tokens(
    path: str | Path,
    bundle_sha256: str | None = None,
    force: bool = False,
    codebook_size: int | None = None,
    max_tokens: int | None = MAX_TOKENS,
    max_map_side: int | None = None,
    max_image_side: int | None = None,
    scales: Sequence[int] | None = None,
    name: str | None = None,
) -> TokenFile:
    """Read a token file written by :func:`save_tokens`, checking its header first.

    Every header field is checked against the file's size and the caller's limits before
    any of the payload is read, so a crafted header costs no memory.

    Parameters
    ----------
    path : str or Path
        The token file.
    bundle_sha256 : str, optional
        The manifest sha256 of the bundle about to decode the tokens; a file made by another
        bundle is refused unless ``force``.
    force : bool
        Load a file from another bundle anyway, with a warning.
    codebook_size : int, optional
        The K of the bundle about to decode the tokens; a file with another K is refused
        (``force`` does not override it: its indices mean nothing to this codebook).
    max_tokens : int or None
        The most tokens (all images, all scales) the file may hold: ``MAX_TOKENS`` by default,
        None for no limit. Bounds the memory the load takes (8 bytes per token).
    max_map_side : int, optional
        The largest token map side (h or w) allowed, e.g. ``ceil(max_side / f)``.
    max_image_side : int, optional
        The largest ``image_size`` side allowed, e.g. ``max_side``.
    scales : sequence of int, optional
        The side of each scale the bundle expects (multi-scale ``patch_nums``): map i must be
        [B, pn_i, pn_i].
    name : str, optional
        What error messages call the file (a server passes the user's file name, not its
        temporary path); ``path`` by default.

    Returns
    -------
    TokenFile

    Raises
    ------
    TokenFileError
        A foreign, truncated, corrupt or newer-version file, a header field over a limit or
        that does not fit the bundle; the message names the file and the field.
    """
    name = str(path) if name is None else name
    with open(path, "rb") as fh:
        h, payload_size = _read_header(fh, name)
        _check_fits(name, h, codebook_size, max_tokens, max_map_side, max_image_side, scales)
        nbytes = h["payload_bytes"]
        if payload_size != nbytes:
            what = "truncated payload" if payload_size < nbytes else "trailing bytes after payload"
            raise TokenFileError(f"{name}: {what} ({payload_size} B, expected {nbytes} B)")
        sha = h["sha"]
        if bundle_sha256 is not None and bundle_sha256.lower() != sha:
            msg = f"{name}: tokens made by bundle {sha}, not by this bundle {bundle_sha256.lower()}"
            if not force:
                raise TokenFileError(msg + "; pass force=True to load anyway")
            warnings.warn(msg + "; loading anyway (force=True)", UserWarning, stacklevel=2)
        payload = fh.read(nbytes)
    if len(payload) != nbytes:  # the file shrank since its size was read
        raise TokenFileError(f"{name}: truncated payload ({len(payload)} B, expected {nbytes} B)")
    if zlib.crc32(payload) != h["payload_crc32"]:
        raise TokenFileError(f"{name}: corrupt payload (crc32 mismatch)")
    k, shapes = h["k"], h["shapes"]
    flat = _unpack(payload, h["n"], h["bits"])
    del payload
    top = int(flat.max())
    if top >= k:
        raise TokenFileError(f"{name}: corrupt payload (index {top} >= K={k})")
    splits = np.cumsum([math.prod(s) for s in shapes])[:-1]
    maps = [a.reshape(s) for a, s in zip(np.split(flat, splits), shapes)]
    return TokenFile(maps, k, h["bits"], sha, h["image_size"])


def _read_header(fh: BinaryIO, name: str) -> tuple[dict, int]:
    """The checked header fields of an open token file and the bytes left after the header."""
    file_size = os.fstat(fh.fileno()).st_size
    prefix = fh.read(_PREFIX.size)
    if len(prefix) < _PREFIX.size:
        if MAGIC.startswith(prefix[: len(MAGIC)]):
            raise TokenFileError(f"{name}: truncated token file ({len(prefix)} bytes)")
        raise TokenFileError(f"{name}: foreign file, not a vqedge token file (bad magic)")
    magic, version, hlen, hcrc = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise TokenFileError(f"{name}: foreign file, not a vqedge token file (bad magic)")
    if version < 1:
        raise TokenFileError(f"{name}: corrupt token file (format version {version})")
    if version > FORMAT_VERSION:
        raise TokenFileError(
            f"{name}: token format version {version}, this runtime reads up to "
            f"{FORMAT_VERSION}; upgrade vqedge"
        )
    if hlen > MAX_HEADER_BYTES:
        raise TokenFileError(
            f"{name}: corrupt header (header length {hlen} B, the limit is {MAX_HEADER_BYTES} B)"
        )
    if file_size < _PREFIX.size + hlen:
        raise TokenFileError(f"{name}: truncated header ({file_size - _PREFIX.size} of {hlen} B)")
    raw = fh.read(hlen)
    if zlib.crc32(raw) != hcrc:
        raise TokenFileError(f"{name}: corrupt header (crc32 mismatch)")
    try:
        h = _parse_header(raw)
    except (ValueError, RecursionError) as e:
        raise TokenFileError(f"{name}: corrupt header: {e}") from None
    return h, file_size - _PREFIX.size - hlen


def _check_fits(
    name: str,
    h: dict,
    codebook_size: int | None,
    max_tokens: int | None,
    max_map_side: int | None,
    max_image_side: int | None,
    scales: Sequence[int] | None,
) -> None:
    """Refuse a header that does not fit the bundle or the caller's limits."""
    k, shapes, size = h["k"], h["shapes"], h["image_size"]
    listed = [list(s) for s in shapes]
    if codebook_size is not None and k != codebook_size:
        raise TokenFileError(
            f"{name}: codebook_size K={k} in the file, this bundle has K={codebook_size}"
        )
    if scales is not None and [s[1:] for s in shapes] != [(p, p) for p in scales]:
        raise TokenFileError(
            f"{name}: shapes {listed} do not match this bundle's scales {list(scales)}"
        )
    if max_map_side is not None and max(max(s[1:]) for s in shapes) > max_map_side:
        raise TokenFileError(
            f"{name}: shapes {listed}: a token map side is over the limit of {max_map_side}"
        )
    if max_tokens is not None and h["n"] > max_tokens:
        raise TokenFileError(
            f"{name}: shapes {listed} hold {h['n']} tokens, over the limit of {max_tokens}"
        )
    if max_image_side is not None and size is not None and max(size) > max_image_side:
        raise TokenFileError(
            f"{name}: image_size {list(size)} is over the limit of {max_image_side} pixels"
        )
