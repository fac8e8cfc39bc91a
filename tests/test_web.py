"""vqedge-web (web/): its Node unit tests, and the package and page in Debian's chromium.

The page is served by ``vqedge.demo.webpage`` (what ``vqedge web`` runs) on a free port of
127.0.0.1; every request that leaves it is blocked and listed. The parity tests run the
package's public API inside the page on images the tests make and compare with the Python
runtime on onnxruntime's CPU provider: tokens equal (fp32 on WASM, float-rounding ties apart),
decoded images within one level. Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from test_demo import BROWSER_ARGS, CHELSEA, PAGE_TIMEOUT, _screenshot
from test_export_families import llamagen_bundle, llamagen_file  # noqa: F401 (fixtures)

from vqedge.demo.webpage import ISOLATION_HEADERS, WebPageError, serve, web_files
from vqedge.export.validate import TIE_RTOL
from vqedge.models.data import held_out_paths
from vqedge.runtime import load
from vqedge.runtime.images import fit_square
from vqedge.runtime.inputs import read_image
from vqedge.runtime.metrics import psnr
from vqedge.runtime.session import bundle_path
from vqedge.runtime.tokens import load_tokens, save_tokens

WEB = Path(__file__).resolve().parents[1] / "web"
SHIPPED = ("vqvae-f4", "vqvae-ms-f8")
NODE_TIMEOUT = 300  # s for the Node unit tests
# helpers the tests put in the page: bytes to and from base64, an ImageData from RGBA bytes
PAGE_HELPERS = """
window.__img = (b64, w, h) => {
  const bin = atob(b64); const d = new Uint8ClampedArray(bin.length);
  for (let i = 0; i < bin.length; i++) d[i] = bin.charCodeAt(i);
  return new ImageData(d, w, h);
};
window.__b64 = (u8) => {
  let s = "";
  for (let i = 0; i < u8.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, u8.subarray(i, i + 0x8000));
  }
  return btoa(s);
};
"""


def _rgba_b64(rgb: np.ndarray) -> str:
    h, w, _ = rgb.shape
    rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
    return base64.b64encode(rgba.tobytes()).decode()


def _rgb_from_b64(b64: str, h: int, w: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(h, w, 4)[..., :3]


def _test_images(seed: int = 0) -> list[np.ndarray]:
    """Photo crops of sizes that are and are not multiples of f, and noise."""
    rng = np.random.default_rng(seed)
    photo = read_image(CHELSEA)
    return [
        photo[:45, :61],  # 45x61: edge padding on both sides
        photo[20:276, 100:356],  # 256x256
        rng.integers(0, 256, (64, 40, 3), dtype=np.uint8),
    ]


def _mismatches(tok, img: np.ndarray, py: np.ndarray, js: np.ndarray) -> tuple[int, int]:
    """(mismatches, float-rounding ties) between two token maps of one single-scale image."""
    diff = py != js
    if not diff.any():
        return 0, 0
    z = tok.encode_latent(img)[0].transpose(1, 2, 0)[diff[0]].astype(np.float64)
    if tok.config.l2_normalize:
        z /= np.linalg.norm(z, axis=1, keepdims=True)
    e = tok.codebook.astype(np.float64)
    d_py = ((z - e[py[diff]]) ** 2).sum(1)
    d_js = ((z - e[js[diff]]) ** 2).sum(1)
    scale = (z**2).sum(1) + (e[py[diff]] ** 2).sum(1) + 1.0
    return int(diff.sum()), int((np.abs(d_py - d_js) <= TIE_RTOL * scale).sum())


# -- Node ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def built() -> tuple[Path, Path]:
    """The page and the built package; `make setup` builds them (npm ci, npm run build)."""
    try:
        return web_files()
    except WebPageError as e:
        pytest.fail(str(e))


@pytest.mark.slow
def test_node_unit_tests(built):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: make web-deps (apt-get install nodejs npm)")
    r = subprocess.run(
        [node, "--test", "test/"],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "# fail 0" in r.stdout
    passed = int(r.stdout.split("# pass ")[1].split()[0])
    assert passed >= 14


# -- the server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(built, tmp_path_factory):
    """The shipped bundles, and a copy of the f4 one with a tampered encoder."""
    bundles = {name: bundle_path(name) for name in SHIPPED}
    tampered = tmp_path_factory.mktemp("tampered") / "tampered"
    shutil.copytree(bundle_path("vqvae-f4"), tampered)
    enc = tampered / "encoder.fp32.onnx"
    data = bytearray(enc.read_bytes())
    data[-5] ^= 1
    enc.write_bytes(bytes(data))
    bundles["tampered"] = tampered
    srv = serve(bundles, port=0)
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.shutdown()


def test_server_sends_isolation_headers_and_stays_in_its_folders(server):
    import urllib.error
    import urllib.request

    with urllib.request.urlopen(server, timeout=10) as r:
        assert "vqedge in the browser" in r.read().decode()
        for k, v in ISOLATION_HEADERS.items():
            assert r.headers[k] == v
    with urllib.request.urlopen(server + "bundles.json", timeout=10) as r:
        listed = json.loads(r.read())
    assert [b["name"] for b in listed][:2] == list(SHIPPED)
    with urllib.request.urlopen(server + "dist/ort-wasm-simd-threaded.wasm", timeout=10) as r:
        assert r.headers["Content-Type"] == "application/wasm"
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server + "bundles/vqvae-f4/../../../pyproject.toml", timeout=10)
    assert e.value.code == 404


def test_missing_build_is_a_clear_error(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "index.html").write_text("<html></html>")
    with pytest.raises(WebPageError, match="not built .* run `make setup`"):
        web_files(tmp_path)
    with pytest.raises(WebPageError, match="not installed .* source checkout"):
        web_files(tmp_path / "nowhere")


# -- chromium -------------------------------------------------------------------------------


def _launch(p, extra: tuple[str, ...] = ()):
    chromium = shutil.which("chromium")
    if chromium is None:  # `make test` installs it; a browser test never passes without one
        pytest.fail("Debian's chromium is not installed: make browser (apt-get install chromium)")
    return p.chromium.launch(executable_path=chromium, args=[*BROWSER_ARGS, *extra])


@pytest.fixture(scope="module")
def playwright():
    from playwright import sync_api

    with sync_api.sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright):
    outside: list[str] = []
    b = _launch(playwright)
    try:
        yield b, outside
    finally:
        b.close()
    assert outside == [], f"the page asked for outside resources: {outside}"


def _open(b, outside: list[str], url: str):
    def local_only(route):
        if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    context = b.new_context(viewport={"width": 1280, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(PAGE_TIMEOUT)
    context.route("**/*", local_only)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.add_init_script(PAGE_HELPERS)
    pg.goto(url)
    pg.wait_for_function("document.body.dataset.state !== 'loading'")
    return context, pg, errors


@pytest.fixture
def page(browser, server):
    b, outside = browser
    context, pg, errors = _open(b, outside, server + "?backend=wasm")
    yield pg
    context.close()
    assert errors == [], errors


def _encode_in_page(page, url: str, images: list[np.ndarray], opts: str = "") -> list[dict]:
    """Each image through the package in the page: tokens and the decoded image."""
    payload = [{"b64": _rgba_b64(im), "h": im.shape[0], "w": im.shape[1]} for im in images]
    return page.evaluate(
        """async ([url, images, opts]) => {
          const tok = await window.vqedge.load(url, {backend: "wasm", precision: "fp32", ...opts});
          const out = [];
          for (const im of images) {
            const r = await tok.reconstruct(window.__img(im.b64, im.w, im.h));
            out.push({indices: Array.from(r.indices), h: r.height, w: r.width,
                      image: window.__b64(new Uint8Array(r.image.data.buffer))});
          }
          const facts = {backend: tok.backend, precision: tok.precision, sha: tok.bundleSha256};
          tok.dispose();
          return {out, facts};
        }""",
        [url, payload, json.loads(opts or "{}")],
    )


def _check_single_scale_parity(page, url: str, bundle, images: list[np.ndarray]) -> None:
    tok = load(bundle, providers="cpu")
    res = _encode_in_page(page, url, images)
    assert res["facts"] == {"backend": "wasm", "precision": "fp32", "sha": tok.bundle_sha256}
    for img, js in zip(images, res["out"]):
        recon, py = tok.reconstruct(img)
        js_idx = np.array(js["indices"]).reshape(1, js["h"], js["w"])
        assert js_idx.shape == py.shape
        mismatches, ties = _mismatches(tok, img, py, js_idx)
        assert mismatches == ties, f"{mismatches} tokens differ, {ties} of them ties ({img.shape})"
        js_img = _rgb_from_b64(js["image"], *img.shape[:2])
        if mismatches == 0:
            diff = np.abs(js_img.astype(int) - recon[0].astype(int))
            assert diff.max() <= 1, f"decoded images differ by up to {diff.max()} levels"


@pytest.mark.slow
@pytest.mark.browser
def test_browser_tokens_equal_python_f4(page, server):
    _check_single_scale_parity(page, server + "bundles/vqvae-f4/", "vqvae-f4", _test_images())


@pytest.mark.slow
@pytest.mark.browser
def test_browser_tokens_equal_python_imported_family(browser, built, llamagen_bundle):  # noqa: F811
    """A small LlamaGen-layout bundle (random weights, attention in its middle block)."""
    srv = serve({"llamagen": llamagen_bundle}, port=0)
    b, outside = browser
    context, pg, errors = _open(b, outside, f"http://127.0.0.1:{srv.server_address[1]}/")
    try:
        images = [im[:64, :64] for im in _test_images(1)] + [read_image(CHELSEA)[:50, :70]]
        _check_single_scale_parity(pg, "bundles/llamagen/", llamagen_bundle, images)
    finally:
        context.close()
        srv.shutdown()
    assert errors == []


@pytest.mark.slow
@pytest.mark.browser
def test_browser_multiscale_equals_python(page, server):
    """Tokens of R x R images, the Lanczos fit of a photo of another size, every prefix's
    image and VAR's input, against the Python runtime."""
    tok = load("vqvae-ms-f8", providers="cpu")
    R = tok.resolution
    photos = [read_image(p) for p in held_out_paths()[:2]]
    res = page.evaluate(
        """async ([photos, R]) => {
          const opts = {backend: "wasm", precision: "fp32"};
          const tok = await window.vqedge.load("bundles/vqvae-ms-f8/", opts);
          const b64 = (img) => window.__b64(new Uint8Array(img.data.buffer));
          const out = [];
          for (const p of photos) {
            const r = await tok.encodeImage(window.__img(p.b64, p.w, p.h));
            const idxBl = tok.split(r.indices);
            const prefix = await tok.idxBlToImg(idxBl.slice(0, 3));
            const every = await tok.idxBlToImg(idxBl, {lastOne: false});
            const v = await tok.idxBlToVarInput(idxBl.slice(0, -1));
            out.push({indices: Array.from(r.indices), fitted: b64(r.fitted),
                      prefix: b64(prefix), n: every.length,
                      varDims: v.dims, varInput: window.__b64(new Uint8Array(v.data.buffer))});
          }
          tok.dispose();
          return out;
        }""",
        [[{"b64": _rgba_b64(p), "h": p.shape[0], "w": p.shape[1]} for p in photos], R],
    )
    for photo, js in zip(photos, res):
        fitted = fit_square(photo, R)
        # Pillow's Lanczos, reproduced: the same pixels, so the same tokens
        assert np.array_equal(_rgb_from_b64(js["fitted"], R, R), fitted)
        py = tok.encode(fitted)
        assert np.array_equal(np.array(js["indices"])[None], py), "multi-scale tokens differ"
        idx_Bl = tok.split(py)
        prefix = tok.idxBl_to_img(idx_Bl[:3])[0]
        assert np.abs(_rgb_from_b64(js["prefix"], R, R).astype(int) - prefix).max() <= 1
        assert js["n"] == len(tok.patch_nums)
        var = tok.idxBl_to_var_input(idx_Bl[:-1])
        js_var = np.frombuffer(base64.b64decode(js["varInput"]), np.float32).reshape(js["varDims"])
        np.testing.assert_allclose(js_var, var, atol=1e-5)


