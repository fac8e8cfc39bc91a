"""The demo's next-scale (VAR) section: a multi-scale bundle's token maps, scale by scale.

``ScalesEngine`` loads the multi-scale tokenizer once, on first use, and turns one photo into
what the section shows: the photo fitted to the bundle's one image side, one token map per
scale (coarse to fine), and the progressive reconstructions with their PSNR.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.demo.metrics import code_palette, token_image
from vqedge.runtime.images import fit_square
from vqedge.runtime.manifest import BundleError, manifest_config, read_manifest
from vqedge.runtime.metrics import psnr
from vqedge.runtime.multiscale import MultiScaleTokenizer
from vqedge.runtime.providers import CPU
from vqedge.runtime.tokenizer import Tokenizer, bundle_path, list_bundles

MULTI_SCALE = "multi-scale"  # the manifest's "kind" of a VAR-style bundle
# the shipped multi-scale bundle the section uses when installed
DEFAULT_SCALES_BUNDLE = "vqvae-ms-f8"
TOKEN_VIEW = 256  # px: each scale's token map is drawn about this large, nearest neighbour


def default_scales_bundle() -> str | None:
    """The shipped multi-scale bundle's name, or None when this install has none."""
    return DEFAULT_SCALES_BUNDLE if DEFAULT_SCALES_BUNDLE in list_bundles() else None


def bundle_kind(bundle: str | Path | None) -> str:
    """A bundle's kind from its manifest ("single-scale" or "multi-scale"), files unchecked."""
    return read_manifest(bundle_path(bundle), verify=False).get("kind", "single-scale")


