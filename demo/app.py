"""The Gradio web demo: an image through the tokenizer, what it costs and what its tokens mean.

``build_app()`` returns the Blocks, one builder per page section; ``launch()`` serves them
offline (no analytics, no share link, default theme, fonts served locally). The named API
endpoints are declared once, in ``ENDPOINTS``. What the page computes is in
``vqedge.demo.engine`` (no gradio).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
from starlette.middleware import Middleware

from vqedge.demo import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_QUEUE_SIZE,
    EXAMPLES,
    UPLOAD_MAX_SIDE,
)
from vqedge.demo.engine import (
    MODES,
    TOP_CODES,
    Edit,
    Engine,
    ScalesEngine,
    default_scales_bundle,
)
from vqedge.demo.handlers import Uploads, UploadWatcher, readable, request
from vqedge.demo.metrics import HEATMAP_MAX
from vqedge.demo.webpage import WEB_PAGE_URL

CSS = "#token-map img { cursor: crosshair; image-rendering: pixelated; }"
# gradio's cache sweep: every 15 minutes, files older than an hour (the page's own uploads
# and every output file; the API's uploads are deleted when their request ends)
DELETE_CACHE = (900, 3600)


# -- the named API endpoints ------------------------------------------------------------------


def api_reconstruct(eng: Engine, ms: ScalesEngine, image: str, precision: str, provider: str):
    """Image -> reconstruction (PNG), token map (PNG) and metrics (JSON)."""
    img, note = eng.read(image)
    r = eng.analyze(img, precision, provider)
    return r["recon"], r["token_map"], {**r["metrics"], "note": note}


def api_encode(eng: Engine, ms: ScalesEngine, image: str, precision: str, provider: str):
    """Image -> token file (.vqt) and tokens (JSON)."""
    img, note = eng.read(image)
    vqt, tokens = eng.encode(img, precision, provider, Path(image).stem)
    return str(vqt), {**tokens, "note": note}


def api_decode(eng: Engine, ms: ScalesEngine, tokens: str, precision: str, provider: str):
    """Token file (.vqt) -> image (PNG)."""
    return eng.decode_file(tokens, precision, provider)


def api_scales(eng: Engine, ms: ScalesEngine, image: str):
    """Image -> every scale's tokens and the PSNR of each progressive decoding (JSON)."""
    if not ms.available:  # before reading the image: the same answer for any input
        raise ValueError(ms.unavailable_message())
    img, note = eng.read(image)
    return ms.to_json(ms.analyze(img), img.shape[:2], note)


@dataclass(frozen=True)
class Endpoint:
    """One named API endpoint: its function (called with the engines first), the names of
    its inputs and outputs (keys of ``_api_components``), and what it takes and returns in
    words, for the API section's table."""

    fn: Callable[..., Any]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    takes: str  # its first input
    returns: str


OPTIONS = ("precision", "provider")
# api_name -> endpoint: the one place the API is declared (the API section's table comes
# from it, and so do the hidden components it runs on)
ENDPOINTS = {
    "reconstruct": Endpoint(
        api_reconstruct,
        ("image", *OPTIONS),
        ("reconstruction", "token map", "metrics"),
        "`image` (file)",
        "reconstruction (PNG), token map (PNG), metrics (JSON)",
    ),
    "encode": Endpoint(
        api_encode,
        ("image", *OPTIONS),
        ("token file", "tokens"),
        "`image` (file)",
        "token file (`.vqt`), tokens (JSON: `indices` [h][w], sizes, K)",
    ),
    "decode": Endpoint(
        api_decode,
        ("tokens", *OPTIONS),
        ("image out",),
        "`tokens` (a `.vqt` file from `/encode` or `vqedge encode`)",
        "image (PNG)",
    ),
    "scales": Endpoint(
        api_scales,
        ("image",),
        ("scales",),
        "`image` (file)",
        "JSON: `tokens` ([pn][pn] per scale), `psnr_db` (scales 1..k)",
    ),
}
UPLOADS = ("image", "tokens")  # inputs that are files uploaded for one request


