"""What the demo computes, without gradio: uploads read within limits, analysis, token editing,
token-file decoding and the next-scale (VAR) section.

``Engine`` holds the single-scale tokenizers by (precision, provider); ``ScalesEngine`` the
multi-scale one. Both take the uploaded file's path and answer with arrays, JSON-ready dicts
and short texts; every refusal is a ``ValueError`` whose message names the user's file (never
the server's temporary path). ``vqedge.demo.app`` lays these out as a page.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image

from vqedge.demo import OVERSIZE_CHOICES, UPLOAD_MAX_SIDE
from vqedge.demo.metrics import (
    code_palette,
    compression,
    error_heatmap,
    png_bytes,
    ssim,
    token_image,
)
from vqedge.runtime import list_bundles, load
from vqedge.runtime.inputs import MAX_PIXELS, ImageError, read_image
from vqedge.runtime.kind import NEXT_SCALE, TOKEN_EDITING, kind_of
from vqedge.runtime.manifest import PRECISIONS, BundleError
from vqedge.runtime.metrics import codebook_stats, psnr
from vqedge.runtime.plan import AUTO
from vqedge.runtime.providers import (
    CPU,
    OPENVINO,
    RUN_PRECISIONS,
    provider_names,
    resolve_providers,
)
from vqedge.runtime.session import default_session_options
from vqedge.runtime.tokens import TokenFile, load_tokens

TOP_CODES = 20  # codes listed in the usage plot
TOKEN_FILE_MAX_AGE_S = 3600  # .vqt files the demo wrote are removed after this
# listed by onnxruntime but runs no local model
NOT_LOCAL_PROVIDERS = {"AzureExecutionProvider"}
MODES = ("one code", "random codes", "codes from another image")
# the shipped multi-scale bundle the next-scale section uses when installed
DEFAULT_SCALES_BUNDLE = "vqvae-ms-f8"
TOKEN_VIEW = 256  # px: each scale's token map is drawn about this large, nearest neighbour


# -- uploads ------------------------------------------------------------------------------


def read_upload(
    path: str | Path | None,
    max_side: int = UPLOAD_MAX_SIDE,
    oversize: str = "downscale",
    max_pixels: int = MAX_PIXELS,
) -> tuple[np.ndarray, str]:
    """An uploaded image as uint8 RGB [H, W, 3] within ``max_side``, and a note on what was done.

    Read by the runtime's one reader (``vqedge.runtime.inputs.read_image``): the header is
    checked against the demo's limits before any pixel is decoded, and a JPEG larger than
    ``max_side`` is decoded at a reduced scale, so a large photo never exists at full size.

    Raises
    ------
    ValueError
        No file, a file that is not an image, a side above ``max_side`` with ``oversize``
        "refuse", or more than ``max_pixels`` to decode; the message names the user's file
        and the demo option whose limit was hit.
    """
    if path is None:
        raise ValueError("no image: upload one, paste one, or pick an example")
    if oversize not in OVERSIZE_CHOICES:
        raise ValueError(f"oversize must be one of {OVERSIZE_CHOICES}, got {oversize!r}")
    name = repr(Path(path).name)
    refuse = oversize == "refuse"
    try:
        img = read_image(
            path,
            max_side=max_side if refuse else None,
            max_pixels=max_pixels,
            downscale_to=None if refuse else max_side,
            name=name,
        )
    except ImageError as e:
        msg = str(e).replace("(max_side)", "(the demo's --max-side)")
        raise ImageError(msg.replace("limit of ", "demo's limit of ", 1)) from None
    declared = _declared_size(path)
    if declared is None or max(declared) <= max_side or max(img.shape[:2]) == max(declared):
        return img, ""
    h, w = img.shape[:2]
    dw, dh = declared if (w >= h) == (declared[0] >= declared[1]) else declared[::-1]
    return img, f"downscaled from {dw}x{dh} to {w}x{h} (limit {max_side} px)"


def _declared_size(path: str | Path) -> tuple[int, int] | None:
    """(W, H) from a readable image file's header."""
    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # noqa: BLE001 (it was read once already: this is only for the note)
        return None


def user_message(e: Exception, path: str | Path) -> str:
    """An error's message as a web user should read it: their file's name, not the server's
    path, and no advice only a Python caller can follow."""
    msg = str(e).replace(str(path), repr(Path(path).name))
    cut = msg.find("; pass force=True")
    return msg[:cut] if cut >= 0 else msg


def _tokens(n: int) -> str:
    return f"{n} token{'s' if n != 1 else ''}"


# -- the single-scale tokenizer: analysis, token files, editing ---------------------------


