"""Fuzz the two parsers of user files (images, .vqt token files) from bytes: each input gives
a result or a ValueError subclass, never another exception, and costs bounded memory."""

import io
import json
import random
import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features

from vqedge.runtime.inputs import read_image
from vqedge.runtime.tokens import FORMAT_VERSION, TokenFile, bits_for, load_tokens, save_tokens

SHA = "ab" * 32
# what a fuzzed file may decode to: small, so that a mutated header declaring a large image
# stays cheap, and the memory bounds below mean something
MAX_PIXELS = 2**20
MAX_TOKENS = 2**20
# traced (numpy and Python) allocations one input may peak at
TRACED_MIB = 48
# peak RSS growth a child process may show over a few hundred fuzzed inputs
RSS_MIB = 160
FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _image_seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    seeds = {}
    for name, im, fmt, kw in [
        ("png", Image.fromarray(rgb), "PNG", {}),
        ("png16", Image.fromarray(rgb[..., 0].astype(np.uint16) * 257), "PNG", {}),
        ("rgba", Image.fromarray(np.dstack([rgb, rgb[..., :1]]), "RGBA"), "PNG", {}),
        ("palette", Image.fromarray(rgb).quantize(16), "PNG", {"transparency": 0}),
        ("jpeg", Image.fromarray(rgb), "JPEG", {"quality": 90, "exif": exif.tobytes()}),
        ("gif", Image.fromarray(rgb).quantize(16), "GIF", {}),
        ("bmp", Image.fromarray(rgb), "BMP", {}),
        ("tiff", Image.fromarray(rgb).convert("CMYK"), "TIFF", {}),
        ("ppm", Image.fromarray(rgb), "PPM", {}),
    ] + ([("webp", Image.fromarray(rgb), "WEBP", {})] if features.check("webp") else []):
        buf = io.BytesIO()
        im.save(buf, fmt, **kw)
        seeds[name] = buf.getvalue()
    return seeds


def _token_seed() -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "t.vqt"
        maps = [np.arange(p * p).reshape(1, p, p) % 1000 for p in (1, 2, 3)]
        save_tokens(path, maps, 1000, SHA, image_size=(48, 48))
        return path.read_bytes()


IMAGE_SEEDS = _image_seeds()
TOKEN_SEED = _token_seed()


def mutate(data: bytes, rnd: random.Random) -> bytes:
    """A few byte flips, overwrites, cuts, duplications or insertions of ``data``."""
    out = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(5)
        i = rnd.randrange(len(out)) if out else 0
        if op == 0 and out:
            out[i] ^= 1 << rnd.randrange(8)
        elif op == 1 and out:
            out[i] = rnd.choice((0, 0xFF, 0x7F, 0x80, rnd.randrange(256)))
        elif op == 2:
            del out[rnd.randrange(len(out) + 1) :]
        elif op == 3:
            j = rnd.randrange(len(out) + 1)
            out[j:j] = out[i : i + rnd.randint(1, 64)]
        else:
            out[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 16)))
    return bytes(out)


def check_image(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        img = read_image(path, max_pixels=MAX_PIXELS)
    except ValueError:
        return
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[0] * img.shape[1] <= MAX_PIXELS


def check_tokens(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        tf = load_tokens(path, max_tokens=MAX_TOKENS)
    except ValueError:
        return
    assert isinstance(tf, TokenFile)
    assert all(
        s.dtype == np.int64 and s.min() >= 0 and s.max() < tf.codebook_size for s in tf.scales
    )
    assert sum(s.size for s in tf.scales) <= MAX_TOKENS


def traced_peak_mib(fn, *args) -> float:
    tracemalloc.start()
    try:
        fn(*args)
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


@FUZZ
@given(data=st.binary(max_size=2048))
def test_image_from_random_bytes(tmp_path, data):
    check_image(tmp_path / "x.img", data)


@FUZZ
@given(
    magic=st.sampled_from([b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\0"]),
    data=st.binary(max_size=1024),
)
def test_image_from_a_magic_number_and_random_bytes(tmp_path, magic, data):
    check_image(tmp_path / "x.img", magic + data)


@FUZZ
@given(seed=st.sampled_from(sorted(IMAGE_SEEDS)), rnd=st.randoms(use_true_random=False))
def test_image_from_a_mutated_valid_file(tmp_path, seed, rnd):
    data = mutate(IMAGE_SEEDS[seed], rnd)
    assert traced_peak_mib(check_image, tmp_path / "x.img", data) < TRACED_MIB


@FUZZ
@given(data=st.binary(max_size=1024))
def test_tokens_from_random_bytes(tmp_path, data):
    check_tokens(tmp_path / "x.vqt", data)


@FUZZ
@given(rnd=st.randoms(use_true_random=False))
def test_tokens_from_a_mutated_valid_file(tmp_path, rnd):
    data = mutate(TOKEN_SEED, rnd)
    assert traced_peak_mib(check_tokens, tmp_path / "x.vqt", data) < TRACED_MIB


json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=8)
)
header_value = st.one_of(
    json_scalar,
    st.lists(st.integers(-3, 2**40), max_size=4),
    st.lists(st.lists(st.integers(-3, 2**40), max_size=4), max_size=4),
)


@FUZZ
@given(
    overrides=st.dictionaries(
        st.sampled_from(
            ["codebook_size", "bits", "shapes", "image_size", "payload_bytes", "bundle_sha256"]
        ),
        header_value,
        max_size=3,
    ),
    payload=st.binary(max_size=256),
)
def test_tokens_from_a_fuzzed_header_with_right_checksums(tmp_path, overrides, payload):
    """Headers the crc32 lets through: every field fuzzed, checksums recomputed."""
    header = {
        "format_version": FORMAT_VERSION,
        "codebook_size": 1000,
        "bits": bits_for(1000),
        "bundle_sha256": SHA,
        "image_size": None,
        "shapes": [[1, 8, 8]],
        "payload_bytes": 80,
        "payload_crc32": zlib.crc32(payload),
        **overrides,
    }
    raw = json.dumps(header).encode()
    data = struct.pack("<7sBII", b"VQETOK\0", FORMAT_VERSION, len(raw), zlib.crc32(raw))
    assert traced_peak_mib(check_tokens, tmp_path / "x.vqt", data + raw + payload) < TRACED_MIB


CHILD = """
import random, resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import test_fuzz_inputs as t
parser, n, folder = sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
check, seeds = (
    (t.check_image, list(t.IMAGE_SEEDS.values())) if parser == "image" else
    (t.check_tokens, [t.TOKEN_SEED])
)
check(folder / "warm", seeds[0])  # load the decoders before the baseline
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
rnd = random.Random(0)
for i in range(n):
    check(folder / "x", t.mutate(seeds[i % len(seeds)], rnd))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


@pytest.mark.parametrize("parser", ["image", "tokens"])
def test_fuzzed_inputs_peak_rss_in_a_child(tmp_path, parser):
    """Peak RSS (Pillow's allocations included, which tracemalloc does not see) of a fresh
    process reading a few hundred mutated files."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(Path(__file__).parent), parser, "400", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    mib = float(out.stdout.strip().splitlines()[-1])
    print(f"{parser}: peak RSS +{mib:.1f} MiB over 400 mutated files")
    assert mib < RSS_MIB
