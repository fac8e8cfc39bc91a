"""The Gradio demo: its numerics and the app launched for real (the engine behind it is
tested on its own in test_demo_engine.py, the server under load in test_demo_load.py).

One app is launched for the module on a free port of 127.0.0.1 and driven by gradio_client
(every endpoint, bad inputs, 20 requests from 4 clients at once) and by Debian's chromium
through Playwright (no browser download). Every network wait has a timeout. The browser
screenshots are kept in test-artifacts/ at the repository root. The next-scale section runs on
the shipped multi-scale bundle, or, where none is shipped, on a tiny one exported here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqedge.commands import demo as cli
from vqedge.commands.common import MissingExtra
from vqedge.demo.engine import DEFAULT_SCALES_BUNDLE
from vqedge.demo.metrics import code_palette, compression, error_heatmap, ssim, token_image
from vqedge.runtime import list_bundles, load
from vqedge.runtime.images import fit_square
from vqedge.runtime.inputs import read_image
from vqedge.runtime.metrics import psnr
from vqedge.runtime.providers import provider_names, resolve_providers
from vqedge.runtime.tokens import load_tokens

REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"
EXAMPLES = REPO_ROOT / "demo" / "examples"
CHELSEA = EXAMPLES / "chelsea.png"  # the smallest held-out photo: 451x300
START_TIMEOUT = 60  # s for a server to answer /gradio_api/info
CALL_TIMEOUT = 60  # s for one API call
PAGE_TIMEOUT = 60_000  # ms for a browser wait
# gradio 6.31's queue statistics use pandas options that pandas 3 deprecates (harmless here)
pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting' is deprecated"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_info(url: str, timeout: float = START_TIMEOUT) -> dict:
    """Poll /gradio_api/info until the server answers (what Gradio's own browser tests do)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/gradio_api/info", timeout=5) as r:
                return json.load(r)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


# -- numerics (no server) -------------------------------------------------------------------


def test_ssim_matches_scikit_image_and_bounds():
    img = read_image(CHELSEA)[:96, :128]
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 12, img.shape), 0, 255)
    noisy = noisy.astype(np.uint8)
    assert ssim(img, img) == pytest.approx(1.0)
    s = ssim(img, noisy)
    assert 0.0 < s < 1.0
    assert 0.0 < ssim(img[:5, :7], noisy[:5, :7]) <= 1.0  # smaller than the 11x11 window
    metrics = pytest.importorskip("skimage.metrics")
    luma = np.array([0.299, 0.587, 0.114])
    ref = metrics.structural_similarity(
        img @ luma,
        noisy @ luma,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
    )
    assert s == pytest.approx(ref, abs=1e-9)


def test_display_helpers():
    a = np.zeros((5, 6, 3), np.uint8)
    heat = error_heatmap(a, a)
    assert heat.shape == (5, 6, 3) and (heat == heat[0, 0]).all() and heat[0, 0].sum() < 10
    assert error_heatmap(a, a + 200)[0, 0].tolist() == [252, 255, 164]  # saturated: brightest
    c = compression(n_tokens=16 * 16, bits_per_token=10, size=(64, 64), png=4096)
    assert c["bits_per_pixel"] == pytest.approx(10 / 16)
    assert c["ratio_vs_raw_rgb"] == pytest.approx(24 / (10 / 16))
    assert c["ratio_vs_png"] == pytest.approx(8 * 4096 / 64**2 / (10 / 16))
    palette = code_palette(np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32))
    assert palette.shape == (32, 3) and palette.dtype == np.uint8
    idx = np.array([[0, 1], [2, 3]])
    t = token_image(idx, palette, 4, (7, 5))
    assert (
        t.shape == (7, 5, 3) and (t[:4, :4] == palette[0]).all() and (t[4:, 4:] == palette[3]).all()
    )


def test_metrics_text(tok):
    """What the page shows of an analysis: every measure, from the engine's own metrics."""
    pytest.importorskip("gradio")
    from vqedge.demo.app import _metrics_markdown
    from vqedge.demo.engine import Engine

    eng = Engine(max_side=128)
    img = read_image(CHELSEA)[:60, :90]
    text = _metrics_markdown(eng.analyze(img, "fp32", eng.default_provider)["metrics"], "a note")
    assert text.startswith("### PSNR ") and "90x60 px (a note)" in text
    for row in ("tokens", "bits per pixel", "codebook", "latency", "ran"):
        assert f"| {row} |" in text