def api_doc(precisions: tuple[str, ...]) -> str:
    """The API section's text, from ENDPOINTS."""
    rows = "\n".join(f"| `/{n}` | {e.takes} | {e.returns} |" for n, e in ENDPOINTS.items())
    with_opts = ", ".join(f"`/{n}`" for n, e in ENDPOINTS.items() if OPTIONS[0] in e.inputs)
    return f"""\
{with_opts} take `precision` ({", ".join(f"`{p}`" for p in precisions)}; default `fp32`) and
`provider` (an available onnxruntime execution provider; default the best one) after their
first input; `/scales` runs the multi-scale bundle at fp32 on the default provider. Uploads
are deleted when their request ends.

| endpoint | takes | returns |
| --- | --- | --- |
{rows}

```python
from gradio_client import Client, handle_file
client = Client("http://127.0.0.1:7860/", analytics_enabled=False)
recon, token_map, metrics = client.predict(handle_file("photo.jpg"), api_name="/reconstruct")
vqt, tokens = client.predict(handle_file("photo.jpg"), api_name="/encode")
image = client.predict(handle_file(vqt), api_name="/decode")
scales = client.predict(handle_file("photo.jpg"), api_name="/scales")
```
"""


# -- page helpers ---------------------------------------------------------------------------


def _outline(img: np.ndarray, region: tuple[int, int, int, int], f: int) -> np.ndarray:
    """The token image with a white-on-black frame around a token region."""
    top, bottom, left, right = region
    y0, x0 = top * f, left * f
    y1, x1 = min((bottom + 1) * f, img.shape[0]) - 1, min((right + 1) * f, img.shape[1]) - 1
    out = img.copy()
    for colour, d in (((0, 0, 0), 1), ((255, 255, 255), 0)):
        a, b = max(y0 - d, 0), min(y1 + d, img.shape[0] - 1)
        c, e = max(x0 - d, 0), min(x1 + d, img.shape[1] - 1)
        out[a, c : e + 1] = out[b, c : e + 1] = colour
        out[a : b + 1, c] = out[a : b + 1, e] = colour
    return out


def _metrics_markdown(m: dict[str, Any], note: str) -> str:
    (h, w), (th, tw), lat = m["image_size"], m["token_shape"], m["latency_ms"]
    p = "∞" if m["psnr_db"] is None else f"{m['psnr_db']:.2f}"
    used = set(m["providers"].values())
    ran = (
        f"on {used.pop()}"
        if len(used) == 1
        else ", ".join(f"{g} on {ps}" for g, ps in m["providers"].items())
    )
    if m["precision"] != "fp32":
        ran += " (the quantizer's argmin at fp32)"
    rows = [
        ("image", f"{w}x{h} px{f' ({note})' if note else ''}"),
        ("tokens", f"{tw}x{th} = {th * tw} tokens of {m['bits_per_token']} bits "
                   f"(K = {m['codebook_size']})"),
        ("bits per pixel", f"{m['bits_per_pixel']:.3f} bpp"),
        ("vs raw RGB", f"24 bpp: {m['ratio_vs_raw_rgb']:.1f}x smaller"),
        ("vs PNG file", f"{m['png_bits_per_pixel']:.2f} bpp ({m['png_bytes'] / 1e3:.1f} kB): "
                        f"{m['ratio_vs_png']:.1f}x smaller"),
        ("codebook", f"{m['codes_used']} of {m['codebook_size']} codes used, "
                     f"perplexity {m['perplexity']:.1f}"),
        ("latency", f"encode (with quantize) {lat['encode']:.1f} ms, "
                    f"decode {lat['decode']:.1f} ms"),
        ("ran", f"{m['precision']} {ran}"),
    ]  # fmt: skip
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    head = f"### PSNR {p} dB · SSIM {m['ssim']:.4f} (luma)"
    return f"{head}\n\n| measure | value |\n|---|---|\n{table}"