@dataclass
class Edit:
    """One tokenized image and the edits made to its token map [h, w]."""

    img: np.ndarray  # uint8 [H, W, 3], what was tokenized
    idx: np.ndarray  # int64 [h, w], its tokens
    edited: np.ndarray = field(init=False)  # the tokens as edited so far
    anchor: tuple[int, int] | None = None  # the first corner clicked, until the second

    def __post_init__(self) -> None:
        self.edited = self.idx.copy()

    def default_region(self) -> tuple[int, int, int, int]:
        """A region to start from: the top-left quarter's lower-right part."""
        h, w = self.idx.shape
        return h // 4, max(h // 2 - 1, h // 4), w // 4, max(w // 2 - 1, w // 4)

    def click(self, row: int, col: int) -> tuple[tuple[int, int, int, int], str]:
        """A click on token (row, col): the first sets a corner, the second the region.
        Returns the region (top, bottom, left, right; inclusive) and what to tell the user."""
        if self.anchor is None:
            self.anchor = (row, col)
            return (row, row, col, col), (
                f"corner at row {row}, column {col}: now click the opposite corner"
            )
        (r0, c0), self.anchor = self.anchor, None
        box = (min(row, r0), max(row, r0), min(col, c0), max(col, c0))
        n = (box[1] - box[0] + 1) * (box[3] - box[2] + 1)
        return box, f"selected rows {box[0]}-{box[1]}, columns {box[2]}-{box[3]} ({n} tokens)"


