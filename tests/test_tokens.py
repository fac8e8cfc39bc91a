import json
import math
import re
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vqedge.runtime.tokens import (
    FORMAT_VERSION,
    TokenFileError,
    bits_for,
    load_tokens,
    save_tokens,
)

SHA = "ab" * 32
OTHER = "cd" * 32


def header_len(path) -> int:
    return 16 + struct.unpack_from("<I", path.read_bytes(), 8)[0]


def test_bits_for():
    table = {1: 1, 2: 1, 3: 2, 16: 4, 17: 5, 1000: 10, 1024: 10, 1025: 11, 65536: 16}
    assert {k: bits_for(k) for k in table} == table
    for bad in (0, -3, 1.5, True):
        with pytest.raises(ValueError, match="codebook_size"):
            bits_for(bad)


@pytest.mark.parametrize("k", [2, 16, 1000, 1024, 4096, 65536])
def test_round_trip_single_scale(tmp_path, k):
    rng = np.random.default_rng(k)
    idx = rng.integers(0, k, size=(3, 7, 5))
    idx[0, 0, 0], idx[-1, -1, -1] = 0, k - 1  # the extremes survive
    path = tmp_path / "t.vqt"
    n = save_tokens(path, idx, k, SHA, image_size=(27, 20))
    tf = load_tokens(path, bundle_sha256=SHA)
    assert tf.indices.dtype == np.int64 and np.array_equal(tf.indices, idx)
    assert len(tf.scales) == 1
    assert (tf.codebook_size, tf.bits, tf.bundle_sha256) == (k, bits_for(k), SHA)
    assert tf.image_size == (27, 20)
    assert n == path.stat().st_size == header_len(path) + math.ceil(idx.size * tf.bits / 8)


def test_round_trip_multi_scale(tmp_path):
    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 4096, size=(2, p, p)) for p in range(1, 9)]
    path = tmp_path / "ms.vqt"
    save_tokens(path, maps, 4096, SHA, scales=range(1, 9))
    tf = load_tokens(path)
    assert [s.shape for s in tf.scales] == [(2, p, p) for p in range(1, 9)]
    assert all(np.array_equal(a, b) for a, b in zip(tf.scales, maps))
    with pytest.raises(ValueError, match="scales"):
        _ = tf.indices
    with pytest.raises(ValueError, match="do not match scales"):
        save_tokens(path, maps, 4096, SHA, scales=[1, 2, 3])


def test_ten_bits_per_token_beats_uint16(tmp_path):
    idx = np.random.default_rng(1).integers(0, 1024, size=(1, 16, 16))
    path = tmp_path / "t.vqt"
    size = save_tokens(path, idx, 1024, SHA)
    payload = size - header_len(path)
    assert payload == 256 * 10 // 8 == 320
    assert payload < idx.astype(np.uint16).nbytes


def test_bits_per_pixel(tmp_path):
    # 64x64 image, f=4 -> 16x16 tokens, K=1024 -> 10 bits: 2560 / 4096 bits per pixel.
    idx = np.zeros((2, 16, 16), np.int64)
    save_tokens(tmp_path / "a.vqt", idx, 1024, SHA, image_size=(64, 64))
    assert load_tokens(tmp_path / "a.vqt").bits_per_pixel == 0.625
    save_tokens(tmp_path / "b.vqt", idx, 1024, SHA)  # no image size: per token of the map
    assert load_tokens(tmp_path / "b.vqt").bits_per_pixel == 10.0


def test_large_map_is_fast_and_exact(tmp_path):
    idx = np.random.default_rng(2).integers(0, 1024, size=(4, 512, 512))  # 1M tokens
    save_tokens(tmp_path / "big.vqt", idx, 1024, SHA)
    assert np.array_equal(load_tokens(tmp_path / "big.vqt").indices, idx)