def _usage_frame(metrics: dict[str, Any]) -> pd.DataFrame:
    top = metrics["top_codes"]
    return pd.DataFrame({"code": [f"#{c}" for c, _ in top], "count": [n for _, n in top]})


def _upload_image(**kw) -> gr.Image:
    """An image input that hands the uploaded file's path to the request unopened: the
    engine reads it within the demo's limits, so a file Pillow refuses (or one too large)
    gets the engine's message, and the request that deletes the upload does run."""
    comp = gr.Image(type="filepath", image_mode=None, **kw)
    preprocess = comp.preprocess

    def as_path(payload):
        if payload is None or payload.path is None:  # nothing, or inline (base64) data
            try:
                return preprocess(payload)
            except Exception as e:
                raise gr.Error(f"cannot read the pasted image ({type(e).__name__})") from None
        return str(payload.path)

    # an instance attribute, not a subclass: gradio writes a .pyi stub beside the module
    # that defines a component subclass
    comp.preprocess = as_path
    return comp


def _image_input(elem_id: str, height: int) -> gr.Image:
    """An upload/clipboard image box with the shipped held-out photos as examples below it."""
    comp = _upload_image(
        label="Image (upload, or paste from the clipboard)",
        sources=["upload", "clipboard"],
        height=height,
        elem_id=elem_id,
    )
    if EXAMPLES:
        gr.Examples([[str(p)] for p in EXAMPLES], [comp], label="Held-out photos")
    return comp


# -- the page's sections: one builder each ---------------------------------------------------


def _image_kw(label: str, **kw) -> dict:
    return {"label": label, "format": "png", "buttons": ["download", "fullscreen"], **kw}


def _intro(eng: Engine) -> None:
    gr.Markdown(
        f"# vqedge: an image as {eng.K} codes\n"
        f"Bundle `{eng.bundle_name}`: every {eng.f}x{eng.f} pixel block becomes one of "
        f"{eng.K} codes ({eng.bits_per_token} bits), decoded back to pixels, on onnxruntime "
        f"without PyTorch. Larger sides than {eng.max_side} px are "
        f"{'downscaled' if eng.oversize == 'downscale' else 'refused'}. The same bundles "
        f"also run in the browser, on your own device: `vqedge web` serves that page at "
        f"[{WEB_PAGE_URL}]({WEB_PAGE_URL})."
    )


def _analysis_section(eng: Engine) -> dict[str, Any]:
    """Upload, options, the reconstruction beside the original, metrics and code usage."""
    c: dict[str, Any] = {}
    with gr.Row():
        with gr.Column(scale=3):
            c["input"] = _image_input("input-image", height=300)
        with gr.Column(scale=2):
            c["precision"] = gr.Radio(list(eng.precisions), value="fp32", label="Precision")
            c["provider"] = gr.Dropdown(
                eng.providers, value=eng.default_provider, label="Execution provider"
            )
            c["verdict"] = gr.Markdown(
                eng.verdict("fp32", eng.default_provider), elem_id="precision-verdict"
            )
            c["run"] = gr.Button("Tokenize and reconstruct", variant="primary")
            c["vqt"] = gr.File(label="Token file (.vqt)", interactive=False)
    with gr.Row(equal_height=True):
        c["original"] = gr.Image(**_image_kw("Original"))
        c["recon"] = gr.Image(**_image_kw("Reconstruction (lossless PNG)"))
        c["heatmap"] = gr.Image(
            **_image_kw(f"Error per pixel (RMS over RGB: black 0, yellow ≥{HEATMAP_MAX:g})")
        )
    with gr.Row():
        with gr.Column(scale=3):
            c["metrics"] = gr.Markdown(elem_id="metrics")
        with gr.Column(scale=2):
            c["usage"] = gr.BarPlot(
                x="code",
                y="count",
                sort="-y",
                y_lim=[0, None],
                x_label_angle=-45,
                label=f"The {TOP_CODES} most used codes in this image",
            )
    return c