def token_grid(idx: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """A token map [pn, pn] -> uint8 image: each token a square of its code's colour, about
    TOKEN_VIEW pixels on a side whatever pn (so a 1x1 map is visible too)."""
    pn = idx.shape[0]
    cell = -(-TOKEN_VIEW // pn)  # ceil
    return token_image(idx, palette, cell, (pn * cell, pn * cell))


def _tokens(n: int) -> str:
    return f"{n} token{'s' if n != 1 else ''}"


class ScalesEngine:
    """The multi-scale tokenizer behind the section, loaded once on first use.

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
        self.provider, self.threads = provider, threads
        self._lock = threading.Lock()
        self._tok: MultiScaleTokenizer | None = None
        self.palette: np.ndarray | None = None
        self.root = self.config = self.name = None
        if bundle is None:
            return
        root = bundle_path(bundle)
        manifest = read_manifest(root, verify=False)  # the files are checked when loaded
        if manifest.get("kind") != MULTI_SCALE:
            raise BundleError(
                f"bundle {root.name} is a single-scale bundle; --scales-bundle takes a "
                f"multi-scale one (manifest kind {MULTI_SCALE!r}); pass it as --bundle"
            )
        self.root, self.name = root, root.name
        self.config = manifest_config(manifest)
        self.patch_nums: tuple[int, ...] = self.config.patch_nums
        self.resolution: int = self.config.resolution
        self.num_tokens: int = self.config.scale_offsets[-1]
        self.K = self.config.codebook_size

    @property
    def available(self) -> bool:
        return self.config is not None

    def unavailable_message(self) -> str:
        return (
            "No multi-scale bundle is available, so this section is off: the shipped "
            f"`{DEFAULT_SCALES_BUNDLE}` is not installed. Start the demo with "
            "`--scales-bundle DIR` (a bundle exported from a multi-scale checkpoint) to use it."
        )

    def intro(self) -> str:
        pns = self.patch_nums
        return (
            f"Bundle `{self.name}` tokenizes a {self.resolution}x{self.resolution} image into "
            f"{len(pns)} token maps, {pns[0]}x{pns[0]} to {pns[-1]}x{pns[-1]} "
            f"(L = {self.num_tokens} tokens, K = {self.K} codes), coarse to fine: each scale "
            "quantizes what the coarser ones left over, the maps VAR's next-scale prediction "
            "generates one after another. A photo is first fitted to the one size the bundle "
            "takes (centre square, Lanczos resize)."
        )

    def tokenizer(self) -> MultiScaleTokenizer:
        """The multi-scale tokenizer, loaded, checked and warmed up on first use."""
        if not self.available:
            raise ValueError(self.unavailable_message())
        with self._lock:
            if self._tok is None:
                providers = [self.provider] if self.provider == CPU else [self.provider, CPU]
                tok = Tokenizer.load(self.root, providers=providers, threads=self.threads)
                R = tok.resolution
                # create every session now, once, rather than racing in requests
                tok.idxBl_to_img(tok.img_to_idxBl(np.zeros((R, R, 3), np.uint8)))
                self.palette = code_palette(tok.codebook)
                self._tok = tok
        return self._tok

    def analyze(self, img: np.ndarray) -> dict[str, Any]:
        """One uint8 photo [H, W, 3] through every scale.

        Returns
        -------
        dict
            ``fitted`` uint8 [R, R, 3]; ``maps`` (int64 [pn, pn] per scale); ``recons``
            (uint8 [R, R, 3] decoded from scales 1..k, per k); ``psnr_db`` (per k, against
            ``fitted``; None where identical); ``latency_ms``.
        """
        tok = self.tokenizer()
        fitted = fit_square(img, tok.resolution)
        t0 = time.perf_counter()
        idx_Bl = tok.img_to_idxBl(fitted)  # [1, pn*pn] per scale
        t1 = time.perf_counter()
        recons = [r[0] for r in tok.idxBl_to_img(idx_Bl, last_one=False)]
        t2 = time.perf_counter()
        psnrs = [psnr(r, fitted) for r in recons]
        return {
            "fitted": fitted,
            "maps": [i[0].reshape(pn, pn) for i, pn in zip(idx_Bl, self.patch_nums)],
            "recons": recons,
            "psnr_db": [p if np.isfinite(p) else None for p in psnrs],
            "latency_ms": {"encode": 1e3 * (t1 - t0), "decode_all_scales": 1e3 * (t2 - t1)},
        }

    def galleries(self, r: dict[str, Any]) -> tuple[list, list]:
        """(token maps, progressive reconstructions) as gallery items (image, caption)."""
        maps = [
            (token_grid(m, self.palette), f"scale {k}: {pn} x {pn}, {_tokens(pn * pn)}")
            for k, (m, pn) in enumerate(zip(r["maps"], self.patch_nums), 1)
        ]
        # short: a gallery cuts long captions; its label says "decoded from scales 1 to k"
        recons = [
            (img, f"scale {k} ({pn}x{pn}): {'∞' if p is None else f'{p:.2f}'} dB")
            for k, (img, pn, p) in enumerate(zip(r["recons"], self.patch_nums, r["psnr_db"]), 1)
        ]
        return maps, recons

    def summary(self, r: dict[str, Any], size: tuple[int, int], note: str) -> str:
        """What the user is seeing, with the token counts, as markdown."""
        h, w = size
        counts = [pn * pn for pn in self.patch_nums]
        bits = self.config.bits_per_token * self.num_tokens
        lat = r["latency_ms"]
        return (
            f"**{w}x{h} px{f' ({note})' if note else ''} fitted to "
            f"{self.resolution}x{self.resolution}: {len(counts)} scales, "
            f"L = {' + '.join(map(str, counts))} = {self.num_tokens} tokens** of "
            f"{self.config.bits_per_token} bits (K = {self.K}), {bits} bits in all "
            f"({bits / self.resolution**2:.3f} bpp).\n\n"
            "Token maps: scale k is a pn x pn grid, coloured by each code's vector (first 3 "
            "principal components). Reconstructions: the image decoded from scales 1 to k "
            "only; each finer scale adds the detail the coarser ones missed, the last is the "
            f"full reconstruction ({_db(r['psnr_db'][-1])} against the fitted input). Encode "
            f"{lat['encode']:.1f} ms, decoding all {len(counts)} prefixes "
            f"{lat['decode_all_scales']:.1f} ms."
        )

    def to_json(self, r: dict[str, Any], size: tuple[int, int], note: str) -> dict[str, Any]:
        """What the /scales endpoint returns."""
        return {
            "bundle": self.name,
            "image_size": list(size),
            "resolution": self.resolution,
            "patch_nums": list(self.patch_nums),
            "token_counts": [pn * pn for pn in self.patch_nums],
            "num_tokens": self.num_tokens,
            "codebook_size": self.K,
            "tokens": [m.tolist() for m in r["maps"]],
            "psnr_db": r["psnr_db"],
            "latency_ms": r["latency_ms"],
            "note": note,
        }


def _db(p: float | None) -> str:
    return "PSNR ∞ (identical)" if p is None else f"PSNR {p:.2f} dB"