def test_atomic_write_leaves_no_temp_files(tmp_path, monkeypatch):
    idx = np.ones((1, 4, 4), np.int64)
    path = tmp_path / "t.vqt"
    save_tokens(path, idx, 16, SHA)
    save_tokens(path, idx * 2, 16, SHA)  # overwrite in place
    assert [p.name for p in tmp_path.iterdir()] == ["t.vqt"]
    assert np.array_equal(load_tokens(path).indices, idx * 2)

    def crash(*args):
        raise OSError("disk gone")

    monkeypatch.setattr("os.replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        save_tokens(path, idx * 3, 16, SHA)
    assert [p.name for p in tmp_path.iterdir()] == ["t.vqt"]
    assert np.array_equal(load_tokens(path).indices, idx * 2)  # old file untouched


@pytest.fixture
def valid(tmp_path):
    idx = np.random.default_rng(3).integers(0, 1000, size=(2, 8, 8))
    path = tmp_path / "v.vqt"
    save_tokens(path, idx, 1000, SHA, image_size=(30, 32))
    return path


def test_truncated_file_refused(valid, tmp_path):
    data = valid.read_bytes()
    hend = header_len(valid)
    for cut in (0, 3, 8, 12, 15, 16, hend - 1, hend, hend + 1, len(data) - 1):
        bad = tmp_path / f"cut{cut}.vqt"
        bad.write_bytes(data[:cut])
        with pytest.raises(TokenFileError, match="truncated"):
            load_tokens(bad)
    bad.write_bytes(data + b"\0")
    with pytest.raises(TokenFileError, match="trailing bytes"):
        load_tokens(bad)


def test_flipped_payload_byte_refused(valid):
    data = bytearray(valid.read_bytes())
    data[-5] ^= 0x10
    valid.write_bytes(bytes(data))
    with pytest.raises(TokenFileError, match="corrupt payload"):
        load_tokens(valid)


def test_corrupt_header_refused(valid):
    data = bytearray(valid.read_bytes())
    data[20] ^= 0x01
    valid.write_bytes(bytes(data))
    with pytest.raises(TokenFileError, match="corrupt header"):
        load_tokens(valid)


def rewrite_header(path, edit) -> None:
    """Re-write ``path`` with its JSON header changed by ``edit`` but a matching header crc."""
    data = path.read_bytes()
    end = header_len(path)
    header = edit(json.loads(data[16:end]))
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    prefix = struct.pack("<7sBII", data[:7], data[7], len(raw), zlib.crc32(raw))
    path.write_bytes(prefix + raw + data[end:])


@pytest.mark.parametrize(
    "edit",
    [
        lambda h: b"{not json",
        lambda h: b"[1, 2]",
        lambda h: {**h, "bits": 11},
        lambda h: {**h, "codebook_size": 0},
        lambda h: {**h, "shapes": [[2, 8]]},
        lambda h: {k: v for k, v in h.items() if k != "payload_crc32"},
    ],
)
def test_inconsistent_header_refused(valid, edit):
    rewrite_header(valid, edit)
    with pytest.raises(TokenFileError, match="corrupt header"):
        load_tokens(valid)


def test_index_beyond_codebook_refused(valid):
    rewrite_header(valid, lambda h: {**h, "codebook_size": 513})  # still 10 bits
    with pytest.raises(TokenFileError, match="corrupt payload.*K=513"):
        load_tokens(valid)


def test_foreign_file_refused(valid):
    valid.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    with pytest.raises(TokenFileError, match="foreign file"):
        load_tokens(valid)


def test_newer_version_refused(valid):
    data = bytearray(valid.read_bytes())
    data[7] = FORMAT_VERSION + 1
    valid.write_bytes(bytes(data))
    with pytest.raises(TokenFileError, match=f"version {FORMAT_VERSION + 1}.*upgrade"):
        load_tokens(valid)


def test_bundle_mismatch_needs_force(valid):
    with pytest.raises(TokenFileError, match=f"{SHA}.*{OTHER}.*force=True"):
        load_tokens(valid, bundle_sha256=OTHER)
    with pytest.warns(UserWarning, match="loading anyway"):
        tf = load_tokens(valid, bundle_sha256=OTHER, force=True)
    assert tf.indices.shape == (2, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_tokens(valid, bundle_sha256=SHA.upper())  # same hash: no warning


@pytest.mark.parametrize(
    ("idx", "match"),
    [
        (np.full((1, 2, 2), 1024), r"\[1024, 1024\], expected \[0, 1024\)"),
        (np.full((1, 2, 2), -1), r"expected \[0, 1024\)"),
        (np.zeros((1, 2, 2), np.float32), "integer"),
        (np.zeros((1, 0, 4), np.int64), "non-empty"),
        (np.zeros((4, 4), np.int64), r"\[B, h, w\]"),
        ([], "empty list"),
    ],
)
def test_bad_indices_refused_at_save(tmp_path, idx, match):
    with pytest.raises(ValueError, match=match):
        save_tokens(tmp_path / "x.vqt", idx, 1024, SHA)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_refused_at_save(tmp_path):
    idx = np.zeros((1, 2, 2), np.int64)
    with pytest.raises(ValueError, match="64 hex"):
        save_tokens(tmp_path / "x.vqt", idx, 1024, "not-a-hash")
    with pytest.raises(ValueError, match="image_size"):
        save_tokens(tmp_path / "x.vqt", idx, 1024, SHA, image_size=(0, 8))
    with pytest.raises(ValueError, match="batch size"):
        save_tokens(tmp_path / "x.vqt", [idx, np.zeros((2, 2, 2), np.int64)], 1024, SHA)


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(1, 2**40),
    batch=st.integers(1, 3),
    sides=st.lists(st.tuples(st.integers(1, 9), st.integers(1, 9)), min_size=1, max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_property(tmp_path_factory, k, batch, sides, seed):
    rng = np.random.default_rng(seed)
    maps = [rng.integers(0, k, size=(batch, h, w)) for h, w in sides]
    path = tmp_path_factory.mktemp("prop") / "p.vqt"
    size = save_tokens(path, maps, k, SHA)
    tf = load_tokens(path, bundle_sha256=SHA)
    assert all(np.array_equal(a, b) and a.dtype == np.int64 for a, b in zip(tf.scales, maps))
    n = sum(m.size for m in maps)
    assert size == header_len(path) + math.ceil(n * bits_for(k) / 8)


def zeros_crc32(n: int) -> int:
    crc, chunk = 0, bytes(2**20)
    for start in range(0, n, len(chunk)):
        crc = zlib.crc32(chunk[: min(len(chunk), n - start)], crc)
    return crc


def crafted(
    path, k: int, shapes: list, payload: bytes | int, overrides: dict | None = None
) -> None:
    """A token file whose header says what the arguments say (crcs right, sizes consistent)
    with header fields replaced by ``overrides``; ``payload`` as bytes, or a length of zero
    bytes written sparsely (no memory)."""
    n = sum(math.prod(s) for s in shapes)
    nbytes = (n * bits_for(k) + 7) // 8
    body = payload if isinstance(payload, bytes) else None
    header = {
        "format_version": FORMAT_VERSION,
        "codebook_size": k,
        "bits": bits_for(k),
        "bundle_sha256": SHA,
        "image_size": None,
        "shapes": shapes,
        "payload_bytes": nbytes,
        "payload_crc32": zlib.crc32(body) if body is not None else zeros_crc32(payload),
        **(overrides or {}),
    }
    raw = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<7sBII", b"VQETOK\0", FORMAT_VERSION, len(raw), zlib.crc32(raw)))
        fh.write(raw)
        if body is not None:
            fh.write(body)
        else:
            fh.truncate(fh.tell() + payload)


# a 19 MB file with K=2 (one bit per token): 152 M tokens, 1.2 GB once unpacked to int64
BOMB_SHAPES = [[1, 12000, 12666]]
BOMB_BYTES = (12000 * 12666 + 7) // 8

PEAK_SCRIPT = """
import json, resource, sys
import numpy as np
from vqedge.runtime.tokens import load_tokens
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_tokens(sys.argv[1], bundle_sha256="ab" * 32, **json.loads(sys.argv[2]))
    outcome = "read"
except ValueError as e:
    outcome = f"{type(e).__name__}: {e}"
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"outcome": outcome, "mib": (peak - base) / 1024}))
"""


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        ({}, r"hold 151992000 tokens, over the limit of 16777216"),
        ({"codebook_size": 1024}, "K=2 in the file, this bundle has K=1024"),
        ({"max_map_side": 1024, "max_tokens": None}, "token map side is over the limit of 1024"),
    ],
)
def test_crafted_token_file_refused_from_its_header(tmp_path, limits, match):
    path = tmp_path / "bomb.vqt"
    crafted(path, 2, BOMB_SHAPES, BOMB_BYTES)
    assert path.stat().st_size > 18_000_000
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path), json.dumps(limits)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{limits}: peak +{result['mib']:.1f} MiB")
    assert result["outcome"].startswith("TokenFileError")
    assert re.search(match, result["outcome"]) and "bomb.vqt" in result["outcome"]
    assert result["mib"] < 32  # the payload alone is 19 MB: it was never read


