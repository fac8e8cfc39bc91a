"""read_image: sizes refused from the header, every Pillow mode to RGB, EXIF orientation."""

import io
import json
import struct
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from vqedge.runtime.images import float_to_uint8
from vqedge.runtime.inputs import (
    MAX_PIXELS,
    ImageError,
    read_image,
    to_batch,
    to_uint8_image,
)

# peak RSS a refused file may add to a process that has imported numpy and Pillow
REFUSAL_RSS_MIB = 64


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path, width: int, height: int, bit_depth: int, color: int, rows: int | None) -> None:
    """A PNG that declares width x height; ``rows`` zero rows of pixel data (None: all of them),
    compressed in a stream so that writing a huge image costs no memory."""
    row = 1 + (width * bit_depth * {0: 1, 2: 3, 4: 2, 6: 4}[color] + 7) // 8
    comp = zlib.compressobj(9)
    idat = bytearray()
    zero = bytes(row)
    for _ in range(height if rows is None else rows):
        idat += comp.compress(zero)
    idat += comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", bytes(idat))
        + png_chunk(b"IEND", b"")
    )


def test_declared_huge_png_is_an_image_error(tmp_path):
    path = tmp_path / "bomb.png"
    write_png(path, 40000, 40000, 8, 2, rows=1)
    assert path.stat().st_size < 2000
    with pytest.raises(ImageError, match=r"bomb\.png.*1600000000 pixels"):
        read_image(path)
    with pytest.raises(ValueError, match=r"bomb\.png"):  # what the tokenizer's encode sees
        to_batch([path], max_side=4096)


@pytest.mark.parametrize(
    ("side", "kwargs", "match"),
    [
        (9000, {}, rf"9000x9000 \(81000000 pixels\), over the limit of {MAX_PIXELS}"),
        (5000, {"max_side": 4096}, "5000x5000, its longer side 5000 is over the limit of 4096"),
        (3000, {"max_pixels": 4_000_000}, "3000x3000 .* over the limit of 4000000"),
    ],
)
def test_size_refused_from_header(tmp_path, side, kwargs, match):
    path = tmp_path / "big.png"
    write_png(path, side, side, 1, 0, rows=None)
    with pytest.raises(ImageError, match=match):
        read_image(path, **kwargs)