def _editing_section(eng: Engine) -> dict[str, Any]:
    """The token map to click on, the region's sliders, what to put there, the result."""
    c: dict[str, Any] = {}
    gr.Markdown(
        "## Tokens made tangible\nClick two corners on the token map (or use the sliders) "
        "to select a region, choose what to put there, and decode the edited tokens."
    )
    with gr.Row(equal_height=True):
        c["tokmap"] = gr.Image(
            **_image_kw("Token map (colour = the code's vector, first 3 principal components)"),
            elem_id="token-map",
        )
        c["edited"] = gr.Image(**_image_kw("Decoded from the edited tokens"))
    with gr.Row():
        c["region"] = [
            gr.Slider(0, 1, value=0, step=1, label=label)
            for label in ("Top row", "Bottom row", "Left column", "Right column")
        ]
    with gr.Row():
        with gr.Column():
            c["mode"] = gr.Radio(list(MODES), value=MODES[0], label="Replace the region's codes by")
            c["code"] = gr.Number(0, precision=0, minimum=0, maximum=eng.K - 1, label="Code")
            c["seed"] = gr.Number(0, precision=0, label="Seed (random codes)")
            with gr.Row():
                c["apply"] = gr.Button("Replace and decode", variant="primary")
                c["reset"] = gr.Button("Reset tokens")
            c["message"] = gr.Markdown()
        with gr.Column():
            c["other"] = _upload_image(
                label="Another image (for its codes)", sources=["upload", "clipboard"], height=200
            )
            if EXAMPLES:
                gr.Examples([[str(p)] for p in EXAMPLES], [c["other"]], label="Held-out photos")
    return c


def _scales_section(ms: ScalesEngine) -> dict[str, Any] | None:
    """The next-scale (VAR) section; None (and a sentence saying why) without a bundle."""
    with gr.Accordion("Next-scale tokens (VAR)", open=True, elem_id="scales"):
        if not ms.available:
            gr.Markdown(ms.unavailable_message(), elem_id="scales-summary")
            return None
        c: dict[str, Any] = {}
        R = ms.resolution
        gr.Markdown(ms.intro())
        with gr.Row():
            with gr.Column(scale=3):
                c["input"] = _image_input("scales-input", height=250)
                c["run"] = gr.Button("Tokenize scale by scale", variant="primary")
            with gr.Column(scale=2):
                c["fitted"] = gr.Image(**_image_kw(f"Input fitted to {R}x{R}"), height=250)
        c["summary"] = gr.Markdown(elem_id="scales-summary")
        gallery = {"format": "png", "columns": 5, "object_fit": "contain"}
        c["maps"] = gr.Gallery(
            label="Token map of each scale (colour = the code's vector)",
            elem_id="scales-maps",
            **gallery,
        )
        c["recons"] = gr.Gallery(
            label="Decoded from scales 1 to k (PSNR against the fitted input)",
            elem_id="scales-recons",
            **gallery,
        )
        return c


def _api_components(eng: Engine) -> dict[str, gr.components.Component]:
    """The hidden components the named endpoints run on, by the names ENDPOINTS uses."""
    with gr.Row(visible=False):
        return {
            "image": _upload_image(label="image"),
            "tokens": gr.File(label="tokens"),
            "precision": gr.Dropdown(list(eng.precisions), value="fp32", label="precision"),
            "provider": gr.Dropdown(eng.providers, value=eng.default_provider, label="provider"),
            "reconstruction": gr.Image(format="png", label="reconstruction"),
            "token map": gr.Image(format="png", label="token map"),
            "metrics": gr.JSON(label="metrics"),
            "token file": gr.File(label="token file"),
            "tokens json": gr.JSON(label="tokens"),
            "image out": gr.Image(format="png", label="image"),
            "scales": gr.JSON(label="scales"),
        }


