"""The demo's engine on its own (no gradio, no server): uploads read within the demo's limits,
analysis, token files and editing, and the next-scale section, on the shipped bundles."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqedge.demo.engine import (
    DEFAULT_SCALES_BUNDLE,
    MODES,
    Engine,
    ScalesEngine,
    read_upload,
    user_message,
)
from vqedge.runtime import load
from vqedge.runtime.images import fit_square
from vqedge.runtime.manifest import BundleError
from vqedge.runtime.metrics import psnr
from vqedge.runtime.tokens import save_tokens

EXAMPLES = Path(__file__).resolve().parents[1] / "demo" / "examples"
CHELSEA = EXAMPLES / "chelsea.png"  # 451x300


def _png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG that declares w x h pixels and holds none (a few dozen bytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def eng() -> Engine:
    return Engine(max_side=256)


def test_the_verdict_of_each_precision_is_shown_beside_it(eng):
    for precision in eng.precisions:
        if precision == "bf16":
            continue  # the OpenVINO flavour's own test covers it
        text = eng.verdict(precision, "CPUExecutionProvider")
        v = eng.tokenizer(precision, "CPUExecutionProvider").verification
        assert text == f"**On this device:** {v.describe()}", text
        # the demo loads leniently: a stage whose check fails here runs fp32, and says so
        if v.fell_back:
            assert f"the {' and '.join(v.fell_back)} runs fp32 instead" in text
        else:
            assert text.startswith("**On this device:** holds: plan"), text
        assert "of fp32's tokens" in text
        assert "from fp32's decode" in text or "the decoder runs fp32" in text


@pytest.fixture(scope="module")
def tok():
    return load(max_side=256)


@pytest.fixture(scope="module")
def chelsea() -> np.ndarray:
    return np.asarray(Image.open(CHELSEA).convert("RGB"))


# -- reading uploads ------------------------------------------------------------------------


def test_read_upload_within_limits(chelsea):
    img, note = read_upload(CHELSEA, max_side=1024)
    assert np.array_equal(img, chelsea) and note == ""


def test_read_upload_downscales_or_refuses_by_max_side(tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(np.full((40, 80, 3), 90, np.uint8)).save(path)
    img, note = read_upload(path, max_side=64)
    assert img.shape == (32, 64, 3) and note == "downscaled from 80x40 to 64x32 (limit 64 px)"
    with pytest.raises(
        ValueError, match=r"'wide.png': image is 80x40, .* demo's limit of 64 .*--max-side"
    ):
        read_upload(path, max_side=64, oversize="refuse")
    with pytest.raises(ValueError, match="no image"):
        read_upload(None)


def test_large_jpeg_is_downscaled_not_called_corrupt(tmp_path):
    """A valid 50-megapixel JPEG: decoded at reduced scale, then fitted to the max side."""
    path = tmp_path / "big photo.jpg"
    w, h = 8660, 5780  # 50.05 M pixels
    Image.new("RGB", (w, h), (200, 120, 40)).save(path, quality=80)
    img, note = read_upload(path, max_side=1024)
    assert img.shape == (round(h * 1024 / w), 1024, 3)
    assert note == f"downscaled from {w}x{h} to 1024x{img.shape[0]} (limit 1024 px)"
    assert np.abs(img.astype(int) - (200, 120, 40)).max() <= 3


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    over = _png_header_only(tmp_path / "huge.png", 9000, 9000)  # 81 M pixels, no pixel data
    with pytest.raises(
        ValueError,
        match=r"'huge.png': image is 9000x9000 \(81000000 pixels\), over the demo's limit",
    ):
        read_upload(over, max_side=1024)
    bomb = _png_header_only(tmp_path / "bomb.png", 40000, 40000)  # beyond Pillow's own limit
    with pytest.raises(ValueError, match=r"'bomb.png': image too large"):
        read_upload(bomb, max_side=1024)
    # within the limits, a header without pixels is a truncated file, said so
    empty = _png_header_only(tmp_path / "empty.png", 20, 10)
    with pytest.raises(ValueError, match="'empty.png': cannot read image: corrupt or truncated"):
        read_upload(empty)


def test_not_an_image(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a PNG" * 20)
    with pytest.raises(ValueError, match="'broken.png': cannot read image") as e:
        read_upload(bad)
    assert str(tmp_path) not in str(e.value)


def test_sixteen_bit_grey_is_scaled_not_saturated(tmp_path):
    path = tmp_path / "grey16.png"
    ramp = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    img, _ = read_upload(path)
    assert img.shape == (32, 64, 3) and img[0, 0, 0] == 0 and img[-1, -1, 0] == 255
    assert 120 <= img[16, 0, 0] <= 135  # the middle of the ramp, not 255


def test_user_message_hides_server_paths_and_python_advice(tmp_path):
    path = tmp_path / "abc123" / "mine.vqt"
    e = ValueError(
        f"{path}: tokens made by bundle x, not by this bundle y; pass force=True to load"
    )
    msg = user_message(e, path)
    assert msg == "'mine.vqt': tokens made by bundle x, not by this bundle y"


# -- the single-scale engine ----------------------------------------------------------------


def test_analyze(eng, tok, chelsea):
    img = chelsea[:64, :96]
    r = eng.analyze(img, "fp32", eng.default_provider)
    idx, _ = tok.encode_image(img)
    assert np.array_equal(r["idx"], idx[0])
    expected = tok.decode(idx, size=img.shape[:2])[0]
    assert np.abs(r["recon"].astype(int) - expected).max() <= 1
    m = r["metrics"]
    assert m["image_size"] == [64, 96] and m["token_shape"] == list(tok.token_shape(64, 96))
    assert m["tokens"] == tok.describe_tokens(idx)
    assert m["psnr_db"] == pytest.approx(psnr(expected, img), abs=0.05)
    assert set(m["latency_ms"]) == {"encode", "decode"}
    assert 0 < m["codes_used"] <= m["codebook_size"] == eng.K
    assert r["token_map"].shape == r["heatmap"].shape == img.shape


def test_options_are_checked(eng):
    with pytest.raises(ValueError, match="precision must be one of"):
        eng.tokenizer("fp64", eng.default_provider)
    with pytest.raises(ValueError, match="provider must be one of"):
        eng.tokenizer("fp32", "NoSuchExecutionProvider")
    with pytest.raises(ValueError, match="oversize must be one of"):
        Engine(oversize="crop")


def test_encode_then_decode_file(eng, tok, chelsea, tmp_path):
    img = chelsea[:60, :90]
    vqt, tokens = eng.encode(img, "fp32", eng.default_provider, "crop")
    assert vqt.name == "crop.vqt" and tokens["file_bytes"] == vqt.stat().st_size
    idx = np.array(tokens["indices"])[None]
    out = eng.decode_file(vqt, "fp32", eng.default_provider)
    assert np.array_equal(out, tok.decode(idx, size=(60, 90))[0])


def test_decode_file_refusals_name_the_users_file(eng, tmp_path):
    folder = tmp_path / "server-temp-dir"
    folder.mkdir()
    foreign = folder / "other.vqt"
    save_tokens(foreign, np.zeros((1, 4, 4), np.int64), eng.K, "0" * 64, image_size=(16, 16))
    with pytest.raises(ValueError, match=r"^'other.vqt': tokens made by bundle 0+,") as e:
        eng.decode_file(foreign, "fp32", eng.default_provider)
    assert "force" not in str(e.value) and str(folder) not in str(e.value)
    # a map larger than the demo's max side (256 px = 64 tokens at f=4)
    side = 256 // eng.f + 1
    big = folder / "big.vqt"
    eng.base.save_tokens(big, np.zeros((1, side, side), np.int64))
    with pytest.raises(ValueError, match=r"'big.vqt': shapes \[\[1, 65, 65\]\]: .* limit of 64"):
        eng.decode_file(big, "fp32", eng.default_provider)
    # a crafted file: refused from its header, before its 200 kB are read
    crafted = folder / "crafted.vqt"
    crafted.write_bytes(b"VQETOK\x00" + b"\x00" * 200_000)
    with pytest.raises(ValueError, match=r"'crafted.vqt': corrupt token file"):
        eng.decode_file(crafted, "fp32", eng.default_provider)
    with pytest.raises(ValueError, match="no token file"):
        eng.decode_file(None, "fp32", eng.default_provider)


def test_replacing_codes(eng, tok, chelsea):
    idx = tok.encode(chelsea[:64, :96])[0]  # [16, 24]
    region = (2, 5, 3, 9)  # rows 2..5, columns 3..9, inclusive
    inside = (slice(2, 6), slice(3, 10))
    outside = np.ones(idx.shape, bool)
    outside[inside] = False

    one, box = eng.replace(idx, (5, 2, 9, 3), MODES[0], code=7)  # corners in any order
    assert box == region and (one[inside] == 7).all()
    assert np.array_equal(one[outside], idx[outside])
    r1, _ = eng.replace(idx, region, MODES[1], seed=3)
    r2, _ = eng.replace(idx, region, MODES[1], seed=3)
    assert np.array_equal(r1, r2) and r1.max() < eng.K and np.array_equal(r1[outside], idx[outside])
    other = np.asarray(Image.open(EXAMPLES / "flower.jpg").convert("RGB"))
    mixed, _ = eng.replace(idx, region, MODES[2], other=other, tok=tok)
    other_idx = tok.encode(np.asarray(Image.fromarray(other).resize((96, 64), Image.LANCZOS)))
    assert np.array_equal(mixed[inside], other_idx[0][inside])
    assert np.array_equal(mixed[outside], idx[outside])
    with pytest.raises(ValueError, match="code must be in"):
        eng.replace(idx, region, MODES[0], code=eng.K)


def test_editing_session(eng, tok, chelsea):
    img = chelsea[:64, :96]
    r = eng.analyze(img, "fp32", eng.default_provider)
    st = eng.start_edit(img, r["idx"])
    assert st.default_region() == (4, 7, 6, 11)
    box, msg = st.click(5, 9)
    assert box == (5, 5, 9, 9) and "opposite corner" in msg
    box, msg = st.click(2, 3)
    assert box == (2, 5, 3, 9) and msg.endswith("(28 tokens)") and st.anchor is None
    out, box, msg = eng.apply_edit(st, box, MODES[0], 7, 0, None, "fp32", eng.default_provider)
    assert (st.edited[2:6, 3:10] == 7).all() and msg.startswith("28 tokens changed now, 28 in all")
    assert np.array_equal(out, tok.decode(st.edited[None], size=(64, 96))[0])
    assert np.array_equal(st.idx, r["idx"])  # the original tokens are kept for a reset


# -- the next-scale section -----------------------------------------------------------------


@pytest.fixture(scope="module")
def ms() -> ScalesEngine:
    return ScalesEngine(DEFAULT_SCALES_BUNDLE)


def test_scales_analyze(ms, chelsea):
    r = ms.analyze(chelsea)
    R = ms.resolution
    assert np.array_equal(r["fitted"], fit_square(chelsea, R))
    assert [m.shape for m in r["maps"]] == [(pn, pn) for pn in ms.tok.patch_nums]
    assert len(r["recons"]) == len(r["psnr_db"]) == len(ms.tok.patch_nums)
    assert r["psnr_db"][-1] == pytest.approx(psnr(r["recons"][-1], r["fitted"]), abs=1e-6)
    assert r["psnr_db"][-1] > r["psnr_db"][0]  # finer scales add detail
    j = ms.to_json(r, chelsea.shape[:2], "")
    assert j["num_tokens"] == sum(j["token_counts"]) == ms.num_tokens
    maps, recons = ms.galleries(r)
    assert maps[0][1] == "scale 1: 1 x 1, 1 token" and len(recons) == len(ms.tok.patch_nums)
    assert f"fitted to {R}x{R}" in ms.intro()


def test_each_engine_takes_its_kind_of_bundle():
    with pytest.raises(BundleError, match="multi-scale bundle.*pass it as --scales-bundle"):
        Engine(DEFAULT_SCALES_BUNDLE)
    with pytest.raises(BundleError, match="single-scale bundle.*pass it as --bundle"):
        ScalesEngine("vqvae-f4")
    none = ScalesEngine(None)
    assert not none.available and "--scales-bundle" in none.unavailable_message()
    with pytest.raises(ValueError, match="No multi-scale bundle is available"):
        none.analyze(np.zeros((8, 8, 3), np.uint8))


def test_exif_orientation_is_applied_before_downscaling(tmp_path):
    path = tmp_path / "portrait.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise
    Image.new("RGB", (120, 60), (10, 200, 10)).save(path, exif=exif)
    img, note = read_upload(path, max_side=80)
    assert img.shape == (80, 40, 3) and note == "downscaled from 60x120 to 40x80 (limit 80 px)"