@pytest.mark.slow
@pytest.mark.browser
def test_browser_vqt_files_both_ways(page, server, tmp_path):
    """A .vqt written in the browser is byte-identical to Python's and decodes in Python to
    the browser's image; one Python wrote decodes in the page (its file input) to Python's."""
    tok = load("vqvae-f4", providers="cpu")
    img = _test_images()[0]
    js = page.evaluate(
        """async ([b64, w, h]) => {
          const tok = await window.vqedge.load("bundles/vqvae-f4/", {backend: "wasm"});
          const r = await tok.reconstruct(window.__img(b64, w, h));
          const vqt = tok.writeTokens(r.indices, r.height, r.width, {imageSize: [h, w]});
          return {vqt: window.__b64(vqt), image: window.__b64(new Uint8Array(r.image.data.buffer))};
        }""",
        [_rgba_b64(img), img.shape[1], img.shape[0]],
    )
    from_browser = tmp_path / "browser.vqt"
    from_browser.write_bytes(base64.b64decode(js["vqt"]))
    f = tok.load_tokens(from_browser)
    assert f.image_size == img.shape[:2]
    py_img = tok.decode(f.indices, size=f.image_size)[0]
    assert np.abs(py_img.astype(int) - _rgb_from_b64(js["image"], *img.shape[:2])).max() <= 1
    ours = tmp_path / "python.vqt"
    tok.save_tokens(ours, tok.encode(img), image_size=img.shape[:2])
    assert ours.read_bytes() == from_browser.read_bytes()

    # the other way, through the page as a user opens a file
    page.wait_for_function("document.body.dataset.state === 'ready'")
    page.locator("#vqt-input").set_input_files(str(ours))
    page.wait_for_function("window.vqedgePage.decoded !== undefined")
    decoded = page.evaluate("window.__b64(new Uint8Array(window.vqedgePage.decoded.data.buffer))")
    assert np.abs(_rgb_from_b64(decoded, *img.shape[:2]).astype(int) - py_img).max() <= 1
    assert "decoded 192 tokens to a 61x45 image" in page.inner_text("#metrics")

    # a file of another K (or another bundle) is refused with the Python runtime's words
    other = tmp_path / "other-k.vqt"
    save_tokens(other, np.zeros((1, 2, 2), np.int64), 512, tok.bundle_sha256)
    page.locator("#vqt-input").set_input_files(str(other))
    refused = "other-k.vqt: codebook_size K=512 in the file, this bundle has K=1024"
    page.get_by_text(refused).wait_for()
    assert load_tokens(other).codebook_size == 512