def _api_section(eng: Engine, ms: ScalesEngine, uploads: Uploads, model: dict) -> None:
    """The API's documentation and the named endpoints of ENDPOINTS."""
    with gr.Accordion("API", open=False):
        gr.Markdown(api_doc(eng.precisions))
    comps = _api_components(eng)
    out_names = {"tokens": "tokens json"}  # an output named like an input
    for name, e in ENDPOINTS.items():
        fn = request(
            functools.partial(e.fn, eng, ms),
            tuple(i for i, n in enumerate(e.inputs) if n in UPLOADS),
            uploads,
            keep_on_success=False,
        )
        fn.__doc__ = e.fn.__doc__
        gr.Button(visible=False).click(
            fn,
            [comps[n] for n in e.inputs],
            [comps[out_names.get(n, n)] for n in e.outputs],
            api_name=name,
            **model,
        )


# -- the page's events -------------------------------------------------------------------------


def _analysis_events(eng, a, e, state, uploads, ui) -> None:
    for choice in (a["precision"], a["provider"]):
        choice.change(readable(eng.verdict), [a["precision"], a["provider"]], a["verdict"], **ui)

    def on_run(path, prec, prov):
        img, note = eng.read(path)
        r = eng.analyze(img, prec, prov)
        st = eng.start_edit(img, r["idx"])
        box = st.default_region()
        h, w = st.idx.shape
        vqt = eng.write_tokens(r["idx"][None], img.shape[:2], Path(path).stem)
        sliders = [gr.Slider(maximum=max(n - 1, 1), value=v) for n, v in zip((h, h, w, w), box)]
        return [
            img,
            r["recon"],
            r["heatmap"],
            _metrics_markdown(r["metrics"], note),
            _usage_frame(r["metrics"]),
            _outline(r["token_map"], box, eng.f),
            r["recon"],
            str(vqt),
            st,
            "",
            *sliders,
        ]

    a["run"].click(
        request(on_run, (0,), uploads, keep_on_success=True),
        [a["input"], a["precision"], a["provider"]],
        [a["original"], a["recon"], a["heatmap"], a["metrics"], a["usage"], e["tokmap"]]
        + [e["edited"], a["vqt"], state, e["message"], *e["region"]],
        **ui,
    )


