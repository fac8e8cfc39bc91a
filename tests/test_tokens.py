import json
import math
import struct
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
