"""The Gradio web demo: an image through the tokenizer, what it costs and what its tokens mean.

``build_app()`` returns the Blocks, ``launch()`` serves them offline (no analytics, no share
link, default theme, fonts served locally). The named API endpoints ``/reconstruct``,
``/encode``, ``/decode`` and ``/scales`` are documented in the README and in ``API_DOC`` below.
The next-scale (VAR) section's engine is in ``vqedge.demo.scales``.
"""

from __future__ import annotations

import functools
import logging
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import onnxruntime as ort
import pandas as pd
from PIL import Image

from vqedge.demo import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_SIDE,
    DEFAULT_QUEUE_SIZE,
)
from vqedge.demo.metrics import (
    HEATMAP_MAX,
    code_palette,
    compression,
    error_heatmap,
    png_bytes,
    ssim,
    token_image,
)
from vqedge.demo.scales import MULTI_SCALE, ScalesEngine, bundle_kind, default_scales_bundle
from vqedge.runtime.inputs import read_image
from vqedge.runtime.manifest import BundleError
from vqedge.runtime.metrics import codebook_stats, psnr
from vqedge.runtime.providers import CPU, provider_names, resolve_providers
from vqedge.runtime.tokenizer import Tokenizer

log = logging.getLogger(__name__)

# the held-out photos (see examples/SOURCES.md); none when the package data is missing
EXAMPLES = sorted(p for p in (Path(__file__).parent / "examples").glob("*.[jp][pn]g"))
PRECISIONS = ("fp32", "fp16", "int8")
# never decode an upload with more pixels than this (a 20 MB PNG can hold billions)
MAX_DECODE_PIXELS = 50_000_000
TOP_CODES = 20  # bars in the codebook-usage plot
TOKEN_FILE_MAX_AGE_S = 3600  # .vqt files the demo wrote are removed after this
# listed by onnxruntime but runs no local model
NOT_LOCAL_PROVIDERS = {"AzureExecutionProvider"}
MODES = ("one code", "random codes", "codes from another image")
CSS = "#token-map img { cursor: crosshair; image-rendering: pixelated; }"

API_DOC = """\
`/reconstruct`, `/encode` and `/decode` take `precision` (`fp32`, `fp16`, `int8`; default
`fp32`) and `provider` (an available onnxruntime execution provider; default the best one)
after their first input; `/scales` runs the multi-scale bundle at fp32 on the default provider.

| endpoint | takes | returns |
| --- | --- | --- |
| `/reconstruct` | `image` (file) | reconstruction (PNG), token map (PNG), metrics (JSON) |
| `/encode` | `image` (file) | token file (`.vqt`), tokens (JSON: `indices` [h][w], sizes, K) |
| `/decode` | `tokens` (a `.vqt` file from `/encode` or `vqedge encode`) | image (PNG) |
| `/scales` | `image` (file) | JSON: `tokens` ([pn][pn] per scale), `psnr_db` (scales 1..k) |

```python
from gradio_client import Client, handle_file
client = Client("http://127.0.0.1:7860/", analytics_enabled=False)
recon, token_map, metrics = client.predict(handle_file("photo.jpg"), api_name="/reconstruct")
vqt, tokens = client.predict(handle_file("photo.jpg"), api_name="/encode")
image = client.predict(handle_file(vqt), api_name="/decode")
scales = client.predict(handle_file("photo.jpg"), api_name="/scales")
```
"""


