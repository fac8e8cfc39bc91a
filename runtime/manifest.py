"""The bundle manifest: what an exported bundle holds, and its integrity check.

A bundle is a folder with ``manifest.json`` and the files it names. The manifest carries the
model config, the input convention, every graph's inputs and outputs, the export facts,
the sha256 of every file and the validation results; the runtime needs nothing else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vqedge.runtime.config import VQVAEConfig

FORMAT = "vqedge-bundle"
# Bumped on any change a runtime of an older version could misread.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GRAPHS = ("encoder", "quantizer", "decoder", "tokenizer")
PRECISIONS = ("fp32", "fp16", "int8")
# Pad at the bottom and right by repeating edge pixels to a multiple of f; crop back after.
SIZE_POLICY = "pad-edge-bottom-right-then-crop"


class BundleError(ValueError):
    """A bundle that is missing, tampered with, or not understood by this runtime."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_file(root: Path, manifest: dict[str, Any], rel: str) -> Path:
    """The path of one bundle file, after checking it against its sha256 in the manifest.

    Raises
    ------
    BundleError
        The file is missing, not in the manifest, or does not match its sha256.
    """
    digest = manifest.get("files", {}).get(rel)
    if digest is None:
        raise BundleError(f"bundle file {rel} is not listed in {root / MANIFEST}")
    f = root / rel
    if not f.is_file():
        raise BundleError(f"bundle file {rel} is missing from {root}")
    if sha256_file(f) != digest:
        raise BundleError(f"bundle file {rel} does not match its sha256 in the manifest")
    return f


def read_manifest(bundle: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read and check a bundle's manifest; with ``verify``, check every file's sha256.

    Raises
    ------
    BundleError
        Missing manifest, a newer format version, a missing file or a hash mismatch; the
        message names the file.
    """
    root = Path(bundle)
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"not a vqedge bundle: {path} is missing")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"bundle manifest {path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BundleError(
            f"bundle {root} has format version {version}; this runtime reads versions up to "
            f"{FORMAT_VERSION}: upgrade vqedge"
        )
    if verify:
        for rel in manifest.get("files", {}):
            verified_file(root, manifest, rel)
    return manifest


def manifest_config(manifest: dict[str, Any]) -> VQVAEConfig:
    return VQVAEConfig.from_dict(manifest["config"])