def _editing_events(eng, a, e, state, uploads, ui) -> None:
    region, opts = e["region"], [a["precision"], a["provider"]]

    def draw(st: Edit, box) -> np.ndarray:
        return _outline(eng.token_view(st), box, eng.f)

    def need(st: Edit | None) -> Edit:
        if st is None:
            raise ValueError("tokenize an image first")
        return st

    @readable
    def on_select(st, evt: gr.SelectData):
        st = need(st)
        x, y = evt.index
        box, msg = st.click(int(y) // eng.f, int(x) // eng.f)
        return [draw(st, box), st, msg, *box]

    e["tokmap"].select(
        on_select,
        [state],
        [e["tokmap"], state, e["message"], *region],
        api_visibility="private",
        queue=False,
    )

    @readable
    def on_region(st, *box):
        return None if st is None else draw(st, tuple(int(v) for v in box))

    for s in region:
        s.release(on_region, [state, *region], [e["tokmap"]], api_visibility="private", queue=False)

    def on_apply(st, t, b, le, ri, how, k, sd, other_path, prec, prov):
        st = need(st)
        other = eng.read(other_path)[0] if how == MODES[2] and other_path else None
        out, box, msg = eng.apply_edit(
            st, (t, b, le, ri), how, int(k or 0), int(sd or 0), other, prec, prov
        )
        return [draw(st, box), out, st, msg]

    e["apply"].click(
        request(on_apply, (8,), uploads, keep_on_success=True),
        [state, *region, e["mode"], e["code"], e["seed"], e["other"], *opts],
        [e["tokmap"], e["edited"], state, e["message"]],
        **ui,
    )

    @readable
    def on_reset(st, t, b, le, ri, prec, prov):
        st = need(st)
        st.edited = st.idx.copy()
        out, _ = eng.decode(st.idx, st.img.shape[:2], prec, prov)
        return [draw(st, (int(t), int(b), int(le), int(ri))), out, st, "tokens reset"]

    e["reset"].click(
        on_reset, [state, *region, *opts], [e["tokmap"], e["edited"], state, e["message"]], **ui
    )


def _scales_events(eng, ms, s, uploads, ui) -> None:
    def on_scales(path):
        img, note = eng.read(path)
        r = ms.analyze(img)
        maps, recons = ms.galleries(r)
        return r["fitted"], maps, recons, ms.summary(r, img.shape[:2], note)

    s["run"].click(
        request(on_scales, (0,), uploads, keep_on_success=True),
        [s["input"]],
        [s["fitted"], s["maps"], s["recons"], s["summary"]],
        **ui,
    )


def build_app(
    bundle: str | Path | None = None,
    max_side: int = UPLOAD_MAX_SIDE,
    oversize: str = "downscale",
    concurrency: int = DEFAULT_CONCURRENCY,
    queue_size: int = DEFAULT_QUEUE_SIZE,
    threads: int | None = None,
    scales_bundle: str | Path | None = None,
) -> gr.Blocks:
    """The demo's Blocks on a bundle (the shipped default when None).

    Parameters
    ----------
    bundle : str or Path, optional
        Single-scale bundle folder or shipped name.
    max_side : int
        Largest image side tokenized.
    oversize : {"downscale", "refuse"}
        What happens to an upload with a larger side.
    concurrency : int
        Model requests (all endpoints together) running at once; the rest queue.
    queue_size : int
        Requests that may wait in the queue; more are turned away.
    threads : int, optional
        Intra-op threads per onnxruntime session.
    scales_bundle : str or Path, optional
        Multi-scale bundle of the next-scale section (default: the shipped one when installed;
        without one the section says so).

    The Blocks carry ``engine`` and ``scales_engine``, the engines behind every request.
    """
    eng = Engine(bundle, max_side, oversize, threads)
    scales = scales_bundle if scales_bundle is not None else default_scales_bundle()
    ms = ScalesEngine(scales, eng.default_provider, threads)
    uploads = Uploads()
    model = {"concurrency_limit": concurrency, "concurrency_id": "tokenizer"}
    ui = {"api_visibility": "private", **model}
    with gr.Blocks(title="vqedge demo", analytics_enabled=False, delete_cache=DELETE_CACHE) as demo:
        _intro(eng)
        a = _analysis_section(eng)
        e = _editing_section(eng)
        s = _scales_section(ms)
        _api_section(eng, ms, uploads, model)
        state = gr.State(None)
        _analysis_events(eng, a, e, state, uploads, ui)
        _editing_events(eng, a, e, state, uploads, ui)
        if s is not None:
            _scales_events(eng, ms, s, uploads, ui)
    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    demo.engine, demo.scales_engine = eng, ms  # for `vqedge demo`'s banner and embedding
    demo.uploads = uploads  # counted as they arrive by the UploadWatcher launch() installs
    return demo


def launch(
    demo: gr.Blocks,
    host: str = "127.0.0.1",
    port: int = 7860,
    prevent_thread_lock: bool = False,
    max_file_size: str | int = DEFAULT_MAX_FILE_SIZE,
    quiet: bool = False,
):
    """Serve the demo offline: no share link, no analytics, default theme, local fonts.

    Returns what ``gr.Blocks.launch`` returns (app, local URL, share URL); with
    ``prevent_thread_lock`` it returns at once and ``demo.close()`` stops the server.
    """
    uploads = getattr(demo, "uploads", None)
    middleware = [Middleware(UploadWatcher, uploads=uploads)] if uploads is not None else []
    return demo.launch(
        app_kwargs={"middleware": middleware},
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=prevent_thread_lock,
        show_error=False,
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        enable_monitoring=False,
        max_file_size=max_file_size,
        footer_links=["api", "settings"],
        css=CSS,
        quiet=quiet,
    )
