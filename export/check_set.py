"""The check set a bundle carries, so that it can verify itself where it runs.

A few held-out photos, small (kilobytes), the fp32 tokens and reconstructions the exported
graphs give on them, and what each precision gives on this machine: the runtime's
``vqedge.runtime.verify`` compares a device's run against them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vqedge.models.data import held_out_paths
from vqedge.runtime.base import TokenizerBase
from vqedge.runtime.config import BundleConfig
from vqedge.runtime.device import device_description
from vqedge.runtime.inputs import read_image
from vqedge.runtime.kind import kind_of
from vqedge.runtime.manifest import bundle_config, sha256_file
from vqedge.runtime.session import BundleSessions, default_session_options
from vqedge.runtime.verify import CHECK_FILE, measure

# photos side for single-scale models: at least 12 tokens a side (256 tokens per photo at f=4,
# 144 at f=8 and f=16), so that one float-rounding flip stays within the fp32 rule; small, so
# that the check costs little beside a cold start (benchmarks/results/verify_cost.md)
MIN_SIDE = 64
MIN_TOKENS_PER_SIDE = 12
# multi-scale models take their one resolution; above this side one photo is enough
ONE_PHOTO_ABOVE = 96
# the held-out photos used (china, chelsea): different content, both outside training
PHOTOS = (0, 2)


def check_side(config: BundleConfig) -> int:
    """The side of the check photos for a model of ``config``."""
    if config.resolution:
        return config.resolution
    f = config.downsample_factor
    side = max(MIN_SIDE, MIN_TOKENS_PER_SIDE * f)
    return -(-side // f) * f


def check_photos(side: int) -> np.ndarray:
    """Held-out photos as uint8 [N, side, side, 3]: centre squares, Lanczos-resized."""
    paths = held_out_paths()
    count = 1 if side > ONE_PHOTO_ABOVE else len(PHOTOS)
    out = []
    for i in PHOTOS[:count]:
        img = read_image(paths[i])
        h, w = img.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        square = Image.fromarray(img[top : top + s, left : left + s])
        out.append(np.asarray(square.resize((side, side), Image.Resampling.LANCZOS)))
    return np.stack(out)


def check_set(root: Path, manifest: dict[str, Any], log=print) -> dict[str, Any]:
    """Write the check set into the bundle folder ``root``, measure every variant on it with
    onnxruntime's CPU provider, and return the manifest's ``check`` entry.

    The bundle is opened from ``manifest`` as it stands (nothing is read from
    ``root / manifest.json``): the export writes the manifest once, after this, with the
    entry, the file's sha256 and its bytes (``check_file_facts``).
    """
    photos = check_photos(check_side(bundle_config(manifest)))
    recon, tokens = _open(root, manifest, "fp32").reconstruct(photos)
    arrays = {"image": photos, "tokens": tokens, "reconstruction": recon}
    np.savez_compressed(root / CHECK_FILE, **arrays)
    expected = {}
    for precision in manifest["variants"]:
        tok = _open(root, manifest, precision)
        expected[precision] = {k: round(v, 4) for k, v in measure(tok, arrays).items()}
    log(
        f"check set: {len(photos)} photo(s) of {photos.shape[1]}x{photos.shape[2]}, "
        f"{(root / CHECK_FILE).stat().st_size / 1024:.0f} KiB"
    )
    return {
        "file": CHECK_FILE,
        "images": list(photos.shape),
        "made_on": device_description(),
        "expected": expected,
    }


def check_file_facts(root: Path, entry: dict[str, Any]) -> tuple[str, str, int]:
    """(file name, sha256, bytes) of the check set ``entry`` describes in ``root``."""
    path = root / entry["file"]
    return entry["file"], sha256_file(path), path.stat().st_size


def _open(root: Path, manifest: dict[str, Any], precision: str) -> TokenizerBase:
    """The tokenizer of ``manifest``'s kind over the graphs in ``root``, on the CPU provider."""
    sessions = BundleSessions(root, manifest, "cpu", precision, default_session_options(), True)
    return kind_of(manifest).runtime_class()(sessions)