@pytest.mark.slow
@pytest.mark.browser
def test_browser_page_as_a_user(page, server, tmp_path):
    """Drop in a photo, read the PSNR, edit a region, save the .vqt; then the multi-scale
    bundle's next-scale view. Screenshots in test-artifacts/."""
    tok = load("vqvae-f4", providers="cpu")
    photo = read_image(CHELSEA)
    recon, idx = tok.reconstruct(photo)
    page.wait_for_function("document.body.dataset.state === 'ready'")
    assert "on wasm, fp32" in page.inner_text("#status")
    assert "cross-origin isolated" in page.inner_text("#status")
    assert "not cross-origin isolated" not in page.inner_text("#status")
    page.locator("#image-input").set_input_files(str(CHELSEA))
    page.get_by_text("chelsea.png: PSNR").wait_for()
    metrics = page.inner_text("#metrics")
    assert f"PSNR {psnr(photo, recon[0]):.2f} dB" in metrics
    assert f"{idx.size} tokens ({idx.shape[1]}x{idx.shape[2]})" in metrics

    page.fill("#top", "10")
    page.fill("#left", "20")
    page.fill("#bottom", "30")
    page.fill("#right", "60")
    page.fill("#code", "7")
    page.get_by_role("button", name="Replace codes and decode").click()
    page.get_by_text("Replaced 800 codes (rows 10-29, columns 20-59) with code 7").wait_for()
    edited = idx.copy()
    edited[:, 10:30, 20:60] = 7
    assert page.evaluate("Array.from(window.vqedgePage.edited)") == edited.ravel().tolist()

    with page.expect_download() as dl:
        page.get_by_role("button", name="Save tokens (.vqt)").click()
    saved = tmp_path / dl.value.suggested_filename
    dl.value.save_as(saved)
    assert saved.name == "chelsea.vqt"
    ours = tmp_path / "ours.vqt"
    tok.save_tokens(ours, idx, image_size=photo.shape[:2])
    assert saved.read_bytes() == ours.read_bytes()
    _screenshot(page, "web-page.png", tmp_path)

    page.select_option("#bundle", label="vqvae-ms-f8")
    page.get_by_role("button", name="Load").click()
    page.get_by_text("vqvae-ms-f8 (multi-scale").wait_for()
    page.get_by_text("1 scale (1x1)").wait_for()
    assert page.locator("#scales canvas").count() == 10
    assert "680 tokens over 10 scales" in page.inner_text("#metrics")
    _screenshot(page, "web-page-multiscale.png", tmp_path)