PEAK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, PIL.Image, PIL.PngImagePlugin, PIL.JpegImagePlugin
    from vqedge.runtime.inputs import read_image
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        read_image(sys.argv[1], max_side=int(sys.argv[2]) if sys.argv[2] != "-" else None)
        outcome = "read"
    except ValueError as e:
        outcome = type(e).__name__
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"outcome": outcome, "mib": (peak - base) / 1024}))
    """
)


def peak_read(path, max_side) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path), str(max_side or "-")],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("width", "depth", "color", "rows", "max_side"),
    [
        (40000, 8, 2, 1, None),  # declared, 1 row of data
        (12000, 1, 0, None, None),  # complete 1-bit PNG, 17 KB on disk
        (12000, 1, 0, None, 4096),
        (9000, 1, 0, None, 4096),
    ],
)
def test_refused_image_costs_no_memory(tmp_path, width, depth, color, rows, max_side):
    path = tmp_path / "big.png"
    write_png(path, width, width, depth, color, rows)
    result = peak_read(path, max_side)
    print(f"{width}x{width} {path.stat().st_size} B: peak +{result['mib']:.1f} MiB")
    assert result["outcome"] == "ImageError"
    assert result["mib"] < REFUSAL_RSS_MIB


def test_16_bit_gray_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 128, 257, 32768], [40000, 65280, 65534, 65535]], np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    img = read_image(path)
    expected = np.rint(values / 257.0).astype(np.uint8)
    assert img.shape == (2, 4, 3) and img.dtype == np.uint8
    assert np.array_equal(img[..., 0], expected)
    assert np.array_equal(img[..., 0], img[..., 2])
    assert img.min() == 0 and img.max() == 255 and len(np.unique(img)) == 6


def gradient(h=6, w=10) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 25, y * 40, (x + y) * 12], axis=-1).astype(np.uint8)


def save(im: Image.Image, fmt: str, **kw) -> io.BytesIO:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf


MODE_CASES = {
    # name: (PIL image, format, expected RGB from the same pixels)
    "1": lambda g: (Image.fromarray(g[..., 0] > 127), "PNG", np.where(g[..., :1] > 127, 255, 0)),
    "L": lambda g: (Image.fromarray(g[..., 0]), "PNG", g[..., :1]),
    "I;16B": lambda g: (
        Image.frombytes("I;16B", g.shape[1::-1], (g[..., 0].astype(">u2") * 257).tobytes()),
        "TIFF",
        g[..., :1],
    ),
    "I (16-bit PPM)": lambda g: (
        Image.fromarray(g[..., 0].astype(np.int32) * 257, "I"),
        "PPM",
        g[..., :1],
    ),
    "F (0..1)": lambda g: (
        Image.fromarray(g[..., 0].astype(np.float32) / 255, "F"),
        "TIFF",
        g[..., :1],
    ),
    "P": lambda g: (Image.fromarray(g).quantize(256, dither=0), "PNG", None),
    "RGB": lambda g: (Image.fromarray(g), "PNG", g),
    "CMYK": lambda g: (Image.fromarray(g).convert("CMYK"), "TIFF", g),
    "YCbCr": lambda g: (Image.fromarray(g).convert("YCbCr"), None, None),
    "HSV": lambda g: (Image.fromarray(g).convert("HSV"), None, None),
}


@pytest.mark.parametrize("name", list(MODE_CASES))
def test_every_mode_reads_as_rgb(tmp_path, name):
    g = gradient()
    im, fmt, expected = MODE_CASES[name](g)
    if fmt is None:  # modes no format here writes and reads back: as PIL images only
        img = to_uint8_image(im)
    else:
        path = tmp_path / f"img.{fmt.lower()}"
        path.write_bytes(save(im, fmt).getvalue())
        assert Image.open(path).mode == im.mode
        img = read_image(path)
        # a PIL image of the same mode goes through the same conversion
        assert np.array_equal(to_uint8_image(Image.open(path)), img)
    assert img.shape == (6, 10, 3) and img.dtype == np.uint8
    if expected is None:  # lossy conversions: near the original
        assert np.abs(img.astype(int) - g).max() <= 16
    else:
        assert np.array_equal(img, np.broadcast_to(expected, img.shape).astype(np.uint8))


def test_alpha_composited_on_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = (200, 0, 0)
    rgba[..., 3] = [[0, 128, 255], [255, 255, 0]]
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    img = read_image(path)
    assert img[0, 0].tolist() == [255, 255, 255]  # transparent: white, not the hidden red
    assert img[0, 2].tolist() == [200, 0, 0]
    assert img[0, 1].tolist() == [227, 127, 127]  # half: the mix
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    assert to_uint8_image(la)[0, 0].tolist() == [255, 255, 255]
    assert to_uint8_image(la)[0, 2].tolist() == [200, 200, 200]
    premultiplied = Image.fromarray(rgba, "RGBA").convert("RGBa")
    assert np.abs(to_uint8_image(premultiplied).astype(int) - img).max() <= 1
    pal = Image.fromarray(rgba[..., :3]).quantize(4)
    pal.info["transparency"] = int(np.asarray(pal)[0, 0])
    assert to_uint8_image(pal)[0, 0].tolist() == [255, 255, 255]


def jpeg_with_orientation(g: np.ndarray, orientation: int | None) -> bytes:
    im = Image.fromarray(g)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    return save(im, "JPEG", quality=95, exif=exif.tobytes()).getvalue()


def test_exif_orientation_6_applied(tmp_path):
    g = gradient(8, 16)
    plain, rotated = tmp_path / "plain.jpg", tmp_path / "phone.jpg"
    plain.write_bytes(jpeg_with_orientation(g, None))
    rotated.write_bytes(jpeg_with_orientation(g, 6))
    img = read_image(rotated)
    assert img.shape == (16, 8, 3)  # portrait, as the phone was held
    assert np.array_equal(img, np.rot90(read_image(plain), -1))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow(tmp_path, orientation):
    path = tmp_path / "o.jpg"
    path.write_bytes(jpeg_with_orientation(gradient(8, 16), orientation))
    with Image.open(path) as im:
        expected = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    assert np.array_equal(read_image(path), expected)


def test_jpeg_downscaled_while_decoding(tmp_path):
    path = tmp_path / "photo.jpg"
    big = np.asarray(Image.fromarray(gradient(30, 40)).resize((4000, 3000)))
    Image.fromarray(big).save(path, quality=80)
    with pytest.raises(ImageError, match="4000x3000 .* over the limit of 1000000"):
        read_image(path, max_pixels=1_000_000)
    # decodes at 1/4 (1000x750) then Lanczos to 500x375: within the budget
    img = read_image(path, max_pixels=1_000_000, downscale_to=500)
    assert img.shape == (375, 500, 3)
    assert read_image(tmp_path / "photo.jpg", downscale_to=8000).shape == (3000, 4000, 3)


def test_png_downscaled_after_decoding(tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(gradient(60, 90)).save(path)
    assert read_image(path, downscale_to=30).shape == (20, 30, 3)
    with pytest.raises(ImageError, match="over the limit of 1000 pixels"):
        read_image(path, max_pixels=1000, downscale_to=30)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "cannot read image: not a PNG/JPEG"),
        (b"not an image at all", "cannot read image: not a PNG/JPEG"),
        (
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
            "cannot read image: not a PNG/JPEG",
        ),
    ],
)
def test_unreadable_files_name_the_file(tmp_path, data, match):
    path = tmp_path / "x.png"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=rf"x\.png: {match}"):
        read_image(path)


def test_truncated_and_corrupt_images(tmp_path):
    good = save(Image.fromarray(gradient(64, 64)), "PNG").getvalue()
    path = tmp_path / "t.png"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ImageError, match=r"t\.png: cannot read image: corrupt or truncated"):
        read_image(path)
    jpg = bytearray(jpeg_with_orientation(gradient(64, 64), None))
    path.write_bytes(bytes(jpg[: len(jpg) - 200]))
    with pytest.raises(ImageError, match=r"t\.png"):
        read_image(path)
    with pytest.raises(FileNotFoundError, match="image file not found"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ImageError, match=r"^upload\.png: cannot read image") as e:
        read_image(path, name="upload.png")  # a server names the user's file, not its path
    assert str(tmp_path) not in str(e.value)


def test_arrays_and_batches_checked_against_max_side():
    img = np.zeros((10, 20, 3), np.uint8)
    assert to_uint8_image(img, max_side=20) is img
    with pytest.raises(ImageError, match="longer side 20 is over the limit of 19"):
        to_uint8_image(img, max_side=19)
    pil = Image.fromarray(np.zeros((10, 30), np.uint16))
    with pytest.raises(ImageError, match="PIL image: image is 30x10"):
        to_batch([pil], max_side=16)


def test_one_uint8_converter():
    x = np.random.default_rng(0).uniform(-1.2, 1.2, (2, 3, 5, 4)).astype(np.float32)
    out = float_to_uint8(x)
    assert out.shape == (2, 5, 4, 3)
    assert np.array_equal(out[0], float_to_uint8(x[0]))
    assert out[x.transpose(0, 2, 3, 1) >= 1].min() == 255
    assert float_to_uint8(np.zeros((1, 3, 1, 1)))[0, 0, 0].tolist() == [128, 128, 128]