class Engine:
    """Tokenizers by (precision, provider), loaded once and shared by every request.

    Parameters
    ----------
    bundle : str or Path, optional
        Bundle folder or shipped name (default: the shipped default).
    max_side : int
        Largest image side tokenized; larger uploads are downscaled or refused.
    oversize : {"downscale", "refuse"}
        What happens to an upload with a side above ``max_side``.
    threads : int, optional
        Intra-op threads per onnxruntime session.
    """

    def __init__(
        self,
        bundle: str | Path | None = None,
        max_side: int = DEFAULT_MAX_SIDE,
        oversize: str = "downscale",
        threads: int | None = None,
    ) -> None:
        if oversize not in ("downscale", "refuse"):
            raise ValueError(f"oversize must be 'downscale' or 'refuse', got {oversize!r}")
        if max_side < 1:
            raise ValueError(f"max_side must be positive, got {max_side}")
        if bundle_kind(bundle) == MULTI_SCALE:
            raise BundleError(
                f"bundle {bundle} is a multi-scale bundle: the demo's main view takes a "
                "single-scale one; pass it as --scales-bundle (scales_bundle= in build_app)"
            )
        self.bundle, self.max_side, self.oversize = bundle, max_side, oversize
        self.threads = threads
        self.providers = [p for p in ort.get_available_providers() if p not in NOT_LOCAL_PROVIDERS]
        self.default_provider = provider_names(resolve_providers("auto", "fp32"))[0]
        self._lock = threading.Lock()
        self._tokenizers: dict[tuple[str, str], Tokenizer] = {}
        base = self.tokenizer("fp32", self.default_provider)  # a bad bundle fails at start
        self.f, self.K = base.f, base.codebook_size
        self.bits_per_token = base.config.bits_per_token
        self.bundle_name, self.base = base.root.name, base
        self.palette = code_palette(base.codebook)
        self._workdir = tempfile.TemporaryDirectory(prefix="vqedge-demo-")
        self.workdir = Path(self._workdir.name)

    def tokenizer(self, precision: str, provider: str) -> Tokenizer:
        """The tokenizer for a precision and provider, loaded and warmed up on first use."""
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if provider not in self.providers:
            raise ValueError(f"provider must be one of {self.providers}, got {provider!r}")
        key = (precision, provider)
        with self._lock:
            tok = self._tokenizers.get(key)
            if tok is None:
                providers = [provider] if provider == CPU else [provider, CPU]
                tok = Tokenizer.load(
                    self.bundle,
                    providers=providers,
                    precision=precision,
                    threads=self.threads,
                    max_side=self.max_side,
                )
                # create all three sessions now, once, rather than racing in requests
                tok.decode(tok.quantize(tok.encode_latent(np.zeros((8, 8, 3), np.uint8))))
                self._tokenizers[key] = tok
        return tok

    def load_image(self, path: str | Path | None) -> tuple[np.ndarray, str]:
        """An uploaded file as uint8 RGB within ``max_side``, and a note on what was done."""
        if path is None:
            raise ValueError("no image: upload one, paste one, or pick an example")
        name = Path(path).name
        try:
            with Image.open(path) as im:
                w, h = im.size
            if w * h > MAX_DECODE_PIXELS:
                raise ValueError(f"{w}x{h} pixels is too many to decode")
            img = read_image(path)
        except Exception as e:  # PIL raises many types (and DecompressionBombError)
            raise ValueError(
                f"cannot read {name!r} as an image: the file is corrupt or not an image format "
                f"Pillow reads ({type(e).__name__})"
            ) from None
        h, w = img.shape[:2]
        if max(h, w) <= self.max_side:
            return img, ""
        if self.oversize == "refuse":
            raise ValueError(
                f"the image is {w}x{h} pixels; this demo takes at most {self.max_side} pixels "
                "on a side (resize it, or start the demo with a larger --max-side)"
            )
        s = self.max_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))
        return img, f"downscaled from {w}x{h} to {size[0]}x{size[1]} (limit {self.max_side} px)"

    def write_tokens(self, idx: np.ndarray, size: tuple[int, int], stem: str) -> Path:
        """Save a token map [1, h, w] as a .vqt file in the demo's folder (old ones pruned)."""
        now = time.time()
        for old in self.workdir.iterdir():
            if now - old.stat().st_mtime > TOKEN_FILE_MAX_AGE_S:
                shutil.rmtree(old, ignore_errors=True)
        folder = self.workdir / uuid.uuid4().hex  # one folder per file: keeps the name
        folder.mkdir()
        path = folder / f"{stem}.vqt"
        self.base.save_tokens(path, idx, image_size=size)
        return path

    def analyze(self, img: np.ndarray, precision: str, provider: str) -> dict[str, Any]:
        """Encode, quantize and decode one image stage by stage, timing each, and measure it.

        Returns
        -------
        dict
            ``recon`` uint8 [H, W, 3], ``idx`` int64 [h, w], ``heatmap`` and ``token_map``
            uint8 [H, W, 3], and ``metrics`` (JSON-ready).
        """
        tok = self.tokenizer(precision, provider)
        size = img.shape[:2]
        t0 = time.perf_counter()
        latent = tok.encode_latent(img)
        t1 = time.perf_counter()
        idx = tok.quantize(latent)
        t2 = time.perf_counter()
        recon = tok.decode(idx, size=size)[0]
        t3 = time.perf_counter()
        counts = np.bincount(idx.ravel(), minlength=self.K)
        top = [int(c) for c in np.argsort(-counts, kind="stable")[:TOP_CODES] if counts[c]]
        stats = codebook_stats(idx, self.K)
        png = png_bytes(img)
        p = psnr(recon, img)
        metrics = {
            "image_size": list(size),
            "token_shape": list(idx.shape[1:]),
            "psnr_db": p if np.isfinite(p) else None,  # None: identical images
            "ssim": ssim(img, recon),
            **compression(idx.size, self.bits_per_token, size, png),
            "png_bytes": png,
            "bits_per_token": self.bits_per_token,
            "codebook_size": self.K,
            "codes_used": stats["codes_used"],
            "perplexity": stats["perplexity"],
            "top_codes": [[c, int(counts[c])] for c in top],
            "latency_ms": {
                "encode": 1e3 * (t1 - t0),
                "quantize": 1e3 * (t2 - t1),
                "decode": 1e3 * (t3 - t2),
            },
            "precision": tok.precision,
            "providers": {g: ps[0] for g, ps in tok.info["providers_in_use"].items()},
        }
        return {
            "recon": recon,
            "idx": idx[0],
            "heatmap": error_heatmap(img, recon),
            "token_map": token_image(idx[0], self.palette, self.f, size),
            "metrics": metrics,
        }

    def decode_file(self, path: str | Path, precision: str, provider: str) -> np.ndarray:
        """A .vqt token file of one image -> uint8 [H, W, 3] (cropped to its stored size)."""
        tok = self.tokenizer(precision, provider)
        tf = tok.load_tokens(path)
        idx = tf.indices
        if idx.shape[0] != 1:
            raise ValueError(f"the file holds {idx.shape[0]} images; /decode takes one")
        if max(idx.shape[1:]) * self.f > self.max_side:
            raise ValueError(
                f"a {idx.shape[2]}x{idx.shape[1]} token map decodes to more than "
                f"{self.max_side} pixels on a side, this demo's limit"
            )
        return tok.decode(idx, size=tuple(tf.image_size) if tf.image_size else None)[0]

    def replace(
        self,
        idx: np.ndarray,
        region: tuple[int, int, int, int],
        mode: str,
        code: int = 0,
        seed: int = 0,
        other: np.ndarray | None = None,
        tok: Tokenizer | None = None,
    ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """Replace the codes of a region (top, bottom, left, right; inclusive) of a map [h, w].

        ``mode`` is one of MODES; "codes from another image" encodes ``other`` with ``tok``,
        resized to the map's h*f x w*f pixels, and takes its codes at the same places. Returns
        the new map and the region, ordered and clipped to the map.
        """
        h, w = idx.shape
        top, bottom = sorted(int(np.clip(v, 0, h - 1)) for v in region[:2])
        left, right = sorted(int(np.clip(v, 0, w - 1)) for v in region[2:])
        rows, cols = slice(top, bottom + 1), slice(left, right + 1)
        out = idx.copy()
        if mode == MODES[0]:
            if not 0 <= code < self.K:
                raise ValueError(f"the code must be in [0, {self.K - 1}], got {code}")
            out[rows, cols] = code
        elif mode == MODES[1]:
            shape = (bottom - top + 1, right - left + 1)
            out[rows, cols] = np.random.default_rng(seed).integers(0, self.K, shape)
        elif mode == MODES[2]:
            if other is None or tok is None:
                raise ValueError("choose another image to take the codes from")
            size = (w * self.f, h * self.f)
            other = np.asarray(Image.fromarray(other).resize(size, Image.Resampling.LANCZOS))
            out[rows, cols] = tok.encode(other)[0][rows, cols]
        else:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return out, (top, bottom, left, right)


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
        ("latency", f"encode {lat['encode']:.1f} ms, quantize {lat['quantize']:.1f} ms, "
                    f"decode {lat['decode']:.1f} ms"),
        ("ran", f"{m['precision']} {ran}"),
    ]  # fmt: skip
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    head = f"### PSNR {p} dB · SSIM {m['ssim']:.4f} (luma)"
    return f"{head}\n\n| measure | value |\n|---|---|\n{table}"