@pytest.mark.slow
@pytest.mark.browser
def test_browser_refusals(page, server):
    """A tampered bundle, an image above max side, a corrupt upload: clear messages."""
    msgs = page.evaluate(
        """async () => {
          const out = {};
          try { await window.vqedge.load("bundles/tampered/", {backend: "wasm"}); }
          catch (e) { out.tampered = e.message; }
          const tok = await window.vqedge.load("bundles/vqvae-f4/", {backend: "wasm", maxSide: 32});
          try { await tok.encode(new ImageData(40, 8)); } catch (e) { out.side = e.message; }
          const bad = Int32Array.from([0, 5000]);
          try { await tok.decode(bad, 1, 2); } catch (e) { out.k = e.message; }
          tok.dispose();
          return out;
        }"""
    )
    tampered = "bundle file encoder.fp32.onnx does not match its sha256 in the manifest"
    assert msgs["tampered"] == tampered
    assert msgs["side"].startswith("image side 40 exceeds the limit of 32 pixels")
    assert msgs["k"] == "token indices must lie in [0, 1024), got [0, 5000]"
    page.wait_for_function("document.body.dataset.state === 'ready'")
    bad = WEB / "package.json"  # not an image
    page.locator("#image-input").set_input_files(str(bad))
    page.get_by_text("package.json: cannot read image").wait_for()