# -- the launched app -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def ms_bundle(tmp_path_factory) -> str | Path:
    """The shipped multi-scale bundle, or where there is none a tiny one exported here (a
    random model whose codebook is spread like a trained one's; about 64x64 pixels)."""
    if DEFAULT_SCALES_BUNDLE in list_bundles():
        return DEFAULT_SCALES_BUNDLE
    import torch

    from vqedge.export import export_bundle
    from vqedge.models.checkpoint import save_checkpoint
    from vqedge.models.multiscale import build_model
    from vqedge.runtime.config import VQVAEConfig

    cfg = VQVAEConfig(
        base_channels=8,
        channel_mult=(1, 1, 2),
        num_res_blocks=1,
        num_mid_blocks=0,
        codebook_size=64,
        code_dim=4,
        patch_nums=(1, 2, 3, 4, 6, 8, 10, 13, 16),
    )
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.quantize.vq.embedding.weight.normal_(0, 0.5)
    ckpt = save_checkpoint(tmp_path_factory.mktemp("ms-ckpt"), 0, model)
    out = tmp_path_factory.mktemp("ms-bundle") / "tiny-ms"
    export_bundle(ckpt, out, precisions=("fp32",), log=lambda _m: None)
    return out


@pytest.fixture(scope="module")
def ms_tok(ms_bundle):
    return load(ms_bundle)


@pytest.fixture(scope="module")
def served(ms_bundle):
    pytest.importorskip("gradio")
    from vqedge.demo.app import build_app, launch

    demo = build_app(scales_bundle=ms_bundle)
    _, url, share_url = launch(demo, port=_free_port(), prevent_thread_lock=True, quiet=True)
    try:
        _wait_info(url)
        yield demo, url, share_url
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(served, tmp_path_factory):
    from gradio_client import Client

    return Client(
        served[1],
        analytics_enabled=False,
        verbose=False,
        download_files=str(tmp_path_factory.mktemp("downloads")),
    )


@pytest.fixture(scope="module")
def tok():
    return load()


DEFAULT_PROVIDER = provider_names(resolve_providers("auto", "fp32"))[0]


def _call(client, *args, api_name: str):
    return client.submit(*args, api_name=api_name).result(timeout=CALL_TIMEOUT)


def _expected_recon(tok, img: np.ndarray) -> np.ndarray:
    idx, _ = tok.encode_image(img)
    return tok.decode(idx, size=img.shape[:2])[0]


@pytest.mark.slow
def test_offline_settings(served):
    demo, url, share_url = served
    assert share_url is None
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False"
    assert demo.analytics_enabled is False
    assert url.startswith("http://127.0.0.1:")


