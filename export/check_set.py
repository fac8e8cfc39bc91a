"""The check set a bundle carries, so that it can verify itself where it runs.

A few validation photos (never the held-out ones, which judge the model), small (kilobytes),
the fp32 tokens and reconstructions the exported graphs give on them, and what each
precision gives on this machine, per stage: the runtime's ``vqedge.runtime.verify`` judges a
device's run against them by the tiers of ``vqedge.runtime.fidelity``.

``python -m vqedge.export.check_set BUNDLE...`` makes a bundle's check set again in place
(its graphs untouched): what the shipped bundles' check sets were made with.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vqedge.models.data import VALIDATION, collection, collection_paths
from vqedge.runtime.atomic import write_bytes_atomic
from vqedge.runtime.base import TokenizerBase
from vqedge.runtime.config import BundleConfig
from vqedge.runtime.device import device_description
from vqedge.runtime.inputs import read_image
from vqedge.runtime.kind import kind_of
from vqedge.runtime.manifest import MANIFEST, bundle_config, sha256_file
from vqedge.runtime.plan import PrecisionPlan
from vqedge.runtime.session import BundleSessions, default_session_options
from vqedge.runtime.verify import CHECK_FILE, measure_decoder, measure_encoder

# photos side for single-scale models: at least 12 tokens a side (256 tokens per photo at f=4,
# 144 at f=8 and f=16), so that one float-rounding flip stays within the tokens tier; small,
# so that the check costs little beside a cold start (benchmarks/results/verify_cost.md)
MIN_SIDE = 64
MIN_TOKENS_PER_SIDE = 12
# multi-scale models take their one resolution; above this side one photo is enough
ONE_PHOTO_ABOVE = 96
# the validation split's photos (not its illustration): different content, outside training
PHOTO_KIND = "photo"


def check_side(config: BundleConfig) -> int:
    """The side of the check photos for a model of ``config``."""
    if config.resolution:
        return config.resolution
    f = config.downsample_factor
    side = max(MIN_SIDE, MIN_TOKENS_PER_SIDE * f)
    return -(-side // f) * f


def check_photo_paths() -> list[tuple[str, Path]]:
    """(collection entry, path here) of the validation split's photos, in its order."""
    items = collection(VALIDATION)
    paths = collection_paths(VALIDATION)
    return [(c.path, p) for c, p in zip(items, paths) if c.kind == PHOTO_KIND]


def check_photos(side: int) -> np.ndarray:
    """Validation photos as uint8 [N, side, side, 3]: centre squares, Lanczos-resized."""
    paths = check_photo_paths()
    count = 1 if side > ONE_PHOTO_ABOVE else 2
    out = []
    for _, path in paths[:count]:
        img = read_image(path)
        h, w = img.shape[:2]
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        square = Image.fromarray(img[top : top + s, left : left + s])
        out.append(np.asarray(square.resize((side, side), Image.Resampling.LANCZOS)))
    return np.stack(out)


def expected_figures(root: Path, manifest: dict[str, Any], precision: str, arrays) -> dict:
    """What ``precision`` gives on this machine's CPU provider, per stage."""
    tok = _open(root, manifest, precision)
    enc = measure_encoder(tok, arrays)
    dec = measure_decoder(tok, arrays)
    return {
        "encoder": {
            "agreement": round(enc["agreement"], 4),
            "per_scale": [round(a, 4) for a in enc["per_scale"]],
        },
        "decoder": {"psnr_vs_fp32": round(dec["psnr_vs_fp32"], 4)},
        "round_trip_drop_db": round(enc["round_trip_drop_db"], 4),
    }


def check_set(root: Path, manifest: dict[str, Any], log=print) -> dict[str, Any]:
    """Write the check set into the bundle folder ``root``, measure every variant on it per
    stage with onnxruntime's CPU provider, and return the manifest's ``check`` entry.

    The bundle is opened from ``manifest`` as it stands (nothing is read from
    ``root / manifest.json``): the export writes the manifest once, after this, with the
    entry, the file's sha256 and its bytes (``check_file_facts``).
    """
    photos = check_photos(check_side(bundle_config(manifest)))
    recon, tokens = _open(root, manifest, "fp32").reconstruct(photos)
    arrays = {"image": photos, "tokens": tokens, "reconstruction": recon}
    np.savez_compressed(root / CHECK_FILE, **arrays)
    expected = {p: expected_figures(root, manifest, p, arrays) for p in manifest["variants"]}
    log(
        f"check set: {len(photos)} photo(s) of {photos.shape[1]}x{photos.shape[2]}, "
        f"{(root / CHECK_FILE).stat().st_size / 1024:.0f} KiB"
    )
    return {
        "file": CHECK_FILE,
        "images": list(photos.shape),
        "source": f"the collection's {VALIDATION} photos: "
        + ", ".join(name for name, _ in check_photo_paths()[: len(photos)]),
        "made_on": device_description(),
        "expected": expected,
    }


def check_file_facts(root: Path, entry: dict[str, Any]) -> tuple[str, str, int]:
    """(file name, sha256, bytes) of the check set ``entry`` describes in ``root``."""
    path = root / entry["file"]
    return entry["file"], sha256_file(path), path.stat().st_size


def _open(root: Path, manifest: dict[str, Any], precision: str) -> TokenizerBase:
    """The tokenizer of ``manifest``'s kind over the graphs in ``root``, on the CPU provider."""
    plan = PrecisionPlan.parse(precision)
    sessions = BundleSessions(root, manifest, "cpu", plan, default_session_options(), True)
    return kind_of(manifest).runtime_class()(sessions)


def remake(root: Path, log=print) -> None:
    """Make a bundle's check set again in place; only check.npz and the manifest's check,
    files and sizes entries change."""
    path = root / MANIFEST
    manifest = json.loads(path.read_text())
    old = root / CHECK_FILE
    old_size = old.stat().st_size if CHECK_FILE in manifest["files"] and old.is_file() else 0
    manifest["check"] = check_set(root, manifest, log)
    name, digest, size = check_file_facts(root, manifest["check"])
    manifest["files"][name] = digest
    if "sizes" in manifest:
        manifest["sizes"]["bundle_bytes"] += size - old_size
    write_bytes_atomic(path, (json.dumps(manifest, indent=2) + "\n").encode())


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        from vqedge.runtime.session import bundle_path

        remake(bundle_path(arg))