def _usage_frame(metrics: dict[str, Any]) -> pd.DataFrame:
    top = metrics["top_codes"]
    return pd.DataFrame({"code": [f"#{c}" for c, _ in top], "count": [n for _, n in top]})


def _readable(fn):
    """Show every failure as a short message in the UI (and to API clients), never a trace."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, OSError, RuntimeError) as e:
            raise gr.Error(str(e)) from None
        except Exception as e:
            log.exception("vqedge demo: unexpected error")
            raise gr.Error(f"unexpected error ({type(e).__name__}); see the server log") from None

    return wrapper


def _upload_image(**kw) -> gr.Image:
    """An image input (path to the uploaded file) whose decoding errors reach the user as a
    message rather than a bare 'Error'."""
    comp = gr.Image(type="filepath", image_mode=None, **kw)
    preprocess = comp.preprocess

    def readable(payload):
        try:
            return preprocess(payload)
        except Exception as e:
            name = getattr(payload, "orig_name", None) or "the file"
            raise gr.Error(
                f"cannot read {name!r} as an image: the file is corrupt or not an image format "
                f"Pillow reads ({type(e).__name__})"
            ) from None

    # an instance attribute, not a subclass: gradio writes a .pyi stub beside the module
    # that defines a component subclass
    comp.preprocess = readable
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


def build_app(
    bundle: str | Path | None = None,
    max_side: int = DEFAULT_MAX_SIDE,
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
        Bundle folder or shipped name.
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
        without one the section says so). Loaded on its first request.
    """
    eng = Engine(bundle, max_side, oversize, threads)
    ms = ScalesEngine(
        scales_bundle if scales_bundle is not None else default_scales_bundle(),
        eng.default_provider,
        threads,
    )
    model = {"concurrency_limit": concurrency, "concurrency_id": "tokenizer"}
    ui = {"api_visibility": "private", **model}

    def image_kw(label: str, **kw) -> dict:
        return {"label": label, "format": "png", "buttons": ["download", "fullscreen"], **kw}

    with gr.Blocks(title="vqedge demo", analytics_enabled=False, delete_cache=(900, 3600)) as demo:
        gr.Markdown(
            f"# vqedge: an image as {eng.K} codes\n"
            f"Bundle `{eng.bundle_name}`: every {eng.f}x{eng.f} pixel block becomes one of "
            f"{eng.K} codes ({eng.bits_per_token} bits), decoded back to pixels, on onnxruntime "
            f"without PyTorch. Larger sides than {max_side} px are "
            f"{'downscaled' if oversize == 'downscale' else 'refused'}."
        )
        with gr.Row():
            with gr.Column(scale=3):
                inp = _image_input("input-image", height=300)
            with gr.Column(scale=2):
                precision = gr.Radio(list(PRECISIONS), value="fp32", label="Precision")
                provider = gr.Dropdown(
                    eng.providers, value=eng.default_provider, label="Execution provider"
                )
                run = gr.Button("Tokenize and reconstruct", variant="primary")
                tokens_file = gr.File(label="Token file (.vqt)", interactive=False)
        with gr.Row(equal_height=True):
            orig_out = gr.Image(**image_kw("Original"))
            recon_out = gr.Image(**image_kw("Reconstruction (lossless PNG)"))
            heat_out = gr.Image(
                **image_kw(f"Error per pixel (RMS over RGB: black 0, yellow ≥{HEATMAP_MAX:g})")
            )
        with gr.Row():
            with gr.Column(scale=3):
                metrics_md = gr.Markdown(elem_id="metrics")
            with gr.Column(scale=2):
                usage = gr.BarPlot(
                    x="code",
                    y="count",
                    sort="-y",
                    y_lim=[0, None],
                    x_label_angle=-45,
                    label=f"The {TOP_CODES} most used codes in this image",
                )

        gr.Markdown(
            "## Tokens made tangible\nClick two corners on the token map (or use the sliders) "
            "to select a region, choose what to put there, and decode the edited tokens."
        )
        with gr.Row(equal_height=True):
            tokmap = gr.Image(
                **image_kw("Token map (colour = the code's vector, first 3 principal components)"),
                elem_id="token-map",
            )
            edited_out = gr.Image(**image_kw("Decoded from the edited tokens"))
        with gr.Row():
            top = gr.Slider(0, 1, value=0, step=1, label="Top row")
            bottom = gr.Slider(0, 1, value=0, step=1, label="Bottom row")
            left = gr.Slider(0, 1, value=0, step=1, label="Left column")
            right = gr.Slider(0, 1, value=0, step=1, label="Right column")
        with gr.Row():
            with gr.Column():
                mode = gr.Radio(list(MODES), value=MODES[0], label="Replace the region's codes by")
                code = gr.Number(0, precision=0, minimum=0, maximum=eng.K - 1, label="Code")
                seed = gr.Number(0, precision=0, label="Seed (random codes)")
                with gr.Row():
                    apply_btn = gr.Button("Replace and decode", variant="primary")
                    reset_btn = gr.Button("Reset tokens")
                edit_md = gr.Markdown()
            with gr.Column():
                other = _upload_image(
                    label="Another image (for its codes)",
                    sources=["upload", "clipboard"],
                    height=200,
                )
                if EXAMPLES:
                    gr.Examples([[str(p)] for p in EXAMPLES], [other], label="Held-out photos")
        with gr.Accordion("Next-scale tokens (VAR)", open=True, elem_id="scales"):
            if ms.available:
                R = ms.resolution
                gr.Markdown(ms.intro())
                with gr.Row():
                    with gr.Column(scale=3):
                        ms_inp = _image_input("scales-input", height=250)
                        ms_run = gr.Button("Tokenize scale by scale", variant="primary")
                    with gr.Column(scale=2):
                        ms_fitted = gr.Image(**image_kw(f"Input fitted to {R}x{R}"), height=250)
                ms_md = gr.Markdown(elem_id="scales-summary")
                gallery = {"format": "png", "columns": 5, "object_fit": "contain"}
                ms_maps = gr.Gallery(
                    label="Token map of each scale (colour = the code's vector)",
                    elem_id="scales-maps",
                    **gallery,
                )
                ms_recons = gr.Gallery(
                    label="Decoded from scales 1 to k (PSNR against the fitted input)",
                    elem_id="scales-recons",
                    **gallery,
                )
            else:
                gr.Markdown(ms.unavailable_message(), elem_id="scales-summary")
        with gr.Accordion("API", open=False):
            gr.Markdown(API_DOC)
        state = gr.State(None)

        # -- the UI's events ---------------------------------------------------------------
        region = [top, bottom, left, right]

        @_readable
        def on_run(path, prec, prov):
            img, note = eng.load_image(path)
            r = eng.analyze(img, prec, prov)
            h, w = r["idx"].shape
            box = (h // 4, max(h // 2 - 1, h // 4), w // 4, max(w // 2 - 1, w // 4))
            vqt = eng.write_tokens(r["idx"][None], img.shape[:2], Path(path).stem)
            st = {"img": img, "idx": r["idx"], "edited": r["idx"].copy(), "anchor": None}
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

        run.click(
            on_run,
            [inp, precision, provider],
            [orig_out, recon_out, heat_out, metrics_md, usage, tokmap, edited_out, tokens_file]
            + [state, edit_md, *region],
            **ui,
        )

        def draw(st, box):
            img = token_image(st["edited"], eng.palette, eng.f, st["img"].shape[:2])
            return _outline(img, box, eng.f)

        @_readable
        def on_select(st, evt: gr.SelectData):
            if st is None:
                raise ValueError("tokenize an image first")
            x, y = evt.index
            r, c = int(y) // eng.f, int(x) // eng.f
            if st["anchor"] is None:
                st["anchor"], box = (r, c), (r, r, c, c)
                msg = f"corner at row {r}, column {c}: now click the opposite corner"
            else:
                (r0, c0), st["anchor"] = st["anchor"], None
                box = (min(r, r0), max(r, r0), min(c, c0), max(c, c0))
                n = (box[1] - box[0] + 1) * (box[3] - box[2] + 1)
                msg = f"selected rows {box[0]}-{box[1]}, columns {box[2]}-{box[3]} ({n} tokens)"
            return [draw(st, box), st, msg, *box]

        tokmap.select(
            on_select,
            [state],
            [tokmap, state, edit_md, *region],
            api_visibility="private",
            queue=False,
        )

        @_readable
        def on_region(st, *box):
            return None if st is None else draw(st, tuple(int(v) for v in box))

        for s in region:
            s.release(on_region, [state, *region], [tokmap], api_visibility="private", queue=False)

        @_readable
        def on_apply(st, t, b, le, ri, how, k, sd, other_path, prec, prov):
            if st is None:
                raise ValueError("tokenize an image first")
            tok = eng.tokenizer(prec, prov)
            other_img = eng.load_image(other_path)[0] if how == MODES[2] and other_path else None
            before = st["edited"]
            st["edited"], box = eng.replace(
                before, (t, b, le, ri), how, int(k or 0), int(sd or 0), other_img, tok
            )
            t0 = time.perf_counter()
            out = tok.decode(st["edited"][None], size=st["img"].shape[:2])[0]
            ms = 1e3 * (time.perf_counter() - t0)
            changed = int((st["edited"] != before).sum())
            total = int((st["edited"] != st["idx"]).sum())
            msg = (
                f"{changed} tokens changed now, {total} in all; decoded in {ms:.1f} ms; "
                f"PSNR against the original {psnr(out, st['img']):.2f} dB"
            )
            return [draw(st, box), out, st, msg]

        apply_btn.click(
            on_apply,
            [state, *region, mode, code, seed, other, precision, provider],
            [tokmap, edited_out, state, edit_md],
            **ui,
        )

        @_readable
        def on_reset(st, t, b, le, ri, prec, prov):
            if st is None:
                raise ValueError("tokenize an image first")
            st["edited"] = st["idx"].copy()
            out = eng.tokenizer(prec, prov).decode(st["idx"][None], size=st["img"].shape[:2])[0]
            return [draw(st, (int(t), int(b), int(le), int(ri))), out, st, "tokens reset"]

        reset_btn.click(
            on_reset,
            [state, *region, precision, provider],
            [tokmap, edited_out, state, edit_md],
            **ui,
        )

        if ms.available:

            @_readable
            def on_scales(path):
                img, note = eng.load_image(path)
                r = ms.analyze(img)
                maps, recons = ms.galleries(r)
                return r["fitted"], maps, recons, ms.summary(r, img.shape[:2], note)

            ms_run.click(on_scales, [ms_inp], [ms_fitted, ms_maps, ms_recons, ms_md], **ui)

        # -- the named API endpoints (hidden components; see API_DOC) ---------------------
        with gr.Row(visible=False):
            a_image = _upload_image(label="image")
            a_tokens = gr.File(label="tokens")
            a_precision = gr.Dropdown(list(PRECISIONS), value="fp32", label="precision")
            a_provider = gr.Dropdown(eng.providers, value=eng.default_provider, label="provider")
            a_recon = gr.Image(format="png", label="reconstruction")
            a_tokmap = gr.Image(format="png", label="token map")
            a_metrics = gr.JSON(label="metrics")
            a_vqt = gr.File(label="token file")
            a_json = gr.JSON(label="tokens")
            a_decoded = gr.Image(format="png", label="image")
            a_scales = gr.JSON(label="scales")
            a_buttons = [gr.Button() for _ in range(4)]

        @_readable
        def api_reconstruct(image, precision, provider):
            """Image -> reconstruction (PNG), token map (PNG) and metrics (JSON)."""
            img, note = eng.load_image(image)
            r = eng.analyze(img, precision, provider)
            return r["recon"], r["token_map"], {**r["metrics"], "note": note}

        @_readable
        def api_encode(image, precision, provider):
            """Image -> token file (.vqt) and tokens (JSON)."""
            img, note = eng.load_image(image)
            idx = eng.tokenizer(precision, provider).encode(img)
            vqt = eng.write_tokens(idx, img.shape[:2], Path(image).stem)
            return str(vqt), {
                "indices": idx[0].tolist(),
                "token_shape": list(idx.shape[1:]),
                "image_size": list(img.shape[:2]),
                "codebook_size": eng.K,
                "bits_per_token": eng.bits_per_token,
                "file_bytes": vqt.stat().st_size,
                "note": note,
            }

        @_readable
        def api_decode(tokens, precision, provider):
            """Token file (.vqt) -> image (PNG)."""
            if tokens is None:
                raise ValueError("no token file given")
            return eng.decode_file(tokens, precision, provider)

        opts = [a_precision, a_provider]
        a_buttons[0].click(
            api_reconstruct,
            [a_image, *opts],
            [a_recon, a_tokmap, a_metrics],
            api_name="reconstruct",
            **model,
        )
        a_buttons[1].click(
            api_encode, [a_image, *opts], [a_vqt, a_json], api_name="encode", **model
        )
        a_buttons[2].click(api_decode, [a_tokens, *opts], [a_decoded], api_name="decode", **model)

        @_readable
        def api_scales(image):
            """Image -> every scale's tokens and the PSNR of each progressive decoding (JSON)."""
            if not ms.available:  # before reading the image: the same answer for any input
                raise ValueError(ms.unavailable_message())
            img, note = eng.load_image(image)
            return ms.to_json(ms.analyze(img), img.shape[:2], note)

        a_buttons[3].click(api_scales, [a_image], [a_scales], api_name="scales", **model)

    demo.queue(max_size=queue_size, default_concurrency_limit=concurrency)
    demo.engine = eng  # the tokenizers behind every endpoint (for tests and embedding)
    demo.scales_engine = ms  # the multi-scale tokenizer behind the next-scale section
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
    return demo.launch(
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