class Engine:
    """Tokenizers by (precision, provider), loaded once and shared by every request.

    Parameters
    ----------
    bundle : str or Path, optional
        Single-scale bundle folder or shipped name (default: the shipped default).
    max_side : int
        Largest image side tokenized; larger uploads are downscaled or refused.
    oversize : {"downscale", "refuse"}
        What happens to an upload with a side above ``max_side``.
    threads : int, optional
        Intra-op threads per onnxruntime session.
    max_pixels : int
        Most pixels an upload may decode to.
    """

    def __init__(
        self,
        bundle: str | Path | None = None,
        max_side: int = UPLOAD_MAX_SIDE,
        oversize: str = "downscale",
        threads: int | None = None,
        max_pixels: int = MAX_PIXELS,
    ) -> None:
        if oversize not in OVERSIZE_CHOICES:
            raise ValueError(f"oversize must be one of {OVERSIZE_CHOICES}, got {oversize!r}")
        if max_side < 1 or max_pixels < 1:
            raise ValueError(
                f"max_side and max_pixels must be positive, got {max_side} and {max_pixels}"
            )
        self.bundle, self.max_side, self.oversize = bundle, max_side, oversize
        self.threads, self.max_pixels = threads, max_pixels
        self.providers = [p for p in ort.get_available_providers() if p not in NOT_LOCAL_PROVIDERS]
        # bf16 runs the fp32 graphs on OpenVINO only; elsewhere it would only be refused
        # "auto": per stage, the fastest precision that holds its fidelity tier here
        base = RUN_PRECISIONS if OPENVINO in self.providers else PRECISIONS
        self.precisions = (*base, AUTO)
        self.default_provider = provider_names(resolve_providers("auto", "fp32"))[0]
        self._lock = threading.Lock()
        self._tokenizers: dict[tuple[str, str], Any] = {}
        base = self.tokenizer("fp32", self.default_provider)  # a bad bundle fails at start
        # a model with attention has its own, lower limit: its memory grows with side^4
        self.max_side = min(self.max_side, base.max_side)
        self.f, self.K = base.f, base.codebook_size
        self.bits_per_token = base.config.bits_per_token
        self.bundle_name, self.base = base.root.name, base
        self.palette = code_palette(base.codebook)
        self._workdir = tempfile.TemporaryDirectory(prefix="vqedge-demo-")
        self.workdir = Path(self._workdir.name)

    def tokenizer(self, precision: str, provider: str):
        """The tokenizer for a precision and provider, loaded and warmed up on first use."""
        if precision not in self.precisions:
            raise ValueError(f"precision must be one of {self.precisions}, got {precision!r}")
        if provider not in self.providers:
            raise ValueError(f"provider must be one of {self.providers}, got {provider!r}")
        key = (precision, provider)
        with self._lock:
            tok = self._tokenizers.get(key)
            if tok is None:
                tok = load(
                    self.bundle,
                    providers=[provider] if provider == CPU else [provider, CPU],
                    precision=precision,
                    session_options=default_session_options(self.threads, arena=False),
                    # a stage whose precision does not hold its tier on this device runs
                    # fp32, and the page says so beside the choice (``verdict``)
                    strict=False,
                )
                if not kind_of(tok).offers(TOKEN_EDITING):
                    raise BundleError(
                        f"bundle {tok.root.name} is a {tok.KIND} bundle: the demo's main view "
                        "takes one whose tokens can be edited (single-scale); if it has "
                        "next-scale maps, pass it as --scales-bundle (scales_bundle= in build_app)"
                    )
                # create every session now, once, rather than racing in requests
                tok.reconstruct_image(np.zeros((8, 8, 3), np.uint8))
                self._tokenizers[key] = tok
        return tok

    def verdict(self, precision: str, provider: str) -> str:
        """The plan that runs for ``precision`` here and its verdict (one Markdown line)."""
        tok = self.tokenizer(precision, provider)
        text = "not checked" if tok.verification is None else tok.verification.describe()
        return f"**On this device:** {text}"

    def read(self, path: str | Path | None) -> tuple[np.ndarray, str]:
        """An uploaded image within the demo's limits, and a note on what was done to it."""
        return read_upload(path, self.max_side, self.oversize, self.max_pixels)

    def analyze(self, img: np.ndarray, precision: str, provider: str) -> dict[str, Any]:
        """Tokenize one image, decode its tokens, time both and measure the result.

        Returns
        -------
        dict
            ``recon`` uint8 [H, W, 3], ``idx`` int64 [h, w], ``heatmap`` and ``token_map``
            uint8 [H, W, 3], and ``metrics`` (JSON-ready).
        """
        tok = self.tokenizer(precision, provider)
        t0 = time.perf_counter()
        idx, img = tok.encode_image(img)
        t1 = time.perf_counter()
        size = img.shape[:2]
        recon = tok.decode(idx, size=size)[0]
        t2 = time.perf_counter()
        counts = np.bincount(idx.ravel(), minlength=self.K)
        top = [int(c) for c in np.argsort(-counts, kind="stable")[:TOP_CODES] if counts[c]]
        stats = codebook_stats(idx, self.K)
        png = png_bytes(img)
        p = psnr(recon, img)
        metrics = {
            "image_size": list(size),
            "token_shape": list(idx.shape[1:]),
            "tokens": tok.describe_tokens(idx),
            "psnr_db": p if np.isfinite(p) else None,  # None: identical images
            "ssim": ssim(img, recon),
            **compression(idx.size, self.bits_per_token, size, png),
            "png_bytes": png,
            "bits_per_token": self.bits_per_token,
            "codebook_size": self.K,
            "codes_used": stats["codes_used"],
            "perplexity": stats["perplexity"],
            "top_codes": [[c, int(counts[c])] for c in top],
            "latency_ms": {"encode": 1e3 * (t1 - t0), "decode": 1e3 * (t2 - t1)},
            "precision": tok.plan.describe(),
            "providers": {g: ps[0] for g, ps in tok.info["providers_in_use"].items()},
        }
        return {
            "recon": recon,
            "idx": idx[0],
            "heatmap": error_heatmap(img, recon),
            "token_map": token_image(idx[0], self.palette, self.f, size),
            "metrics": metrics,
        }

    def encode(
        self, img: np.ndarray, precision: str, provider: str, stem: str
    ) -> tuple[Path, dict[str, Any]]:
        """Tokenize one image into a .vqt file; returns the file and the tokens as JSON."""
        tok = self.tokenizer(precision, provider)
        idx, img = tok.encode_image(img)
        vqt = self.write_tokens(idx, img.shape[:2], stem)
        return vqt, {
            "indices": idx[0].tolist(),
            "token_shape": list(idx.shape[1:]),
            "image_size": list(img.shape[:2]),
            "codebook_size": self.K,
            "bits_per_token": self.bits_per_token,
            "file_bytes": vqt.stat().st_size,
        }

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

    def decode_file(self, path: str | Path | None, precision: str, provider: str) -> np.ndarray:
        """A .vqt token file of one image -> uint8 [H, W, 3] (cropped to its stored size).

        Its header is checked against the bundle and the demo's largest image before the
        payload is read (``vqedge.runtime.tokens.load_tokens``); errors name the file as the
        user called it.
        """
        if path is None:
            raise ValueError("no token file given: upload a .vqt file from /encode")
        name = Path(path).name
        tok = self.tokenizer(precision, provider)
        try:
            tf: TokenFile = load_tokens(
                path,
                bundle_sha256=tok.bundle_sha256,
                codebook_size=tok.codebook_size,
                max_map_side=-(-self.max_side // self.f),
                max_image_side=self.max_side,
                name=repr(name),
            )
            if tf.indices.shape[0] != 1:
                raise ValueError(f"{name!r} holds {tf.indices.shape[0]} images; /decode takes one")
            return tok.decode_file(tf)[0]
        except ValueError as e:
            raise ValueError(user_message(e, path)) from None

    def decode(self, idx: np.ndarray, size: tuple[int, int], precision: str, provider: str):
        """A token map [h, w] -> (uint8 [H, W, 3] cropped to ``size``, milliseconds)."""
        tok = self.tokenizer(precision, provider)
        t0 = time.perf_counter()
        out = tok.decode(idx[None], size=size)[0]
        return out, 1e3 * (time.perf_counter() - t0)

    def start_edit(self, img: np.ndarray, idx: np.ndarray) -> Edit:
        """The editing state of a freshly tokenized image."""
        return Edit(img, idx)

    def apply_edit(
        self,
        st: Edit,
        region: tuple[int, int, int, int],
        mode: str,
        code: int,
        seed: int,
        other: np.ndarray | None,
        precision: str,
        provider: str,
    ) -> tuple[np.ndarray, tuple[int, int, int, int], str]:
        """Replace a region's codes in ``st.edited`` and decode; returns (image, region,
        a sentence on what changed)."""
        tok = self.tokenizer(precision, provider)
        before = st.edited
        st.edited, box = self.replace(before, region, mode, code, seed, other, tok)
        out, ms = self.decode(st.edited, st.img.shape[:2], precision, provider)
        changed = int((st.edited != before).sum())
        total = int((st.edited != st.idx).sum())
        return (
            out,
            box,
            (
                f"{changed} tokens changed now, {total} in all; decoded in {ms:.1f} ms; "
                f"PSNR against the original {psnr(out, st.img):.2f} dB"
            ),
        )

    def replace(
        self,
        idx: np.ndarray,
        region: tuple[int, int, int, int],
        mode: str,
        code: int = 0,
        seed: int = 0,
        other: np.ndarray | None = None,
        tok: Any = None,
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

    def token_view(self, st: Edit) -> np.ndarray:
        """The edited token map as an image of the input's size, one colour per code."""
        return token_image(st.edited, self.palette, self.f, st.img.shape[:2])


# -- the multi-scale (VAR) section --------------------------------------------------------


def default_scales_bundle() -> str | None:
    """The shipped multi-scale bundle's name, or None when this install has none."""
    return DEFAULT_SCALES_BUNDLE if DEFAULT_SCALES_BUNDLE in list_bundles() else None


def token_grid(idx: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """A token map [pn, pn] -> uint8 image: each token a square of its code's colour, about
    TOKEN_VIEW pixels on a side whatever pn (so a 1x1 map is visible too)."""
    pn = idx.shape[0]
    cell = -(-TOKEN_VIEW // pn)  # ceil
    return token_image(idx, palette, cell, (pn * cell, pn * cell))


class ScalesEngine:
    """The multi-scale tokenizer of the next-scale section, loaded at start.

    Parameters
    ----------
    bundle : str or Path, optional
        Multi-scale bundle folder or shipped name; None: the section has no bundle.
    provider : str
        onnxruntime execution provider (the CPU one is the fallback of any other).
    threads : int, optional
        Intra-op threads per onnxruntime session.
    """

    def __init__(
        self, bundle: str | Path | None, provider: str = CPU, threads: int | None = None
    ) -> None:
        self.tok = self.palette = self.name = None
        if bundle is None:
            return
        tok = load(
            bundle,
            providers=[provider] if provider == CPU else [provider, CPU],
            session_options=default_session_options(threads, arena=False),
        )
        if not kind_of(tok).offers(NEXT_SCALE):
            raise BundleError(
                f"bundle {tok.root.name} is a {tok.KIND} bundle; --scales-bundle takes one "
                "with next-scale token maps (multi-scale); pass it as --bundle"
            )
        R = tok.resolution
        tok.reconstruct_image(np.zeros((R, R, 3), np.uint8))  # every session made now
        self.tok, self.name = tok, tok.root.name
        self.palette = code_palette(tok.codebook)
        # the side of each scale's token map, coarse to fine
        self.sides: tuple[int, ...] = tuple(tok.token_layout["map_sides"])
        self.resolution: int = R
        self.num_tokens: int = tok.num_tokens
        self.K: int = tok.codebook_size
        self.bits_per_token: int = tok.config.bits_per_token

    @property
    def available(self) -> bool:
        return self.tok is not None

    def unavailable_message(self) -> str:
        return (
            "No multi-scale bundle is available, so this section is off: the shipped "
            f"`{DEFAULT_SCALES_BUNDLE}` is not installed. Start the demo with "
            "`--scales-bundle DIR` (a bundle exported from a multi-scale checkpoint) to use it."
        )

    def intro(self) -> str:
        pns = self.sides
        return (
            f"Bundle `{self.name}` tokenizes a {self.resolution}x{self.resolution} image into "
            f"{len(pns)} token maps, {pns[0]}x{pns[0]} to {pns[-1]}x{pns[-1]} "
            f"(L = {self.num_tokens} tokens, K = {self.K} codes), coarse to fine: each scale "
            "quantizes what the coarser ones left over, the maps VAR's next-scale prediction "
            "generates one after another."
        ) + (f" {pre[0].upper()}{pre[1:]}." if (pre := self.tok.preprocessing) else "")

    def analyze(self, img: np.ndarray) -> dict[str, Any]:
        """One uint8 photo [H, W, 3] through every scale.

        Returns
        -------
        dict
            ``fitted`` uint8 [R, R, 3]; ``maps`` (int64 [pn, pn] per scale); ``recons``
            (uint8 [R, R, 3] decoded from scales 1..k, per k); ``psnr_db`` (per k, against
            ``fitted``; None where identical); ``latency_ms``.
        """
        if not self.available:
            raise ValueError(self.unavailable_message())
        tok = self.tok
        t0 = time.perf_counter()
        tokens, fitted = tok.encode_image(img)  # fitted: the image the bundle takes
        t1 = time.perf_counter()
        idx_Bl = tok.split(tokens)  # [1, pn*pn] per scale
        recons = [r[0] for r in tok.idxBl_to_img(idx_Bl, last_one=False)]
        t2 = time.perf_counter()
        psnrs = [psnr(r, fitted) for r in recons]
        return {
            "fitted": fitted,
            "maps": tok.token_maps(tokens),
            "recons": recons,
            "psnr_db": [p if np.isfinite(p) else None for p in psnrs],
            "latency_ms": {"encode": 1e3 * (t1 - t0), "decode_all_scales": 1e3 * (t2 - t1)},
        }

    def galleries(self, r: dict[str, Any]) -> tuple[list, list]:
        """(token maps, progressive reconstructions) as gallery items (image, caption)."""
        maps = [
            (token_grid(m, self.palette), f"scale {k}: {pn} x {pn}, {_tokens(pn * pn)}")
            for k, (m, pn) in enumerate(zip(r["maps"], self.sides), 1)
        ]
        # short: a gallery cuts long captions; its label says "decoded from scales 1 to k"
        recons = [
            (img, f"scale {k} ({pn}x{pn}): {'∞' if p is None else f'{p:.2f}'} dB")
            for k, (img, pn, p) in enumerate(zip(r["recons"], self.sides, r["psnr_db"]), 1)
        ]
        return maps, recons

    def summary(self, r: dict[str, Any], size: tuple[int, int], note: str) -> str:
        """What the user is seeing, with the token counts, as markdown."""
        h, w = size
        counts = [pn * pn for pn in self.sides]
        bits = self.bits_per_token * self.num_tokens
        lat = r["latency_ms"]
        p = r["psnr_db"][-1]
        db = "PSNR ∞ (identical)" if p is None else f"PSNR {p:.2f} dB"
        return (
            f"**{w}x{h} px{f' ({note})' if note else ''} fitted to "
            f"{self.resolution}x{self.resolution}: {len(counts)} scales, "
            f"L = {' + '.join(map(str, counts))} = {self.num_tokens} tokens** of "
            f"{self.bits_per_token} bits (K = {self.K}), {bits} bits in all "
            f"({bits / self.resolution**2:.3f} bpp).\n\n"
            "Token maps: scale k is a pn x pn grid, coloured by each code's vector (first 3 "
            "principal components). Reconstructions: the image decoded from scales 1 to k "
            "only; each finer scale adds the detail the coarser ones missed, the last is the "
            f"full reconstruction ({db} against the fitted input). Encode "
            f"{lat['encode']:.1f} ms, decoding all {len(counts)} prefixes "
            f"{lat['decode_all_scales']:.1f} ms."
        )

    def to_json(self, r: dict[str, Any], size: tuple[int, int], note: str) -> dict[str, Any]:
        """What the /scales endpoint returns."""
        return {
            "bundle": self.name,
            "image_size": list(size),
            "resolution": self.resolution,
            "scales": list(self.sides),
            "token_counts": [pn * pn for pn in self.sides],
            "num_tokens": self.num_tokens,
            "codebook_size": self.K,
            "tokens": [m.tolist() for m in r["maps"]],
            "psnr_db": r["psnr_db"],
            "latency_ms": r["latency_ms"],
            "note": note,
        }
