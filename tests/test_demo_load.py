"""The demo server under hostile load: 20 requests from 4 gradio_client clients at once, with
oversized images (an 8000x8000 PNG, a 50-megapixel JPEG), files that declare more pixels than
they hold, corrupt files and crafted token files. Every request gets an answer (a result or a
readable error naming the user's file), the server's memory comes back, and its uploads are
deleted when their requests end.

The server runs in a child process (its own RSS, its own upload folder), read from /proc.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqedge.runtime import load
from vqedge.runtime.tokens import save_tokens

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc"),
]
EXAMPLES = Path(__file__).resolve().parents[1] / "demo" / "examples"
MAX_SIDE = 512  # the server's --max-side: large uploads are downscaled to this
RSS_SLACK_MIB = 100  # the server's RSS after the load may exceed its start by at most this
START_TIMEOUT = 120  # s for the server to answer
CALL_TIMEOUT = 240  # s for one request (queued behind others on a busy machine)
SERVER = """
import sys
from vqedge.demo.app import build_app, launch
demo = build_app(max_side=int(sys.argv[2]))
launch(demo, port=int(sys.argv[1]), quiet=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no {field} for process {pid}")


def _png_header_only(path: Path, w: int, h: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _requests(d: Path) -> list[tuple[str, Path, str | None]]:
    """(endpoint, file, None for a result or a regex the error must match), 20 of them."""
    tok = load()
    photo = np.asarray(Image.open(EXAMPLES / "china.jpg").convert("RGB"))
    Image.new("RGB", (8000, 8000), (30, 90, 160)).save(d / "huge-8000.png")
    Image.new("RGB", (8660, 5780), (200, 120, 40)).save(d / "photo-50mp.jpg", quality=85)
    Image.fromarray(photo[:96, :128]).save(d / "crop.png")
    idx, img = tok.encode_image(photo[:64, :80])
    tok.save_tokens(d / "valid.vqt", idx, image_size=img.shape[:2])
    # K = 2 with this bundle's identity: one bit per token, 16 M tokens in 2 MB
    save_tokens(
        d / "crafted.vqt",
        np.zeros((1, 4000, 4000), np.uint8),
        2,
        tok.bundle_sha256,
        image_size=(16000, 16000),
    )
    save_tokens(d / "foreign.vqt", np.zeros((1, 8, 8), np.int64), tok.codebook_size, "0" * 64)
    (d / "truncated.vqt").write_bytes((d / "valid.vqt").read_bytes()[:40])
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a PNG" * 20)
    (d / "not-tokens.vqt").write_bytes(b"some other format" * 4)
    (d / "notes.jpg").write_bytes(b"a text file, named as a photo\n" * 10)
    _png_header_only(d / "bomb-40000.png", 40000, 40000)
    _png_header_only(d / "declared-9000.png", 9000, 9000)
    _png_header_only(d / "empty.png", 64, 64)
    cut = (d / "crop.png").read_bytes()
    (d / "cut.png").write_bytes(cut[: len(cut) // 2])
    for name in ("chelsea.png", "flower.jpg"):
        (d / name).write_bytes((EXAMPLES / name).read_bytes())
    unreadable = r"'{}': cannot read image"
    return [
        ("/reconstruct", d / "huge-8000.png", None),
        ("/reconstruct", d / "photo-50mp.jpg", None),
        ("/encode", d / "huge-8000.png", None),
        ("/scales", d / "photo-50mp.jpg", None),
        ("/reconstruct", d / "chelsea.png", None),
        ("/encode", d / "flower.jpg", None),
        ("/decode", d / "valid.vqt", None),
        ("/scales", d / "crop.png", None),
        ("/reconstruct", d / "crop.png", None),
        ("/decode", d / "crafted.vqt", r"'crafted.vqt': codebook_size K=2 in the file"),
        ("/decode", d / "foreign.vqt", r"'foreign.vqt': tokens made by bundle 0+, not by this"),
        ("/decode", d / "truncated.vqt", r"'truncated.vqt': truncated"),
        ("/reconstruct", d / "bomb-40000.png", r"'bomb-40000.png': image too large"),
        ("/encode", d / "declared-9000.png", r"'declared-9000.png': image is 9000x9000 .* demo's"),
        ("/reconstruct", d / "broken.png", unreadable.format("broken.png")),
        ("/scales", d / "notes.jpg", unreadable.format("notes.jpg")),
        ("/reconstruct", d / "empty.png", unreadable.format("empty.png")),
        ("/reconstruct", d / "cut.png", unreadable.format("cut.png")),
        ("/decode", d / "not-tokens.vqt", r"'not-tokens.vqt': foreign file, not a vqedge token"),
        ("/reconstruct", d / "flower.jpg", None),
    ]


def _check_result(endpoint: str, out) -> None:
    if endpoint == "/reconstruct":
        recon, _, m = out
        h, w = m["image_size"]
        assert max(h, w) <= MAX_SIDE and np.asarray(Image.open(recon)).shape == (h, w, 3)
    elif endpoint == "/encode":
        vqt, tokens = out
        assert Path(vqt).stat().st_size == tokens["file_bytes"] and tokens["indices"]
    elif endpoint == "/decode":
        assert np.asarray(Image.open(out)).shape == (64, 80, 3)
    else:
        assert len(out["tokens"]) == len(out["scales"])


@pytest.fixture
def server(tmp_path):
    """A demo server in a child process with its own upload folder; yields (url, pid, folder)."""
    uploads = tmp_path / "gradio"
    port = _free_port()
    log = (tmp_path / "server.log").open("w")
    env = {**os.environ, "GRADIO_TEMP_DIR": str(uploads)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(port), str(MAX_SIDE)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                assert time.monotonic() < deadline, "the demo server did not start"
                time.sleep(0.5)
        yield url, proc.pid, uploads
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_twenty_hostile_requests_from_four_clients(server, tmp_path):
    from gradio_client import Client, handle_file

    url, pid, upload_dir = server
    files = tmp_path / "files"
    files.mkdir()
    requests = _requests(files)
    assert len(requests) == 20

    warm = Client(url, analytics_enabled=False, verbose=False)
    warm.predict(handle_file(str(EXAMPLES / "chelsea.png")), api_name="/reconstruct")
    warm.predict(handle_file(str(EXAMPLES / "chelsea.png")), api_name="/scales")
    start = _rss_mib(pid)

    def one_client(k: int) -> list[tuple[int, object, str | None]]:
        c = Client(url, analytics_enabled=False, verbose=False)
        jobs = [
            (i, c.submit(handle_file(str(requests[i][1])), api_name=requests[i][0]))
            for i in range(k, 20, 4)
        ]
        answers = []
        for i, job in jobs:
            try:
                answers.append((i, job.result(timeout=CALL_TIMEOUT), None))
            except Exception as e:  # the server's refusal, as gradio_client raises it
                answers.append((i, None, str(e)))
        return answers

    with ThreadPoolExecutor(4) as pool:
        answers = [a for f in [pool.submit(one_client, k) for k in range(4)] for a in f.result()]
    peak = _rss_mib(pid, "VmHWM")

    assert sorted(i for i, _, _ in answers) == list(range(20))
    for i, out, error in answers:
        endpoint, path, expected = requests[i]
        if expected is None:
            assert error is None, (endpoint, path.name, error)
            _check_result(endpoint, out)
        else:
            assert error is not None and re.search(expected, error), (path.name, error)
            assert str(tmp_path) not in error and "Traceback" not in error
            assert "force=True" not in error

    # memory comes back once the requests are done (the last response may still be sending)
    deadline = time.monotonic() + 30
    while (end := _rss_mib(pid)) > start + RSS_SLACK_MIB and time.monotonic() < deadline:
        time.sleep(1)
    print(f"server RSS: {start:.0f} MiB after warm-up, peak {peak:.0f}, after the load {end:.0f}")
    assert end <= start + RSS_SLACK_MIB, (start, peak, end)

    names = {p.name for _, p, _ in requests}
    left = [p for p in upload_dir.rglob("*") if p.is_file() and p.name in names]
    assert left == [], left