@pytest.mark.slow
@pytest.mark.browser
def test_browser_webgpu(playwright, server):
    """WebGPU where headless chromium gives an adapter (SwiftShader's, in software)."""
    tok = load("vqvae-f4", providers="cpu")
    img = _test_images()[1][:64, :64]  # small: SwiftShader runs the shaders on the CPU
    # WebGPU needs the GPU process that --disable-gpu turns off
    args = [a for a in BROWSER_ARGS if a != "--disable-gpu"]
    b = playwright.chromium.launch(
        executable_path=shutil.which("chromium"),
        args=[*args, "--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"],
    )
    outside: list[str] = []
    try:
        context, pg, errors = _open(b, outside, server + "?backend=wasm")
        support = pg.evaluate("async () => await window.vqedge.webgpuSupport()")
        if not support["adapter"]:
            pytest.skip(f"headless chromium exposes no WebGPU adapter: {support['reason']}")
        res = _encode_in_page(pg, "bundles/vqvae-f4/", [img], '{"backend": "webgpu"}')
        context.close()
    finally:
        b.close()
    assert outside == [] and errors == []
    assert res["facts"]["backend"] == "webgpu"
    js = np.array(res["out"][0]["indices"]).reshape(1, 16, 16)
    py = tok.encode(img)
    mismatches, ties = _mismatches(tok, img, py, js)
    # a GPU sums in another order: a few near-ties may go the other way, nothing more
    assert mismatches - ties <= py.size // 100, f"{mismatches} differ, {ties} ties"