@pytest.mark.slow
def test_reconstruct_endpoint(served, client, tok):
    from gradio_client import handle_file

    recon_path, tokmap_path, m = _call(client, handle_file(str(CHELSEA)), api_name="/reconstruct")
    img = read_image(CHELSEA)
    assert Path(recon_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # lossless, not WebP
    recon = read_image(recon_path)
    expected = _expected_recon(tok, img)
    assert recon.shape == img.shape
    assert np.abs(recon.astype(int) - expected).max() <= 1
    assert m["psnr_db"] == pytest.approx(psnr(expected, img), abs=0.05)
    assert m["ssim"] == pytest.approx(ssim(img, expected), abs=1e-3)
    h, w = tok.token_shape(*img.shape[:2])
    assert m["token_shape"] == [h, w] and m["image_size"] == list(img.shape[:2])
    assert m["bits_per_pixel"] == pytest.approx(10 * h * w / (img.shape[0] * img.shape[1]))
    assert m["ratio_vs_raw_rgb"] == pytest.approx(24 / m["bits_per_pixel"])
    assert m["ratio_vs_png"] > 1
    assert 0 < m["codes_used"] <= m["codebook_size"] == tok.codebook_size
    assert set(m["latency_ms"]) == {"encode", "decode"}
    assert all(v > 0 for v in m["latency_ms"].values())
    assert m["precision"] == "fp32"
    assert set(m["providers"].values()) == {DEFAULT_PROVIDER}
    assert read_image(tokmap_path).shape == img.shape


@pytest.mark.slow
def test_other_precision_and_provider(client):
    from gradio_client import handle_file

    small = str(EXAMPLES / "flower.jpg")
    _, _, m = _call(
        client, handle_file(small), "int8", "CPUExecutionProvider", api_name="/reconstruct"
    )
    # lenient: a stage whose int8 does not hold its tier here runs fp32, and the plan says so
    assert m["precision"] in ("int8", "encoder fp32, decoder int8") and m["psnr_db"] > 10
    with pytest.raises(Exception, match="fp64 is not in the list of choices"):
        _call(client, handle_file(small), "fp64", api_name="/reconstruct")


@pytest.mark.slow
def test_encode_then_decode_endpoints(client, tok):
    from gradio_client import handle_file

    vqt, tokens = _call(client, handle_file(str(CHELSEA)), api_name="/encode")
    img = read_image(CHELSEA)
    idx = tok.encode(img)
    assert np.array_equal(np.array(tokens["indices"]), idx[0])
    tf = load_tokens(vqt, bundle_sha256=tok.bundle_sha256)
    assert np.array_equal(tf.indices, idx) and tuple(tf.image_size) == img.shape[:2]
    assert tokens["file_bytes"] == Path(vqt).stat().st_size
    decoded = read_image(_call(client, handle_file(vqt), api_name="/decode"))
    assert np.array_equal(decoded, tok.decode(idx, size=img.shape[:2])[0])


@pytest.mark.slow
def test_bad_inputs_give_readable_errors(client, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a PNG" * 20)
    with pytest.raises(Exception, match="'broken.png': cannot read image") as e:
        _call(client, handle_file(str(bad)), api_name="/reconstruct")
    assert "Traceback" not in str(e.value)
    bad_tokens = tmp_path / "broken.vqt"
    bad_tokens.write_bytes(b"VQETOK\x00" + b"\x00" * 40)
    with pytest.raises(Exception, match=r"(?i)token|header|crc|corrupt|truncated"):
        _call(client, handle_file(str(bad_tokens)), api_name="/decode")
    # larger than the demo's max side (1024): downscaled, with a note
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((8, 1100, 3), 128, np.uint8)).save(wide)
    recon, _, m = _call(client, handle_file(str(wide)), api_name="/reconstruct")
    assert m["image_size"] == [7, 1024] and "downscaled from 1100x8" in m["note"]
    assert read_image(recon).shape == (7, 1024, 3)


@pytest.mark.slow
def test_concurrent_load(served, tok, tmp_path):
    """20 requests from 4 clients at once, every answer correct; the queue's limit holds."""
    from gradio_client import Client, handle_file

    demo, url, _ = served
    eng = demo.engine
    photo = read_image(EXAMPLES / "china.jpg")
    crops = [np.ascontiguousarray(photo[18 * i :][:48, 24 * i :][:, :64]) for i in range(20)]
    paths = [tmp_path / f"crop{i}.png" for i in range(20)]
    for path, crop in zip(paths, crops):
        Image.fromarray(crop).save(path)

    running, peak, lock = 0, 0, threading.Lock()
    analyze = eng.analyze

    def counted(*a, **k):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            return analyze(*a, **k)
        finally:
            with lock:
                running -= 1

    eng.analyze = counted
    try:

        def one_client(k: int) -> list[tuple[int, str, dict]]:
            c = Client(url, analytics_enabled=False, verbose=False)
            jobs = [
                (i, c.submit(handle_file(str(paths[i])), api_name="/reconstruct"))
                for i in range(k, 20, 4)
            ]
            return [(i, *j.result(timeout=CALL_TIMEOUT * 2)[::2]) for i, j in jobs]

        with ThreadPoolExecutor(4) as pool:
            answers = [
                a for f in [pool.submit(one_client, k) for k in range(4)] for a in f.result()
            ]
    finally:
        eng.analyze = analyze
    assert sorted(i for i, _, _ in answers) == list(range(20))
    for i, recon_path, m in answers:
        expected = _expected_recon(tok, crops[i])
        assert np.abs(read_image(recon_path).astype(int) - expected).max() <= 1, i
        assert m["image_size"] == [48, 64]
    assert 1 <= peak <= 2  # the demo's default concurrency limit


@pytest.mark.slow
def test_scales_endpoint(client, ms_tok, tmp_path):
    from gradio_client import handle_file

    r = _call(client, handle_file(str(CHELSEA)), api_name="/scales")
    pns, K = list(ms_tok.patch_nums), len(ms_tok.patch_nums)
    assert r["scales"] == pns and r["token_counts"] == [pn * pn for pn in pns]
    assert r["num_tokens"] == sum(r["token_counts"]) == ms_tok.num_tokens
    assert r["image_size"] == [300, 451] and r["resolution"] == ms_tok.resolution
    assert [np.array(t).shape for t in r["tokens"]] == [(pn, pn) for pn in pns]
    fitted = fit_square(read_image(CHELSEA), ms_tok.resolution)
    idx_Bl = ms_tok.img_to_idxBl(fitted)
    assert all(np.array_equal(np.ravel(t), i[0]) for t, i in zip(r["tokens"], idx_Bl))
    recons = ms_tok.idxBl_to_img(idx_Bl, last_one=False)
    assert len(r["psnr_db"]) == K
    assert r["psnr_db"] == pytest.approx([psnr(x[0], fitted) for x in recons], abs=0.01)
    # the finest scale is (near) the best (the fallback's random decoder gives a flat list)
    assert r["psnr_db"][-1] >= max(r["psnr_db"]) - 0.5

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a PNG" * 20)
    with pytest.raises(Exception, match="'broken.png': cannot read image") as e:
        _call(client, handle_file(str(bad)), api_name="/scales")
    assert "Traceback" not in str(e.value)


@pytest.mark.slow
def test_a_multi_scale_main_bundle_is_refused_at_start(ms_bundle, monkeypatch, capsys):
    from vqedge.commands.main import main
    from vqedge.demo import app

    def never(*a, **k):
        raise AssertionError("the demo must not start on a multi-scale --bundle")

    monkeypatch.setattr(app, "launch", never)
    assert main(["demo", "--bundle", str(ms_bundle), "--port", str(_free_port())]) == 1
    assert "pass it as --scales-bundle" in capsys.readouterr().err


@pytest.mark.slow
def test_scales_section_is_off_without_a_bundle(monkeypatch):
    """Nothing shipped, nothing asked for: the section says so instead of failing."""
    import gradio as gr

    from vqedge.demo import app, engine

    monkeypatch.setattr(engine, "list_bundles", lambda: ["vqvae-f4"])
    assert engine.default_scales_bundle() is None
    demo = app.build_app(max_side=64)
    texts = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown)]
    assert any("No multi-scale bundle is available" in (t or "") for t in texts)
    assert demo.scales_engine.name is None