def test_header_checked_before_payload(tmp_path):
    # every check below fires although the payload is missing: none of them reads it
    path = tmp_path / "h.vqt"
    crafted(path, 1024, [[1, 8, 8]], b"", {"image_size": [9000, 9000]})
    with pytest.raises(TokenFileError, match=r"h\.vqt: codebook_size K=1024.*K=4096"):
        load_tokens(path, codebook_size=4096)
    with pytest.raises(
        TokenFileError, match=r"image_size \[9000, 9000\] is over the limit of 4096"
    ):
        load_tokens(path, max_image_side=4096)
    with pytest.raises(TokenFileError, match=r"do not match this bundle's scales \[1, 2\]"):
        load_tokens(path, scales=[1, 2])
    with pytest.raises(TokenFileError, match="over the limit of 10"):
        load_tokens(path, max_tokens=10)
    with pytest.raises(TokenFileError, match="truncated payload"):
        load_tokens(path, codebook_size=1024, max_image_side=9000, scales=[8], max_tokens=64)
    with pytest.raises(TokenFileError, match=r"^mine\.vqt: truncated payload") as e:
        load_tokens(path, name="mine.vqt")  # a server names the user's file, not its path
    assert str(tmp_path) not in str(e.value)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"payload_bytes": 81}, "payload_bytes=81, but shapes"),
        ({"codebook_size": True}, "codebook_size must be an integer"),
        ({"bits": 10.0}, "bits must be an integer"),
        ({"shapes": [[1, 8, 8.0]]}, "positive ints"),
        ({"shapes": [[1, 8, 8], [2, 1, 1]]}, "batch size"),
        ({"shapes": [[1, 1, 1]] * 65}, "1 to 64"),
        ({"image_size": [0, 5]}, "image_size must be null"),
        ({"bundle_sha256": "z" * 64}, "64 hex digits"),
    ],
)
def test_header_fields_type_checked(tmp_path, fields, match):
    path = tmp_path / "f.vqt"
    crafted(path, 1024, [[1, 8, 8]], bytes(80), fields)
    with pytest.raises(TokenFileError, match=f"corrupt header: .*{match}"):
        load_tokens(path)


def test_oversized_header_length_refused(tmp_path):
    path = tmp_path / "long.vqt"
    path.write_bytes(struct.pack("<7sBII", b"VQETOK\0", FORMAT_VERSION, 2**31, 0))
    with pytest.raises(TokenFileError, match=r"header length 2147483648 B, the limit is 65536"):
        load_tokens(path)


def test_limits_let_a_valid_file_through(valid):
    tf = load_tokens(
        valid,
        bundle_sha256=SHA,
        codebook_size=1000,
        max_tokens=128,
        max_map_side=8,
        max_image_side=32,
        scales=[8],
    )
    assert tf.indices.shape == (2, 8, 8)