def test_cli_serves_the_page_and_refuses_a_bad_bundle(built, tmp_path):
    import sys
    import urllib.request

    cmd = [sys.executable, "-m", "vqedge.commands.main", "web", "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "vqedge web: serving the page and vqvae-f4, vqvae-ms-f8 at http://127.0.0.1:" in line
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "bundles/vqvae-f4/manifest.json", timeout=10) as r:
            assert json.loads(r.read())["name"] == "vqvae-f4"
            assert r.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    bad = subprocess.run(
        [*cmd, "--bundle", str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 1
    assert "no bundle at" in bad.stderr


# -- the bundle's promises: verification, the precision plan, edge-sized and offline ---------


def _bundle_requests(pg, name: str) -> list[dict]:
    """Every answer the page gets from a bundle folder: {file, bytes} (bodies read)."""
    seen: list[dict] = []

    def on_response(r):
        marker = f"/bundles/{name}/"
        if marker in r.url and r.request.method == "GET":
            file = r.url.split(marker, 1)[1].split("?")[0]
            try:
                size = len(r.body())
            except Exception:  # noqa: BLE001 (a redirect or an aborted answer has no body)
                size = 0
            seen.append({"file": file, "bytes": size, "status": r.status})

    pg.on("response", on_response)
    return seen


def _python_stage_figures(precision: str) -> dict:
    """The Python runtime on the CPU provider, on the same check set, each stage judged by its
    tier: {stage: StageJudgement} (vqedge.runtime.fidelity)."""
    from vqedge.runtime import fidelity
    from vqedge.runtime.verify import read_check_set

    tok = load("vqvae-f4", providers="cpu", precision=precision, verify=False)
    arrays = read_check_set(tok.root, tok.manifest)
    tokens = tok.encode(arrays["image"])
    agreement = float((tokens == arrays["tokens"]).mean())
    recon = tok.decode(arrays["tokens"])
    vs = np.mean(
        [min(psnr(a, b), fidelity.PSNR_CAP_DB) for a, b in zip(arrays["reconstruction"], recon)]
    )
    return {
        "encoder": fidelity.judge_tokens("encoder", precision, agreement),
        "decoder": fidelity.judge_pixels("decoder", precision, float(vs)),
    }


@pytest.mark.slow
@pytest.mark.browser
def test_browser_verifies_the_check_set_and_shows_the_verdict(page, server):
    """The page's load ran the check set (fp32 holds, each stage by its tier) and shows it;
    tok.verify() runs it again on demand."""
    page.wait_for_function("document.body.dataset.state === 'ready'")
    assert page.inner_text("#verdict").startswith("Check set: verified")
    assert "encoder fp32" in page.inner_text("#verdict")
    assert "every file checked against its sha256" in page.inner_text("#download")
    # the held-out photos are offered as examples, as in the Gradio demo
    page.get_by_role("button", name="flower.jpg").click()
    page.get_by_text("flower.jpg: PSNR").wait_for()
    v = page.evaluate(
        """async () => {
          const tok = await window.vqedge.load("bundles/vqvae-f4/", {backend: "wasm"});
          const again = await tok.verify();
          tok.dispose();
          return {atLoad: tok.verification, again};
        }"""
    )
    for verdict in (v["atLoad"], v["again"]):
        assert verdict["holds"] is True
        assert [(s["stage"], s["tier"]) for s in verdict["stages"]] == [
            ("encoder", "tokens"),
            ("decoder", "pixels"),
        ]
    py = _python_stage_figures("fp32")
    enc, dec = v["again"]["stages"]
    assert enc["figure"] >= 0.99 and abs(enc["figure"] - py["encoder"].figure) <= 0.01
    assert dec["figure"] >= 40 and dec["bar"] == py["decoder"].bar


@pytest.mark.slow
@pytest.mark.browser
def test_browser_strict_refuses_what_does_not_hold_with_pythons_figures(page, server):
    """int8 on WASM: each stage measured in the page as the Python runtime measures it on the
    CPU provider; a stage below its tier is refused (strict) in fidelity.py's words, and
    strict: false runs that stage at fp32."""
    py = _python_stage_figures("int8")
    res = page.evaluate(
        """async () => {
          const url = "bundles/vqvae-f4/";
          const o = {backend: "wasm", precision: "int8"};
          const q = await window.vqedge.load(url, {...o, verify: false});
          const verdict = await q.verify();
          q.dispose();
          let refused = null;
          try { (await window.vqedge.load(url, o)).dispose(); }
          catch (e) { refused = {name: e.name, message: e.message}; }
          const lenient = await window.vqedge.load(url, {...o, strict: false});
          const out = {verdict, refused, plan: lenient.plan, fell: lenient.verification.fellBackTo};
          lenient.dispose();
          return out;
        }"""
    )
    from vqedge.runtime import fidelity

    js = {s["stage"]: s for s in res["verdict"]["stages"]}
    assert abs(js["encoder"]["figure"] - py["encoder"].figure) <= 0.02
    assert abs(js["decoder"]["figure"] - py["decoder"].figure) <= 0.5
    for stage, judged in py.items():
        again = (fidelity.judge_tokens if stage == "encoder" else fidelity.judge_pixels)(
            stage, "int8", js[stage]["figure"]
        )
        assert js[stage]["reason"] == again.reason  # the Python wording, the page's figure
        assert js[stage]["holds"] == judged.holds  # and the Python runtime's verdict
    if res["verdict"]["holds"]:
        assert res["refused"] is None
        return
    assert res["refused"]["name"] == "PrecisionError"
    assert res["refused"]["message"].startswith(res["verdict"]["reason"])
    failed = [s for s, j in js.items() if not j["holds"]]
    assert all(res["plan"][s] == "fp32" for s in failed)
    assert res["fell"] == res["plan"]


@pytest.mark.slow
@pytest.mark.browser
def test_browser_int8_fetches_its_own_files_and_a_second_visit_none(browser, server):
    """An int8 load of vqvae-f4 downloads at most 3 MB of bundle files (never the fp32
    weights); every file is kept in Cache Storage, so the second visit downloads none (the
    manifest apart) and the third works with the bundle folder unreachable."""
    b, outside = browser
    context, pg, errors = _open(b, outside, server + "?backend=wasm&autoload=0")
    try:
        seen = _bundle_requests(pg, "vqvae-f4")
        script = """async (plan) => {
          const o = {backend: "wasm", precision: plan, verify: false};
          const tok = await window.vqedge.load("bundles/vqvae-f4/", o);
          const out = {down: tok.bytesDownloaded, cached: tok.bytesFromCache, files: tok.files};
          tok.dispose();
          return out;
        }"""
        first = pg.evaluate(script, "int8")
        got = {r["file"]: r["bytes"] for r in seen}
        assert "weights.fp32.bin" not in got, got
        assert sum(got.values()) <= 3_000_000, got
        assert first["down"] == sum(got.values()) and first["cached"] == 0

        seen.clear()
        pg.reload()
        pg.wait_for_function("document.body.dataset.state !== 'loading'")
        second = pg.evaluate(script, "int8")
        assert [r["file"] for r in seen] == ["manifest.json"], seen
        assert all(f["fromCache"] for f in second["files"])
        assert second["cached"] == first["down"] - got["manifest.json"]

        pg.route("**/bundles/**", lambda route: route.abort())  # offline, as far as bundles go
        third = pg.evaluate(script, "int8")
        assert third["down"] == 0 and all(f["fromCache"] for f in third["files"])
    finally:
        context.close()
    assert errors == []


def test_generated_rules_say_what_the_python_runtime_says(built):
    """web/src/rules.gen.js (generated from the Python source): the same constants, the same
    rules digest and, for the same figures, the same reasons as vqedge.runtime.fidelity."""
    from vqedge.runtime import fidelity, limits, manifest, tokenizer

    node = shutil.which("node")
    assert node is not None, "node is not installed: make web-deps"
    script = """
    const f = await import("./src/fidelity.js");
    const r = await import("./src/rules.gen.js");
    const cases = [[0.8467, [0.5, 0.91]], [0.95, []], [0.999, []]];
    console.log(JSON.stringify({
      digest: await f.rulesDigest(),
      consts: Object.fromEntries(Object.entries(r).filter(([k, v]) => typeof v === "number")),
      tokens: cases.map(([a, s]) => f.judgeTokens("encoder", "int8", a, s).reason),
      pixels: [12.34, 39.95, 41, 120].map((p) => f.judgePixels("decoder", "fp16", p).reason),
    }));
    """
    r = subprocess.run(
        [node, "--input-type=module", "-e", script],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    js = json.loads(r.stdout)
    assert js["digest"] == fidelity.rules_digest()
    assert js["consts"] == {
        "TOKENS_MIN_AGREEMENT": fidelity.TOKENS_MIN_AGREEMENT,
        "PIXELS_MIN_PSNR_DB": fidelity.PIXELS_MIN_PSNR_DB,
        "PIXELS_ENCODER_MAX_DROP_DB": fidelity.PIXELS_ENCODER_MAX_DROP_DB,
        "PSNR_CAP_DB": fidelity.PSNR_CAP_DB,
        "DEFAULT_MAX_SIDE": limits.DEFAULT_MAX_SIDE,
        "ATTENTION_MAX_BYTES": limits.ATTENTION_MAX_BYTES,
        "MAX_MANIFEST_BYTES": manifest.MAX_MANIFEST_BYTES,
        "FORMAT_VERSION": manifest.FORMAT_VERSION,
        "LOOKUP_LATENTS": tokenizer.LOOKUP_LATENTS,
    }
    cases = [(0.8467, [0.5, 0.91]), (0.95, []), (0.999, [])]
    assert js["tokens"] == [fidelity.judge_tokens("encoder", "int8", a, s).reason for a, s in cases]
    pix = [fidelity.judge_pixels("decoder", "fp16", p).reason for p in (12.34, 39.95, 41, 120)]
    assert js["pixels"] == pix