# -- a real browser -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser(served):
    """Debian's chromium, headless; every request that leaves 127.0.0.1 is blocked and listed."""
    from playwright import sync_api

    chromium = shutil.which("chromium")
    if chromium is None:  # `make test` installs it; a browser test never passes without one
        pytest.fail("Debian's chromium is not installed: make browser (apt-get install chromium)")
    outside: list[str] = []
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        try:
            yield b, outside
        finally:
            b.close()
    assert outside == [], f"the page asked for outside resources: {outside}"


@pytest.fixture
def page(browser, served):
    b, outside = browser

    def local_only(route):
        if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    context = b.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(PAGE_TIMEOUT)
    context.route("**/*", local_only)
    pg = context.new_page()
    _wait_info(served[1])
    pg.goto(served[1])
    yield pg
    context.close()


def _screenshot(page, name: str, tmp_path: Path) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / name)
    return path


@pytest.mark.slow
@pytest.mark.browser
def test_browser_corrupt_upload_shows_a_message(page, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a PNG" * 20)
    page.locator("input[type=file]").first.set_input_files(str(bad))
    page.get_by_role("button", name="Tokenize and reconstruct").click()
    page.get_by_text("'broken.png': cannot read image").first.wait_for()
    assert "Traceback" not in page.inner_text("body")
    _screenshot(page, "demo-corrupt-upload.png", tmp_path)


@pytest.mark.slow
@pytest.mark.browser
def test_browser_reconstruct_and_edit_tokens(page, served, tmp_path):
    # the on-device verdict beside the precision choice follows it
    fp32_verdict = page.inner_text("#precision-verdict")
    assert fp32_verdict.startswith("On this device: holds: plan fp32: encoder fp32 keeps")
    page.get_by_label("int8").check()
    # int8's verdict names it (held, or its encoder replaced by fp32), once it has replaced fp32's
    page.wait_for_function(
        "() => document.querySelector('#precision-verdict')?.innerText.includes('int8')"
    )
    int8_verdict = page.inner_text("#precision-verdict")
    assert "holds: plan int8" in int8_verdict or "the encoder runs fp32 instead" in int8_verdict
    page.get_by_label("fp32").check()
    page.locator("input[type=file]").first.set_input_files(str(CHELSEA))
    page.get_by_role("button", name="Tokenize and reconstruct").click()
    page.wait_for_function(
        "() => /PSNR \\d+\\.\\d+ dB/.test(document.querySelector('#metrics')?.innerText || '')"
    )
    text = page.inner_text("#metrics")
    assert "SSIM" in text and "bpp" in text and "encode" in text
    assert DEFAULT_PROVIDER in text
    _screenshot(page, "demo-reconstruction.png", tmp_path)

    # two clicks on the token map select a region; replace its codes and decode
    tokmap = page.locator("#token-map img")
    page.wait_for_function(  # the new token map has loaded and has its final size
        "() => { const i = document.querySelector('#token-map img');"
        " return i && i.complete && i.naturalWidth > 0 && i.getBoundingClientRect().width > 100 }"
    )
    box = tokmap.bounding_box()
    tokmap.click(position={"x": box["width"] * 0.25, "y": box["height"] * 0.25})
    page.get_by_text("now click the opposite corner").wait_for()
    tokmap.click(position={"x": box["width"] * 0.6, "y": box["height"] * 0.6})
    selected = page.get_by_text("selected rows")
    selected.wait_for()
    selection = selected.inner_text()
    page.get_by_role("radio", name="random codes").check()
    page.get_by_role("button", name="Replace and decode").click()
    page.get_by_text("tokens changed now").wait_for()
    changed = int(page.get_by_text("tokens changed now").inner_text().split()[0])
    sliders = [page.get_by_label(n).first.input_value() for n in ("Top row", "Bottom row")]
    assert changed > 50, (selection, sliders)  # a region of about 30x20 tokens
    _screenshot(page, "demo-edited-tokens.png", tmp_path)


@pytest.mark.slow
@pytest.mark.browser
def test_browser_scales_section(page, ms_tok, tmp_path):
    ms = ms_tok
    K = len(ms.patch_nums)
    section = page.locator("#scales")
    section.locator("button.gallery-item:has(img[src$='/chelsea.png'])").click()  # an example
    page.locator("#scales-input img").wait_for()
    section.get_by_role("button", name="Tokenize scale by scale").click()
    for gallery in ("#scales-maps", "#scales-recons"):
        page.wait_for_function(
            f"() => document.querySelectorAll('{gallery} .thumbnail-lg').length === {K}"
        )
    maps = page.inner_text("#scales-maps")
    assert "scale 1: 1 x 1, 1 token" in maps
    pn = ms.patch_nums[-1]
    assert f"scale {K}: {pn} x {pn}, {pn * pn} tokens" in maps
    recons = page.inner_text("#scales-recons")
    assert recons.count(" dB") == K
    summary = page.inner_text("#scales-summary")
    assert f"= {ms.num_tokens} tokens" in summary and "fitted to" in summary
    # every thumbnail really decodes as an image (not only an <img> element)
    for gallery in ("#scales-maps", "#scales-recons"):
        page.locator(gallery).scroll_into_view_if_needed()
        page.wait_for_function(
            f"() => [...document.querySelectorAll('{gallery} .thumbnail-lg img')]"
            f".filter(i => i.complete && i.naturalWidth > 0).length === {K}"
        )
    _screenshot(page, "demo-scales.png", tmp_path)


# -- the command ----------------------------------------------------------------------------


def test_cli_registers_without_heavy_imports():
    code = (
        "import argparse, sys; from vqedge.commands.demo import add_parser; "
        "p = argparse.ArgumentParser(); add_parser(p.add_subparsers(dest='command')); "
        "a = p.parse_args(['demo', '--port', '7999', '--max-side', '512']); "
        "assert (a.port, a.max_side, a.host, a.bundle) == (7999, 512, '127.0.0.1', None); "
        "assert a.scales_bundle is None; "
        "heavy = [m for m in ('gradio', 'onnxruntime', 'torch') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_cli_says_which_extra_without_gradio(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a)
    )
    p = argparse.ArgumentParser()
    cli.add_parser(p.add_subparsers(dest="command"))
    args = p.parse_args(["demo"])
    with pytest.raises(MissingExtra, match=r"pip install 'vqedge\[demo\]'"):
        args.func(args)


@pytest.mark.slow
def test_cli_serves_the_shipped_default(tmp_path):
    pytest.importorskip("gradio")
    port = _free_port()
    code = (
        "import argparse, sys; from vqedge.commands.demo import add_parser; "
        "p = argparse.ArgumentParser(); add_parser(p.add_subparsers(dest='command')); "
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))"
    )
    log = (tmp_path / "demo.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "demo", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=tmp_path,
    )
    try:
        info = _wait_info(f"http://127.0.0.1:{port}/")
        assert {"/reconstruct", "/encode", "/decode", "/scales"} <= set(info["named_endpoints"])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
