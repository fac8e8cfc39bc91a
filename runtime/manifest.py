"""The bundle manifest: what an exported bundle holds, and its integrity check.

A bundle is one flat folder with ``manifest.json`` and the files it names: the graphs of each
precision (``encoder.fp32.onnx``, ...), the external weight files they share
(``weights.fp32.bin``, ``weights.int8.bin``: each tensor stored once) and ``codebook.npy``.
The manifest carries the model config, the input convention, every graph's inputs and
outputs, the export facts, the sha256 of every file, the sizes and the validation results;
the runtime needs nothing else.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vqedge.runtime.config import BundleConfig, VQVAEConfig

FORMAT = "vqedge-bundle"
# Bumped on any change a runtime of an older version could misread.
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
# the variants a bundle can hold
PRECISIONS = ("fp32", "fp16", "int8")
# bundle kinds: the runtime class and the export recipe are chosen by these names
SINGLE_SCALE = "single-scale"
MULTI_SCALE = "multi-scale"
LOOKUP_FREE = "lookup-free"
# graph names inside a variant's "graphs" (SCALES: multi-scale only)
ENCODER, QUANTIZER, DECODER, SCALES = "encoder", "quantizer", "decoder", "scales"
# Pad at the bottom and right by repeating edge pixels to a multiple of f; crop back after.
SIZE_POLICY = "pad-edge-bottom-right-then-crop"
# fields every manifest must carry before anything else is read from it
REQUIRED = ("kind", "config", "variants")
# a manifest is a few kB; anything far larger is not one, and is refused before it is parsed
MAX_MANIFEST_BYTES = 16 << 20


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
        The file is missing, not in the manifest, outside the bundle folder, or does not
        match its sha256.
    """
    files = manifest.get("files")
    digest = files.get(rel) if isinstance(files, dict) else None
    if not isinstance(digest, str):
        raise BundleError(f"bundle file {rel} is not listed in {root / MANIFEST}")
    rel_path = Path(rel)
    if rel_path.is_absolute() or ".." in rel_path.parts:
        raise BundleError(f"bundle file {rel} in {root / MANIFEST} points outside the bundle")
    f = root / rel_path
    if not f.is_file():
        raise BundleError(f"bundle file {rel} is missing from {root}")
    if sha256_file(f) != digest:
        raise BundleError(f"bundle file {rel} does not match its sha256 in the manifest")
    return f


def parse_manifest(data: bytes, path: str | Path) -> dict[str, Any]:
    """Parse and check the bytes of a manifest (``path`` names it in errors).

    Raises
    ------
    BundleError
        Not UTF-8, not JSON, not a vqedge manifest, format 1, a newer format, or a missing
        or malformed ``kind`` / ``config`` / ``variants``.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError(
            f"bundle manifest {path} is {len(data)} bytes; a manifest is at most "
            f"{MAX_MANIFEST_BYTES} bytes"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BundleError(
            f"bundle manifest {path} is not UTF-8 text (byte {e.start}): expected JSON"
        ) from None
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"bundle manifest {path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path} is not a {FORMAT} manifest (its 'format' must be {FORMAT!r})")
    root = Path(path).parent
    version = manifest.get("format_version")
    if type(version) is int and version == 1:
        raise BundleError(
            f"bundle {root} is format 1 (one file per graph with its own weights); this vqedge "
            "reads format 2: re-export it with `vqedge export`"
        )
    if type(version) is not int or version != FORMAT_VERSION:
        raise BundleError(
            f"bundle {root} has format version {version!r}; this vqedge reads format "
            f"{FORMAT_VERSION}: upgrade vqedge (newer bundles) or re-export it with `vqedge export`"
        )
    for key in REQUIRED:
        if key not in manifest:
            raise BundleError(f"bundle manifest {path} has no {key!r} field")
    # which kinds this vqedge runs is the runtime's registry's to say; here only the type
    if not isinstance(manifest["kind"], str):
        raise BundleError(f"bundle manifest {path}: 'kind' must be a string")
    if not isinstance(manifest["config"], dict):
        raise BundleError(f"bundle manifest {path}: 'config' must be an object")
    variants = manifest["variants"]
    if not isinstance(variants, dict) or not variants:
        raise BundleError(f"bundle manifest {path}: 'variants' must be a non-empty object")
    for name, v in variants.items():
        if name not in PRECISIONS:
            raise BundleError(
                f"bundle manifest {path}: variant {name!r} is not one of {PRECISIONS}"
            )
        if not isinstance(v, dict) or not isinstance(v.get("graphs"), dict):
            raise BundleError(f"bundle manifest {path}: variant {name!r} has no 'graphs' object")
    if "files" in manifest and not isinstance(manifest["files"], dict):
        raise BundleError(f"bundle manifest {path}: 'files' must be an object")
    return manifest


def read_manifest(bundle: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read and check a bundle's manifest; with ``verify``, check every file's sha256.

    Raises
    ------
    BundleError
        Missing manifest, a manifest that is not UTF-8 JSON or lacks ``kind``, ``config`` or
        ``variants``, format 1 or a newer format version, a missing file or a hash mismatch;
        the message names the file.
    """
    root = Path(bundle)
    path = root / MANIFEST
    if not path.is_file():
        raise BundleError(f"not a vqedge bundle: {path} is missing")
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(
            f"bundle manifest {path} is {size} bytes; a manifest is at most "
            f"{MAX_MANIFEST_BYTES} bytes"
        )
    manifest = parse_manifest(path.read_bytes(), path)
    if verify:
        for rel in manifest.get("files", {}):
            verified_file(root, manifest, rel)
    return manifest


def manifest_config(manifest: dict[str, Any]) -> VQVAEConfig:
    """The model config a manifest declares (the architecture a bundle rebuilds its PyTorch
    model from; the runtime reads ``bundle_config``).

    Raises
    ------
    BundleError
        The ``config`` field is missing or not a valid config.
    """
    cfg = manifest.get("config")
    if not isinstance(cfg, dict):
        raise BundleError("bundle manifest has no 'config' object")
    try:
        return VQVAEConfig.from_dict(cfg)
    except (TypeError, ValueError, KeyError) as e:
        raise BundleError(f"bundle manifest 'config' is not a valid config: {e}") from None


def bundle_config(manifest: dict[str, Any]) -> BundleConfig:
    """What a manifest tells the runtime about its tokens (f, K, C, the scales).

    Raises
    ------
    BundleError
        The ``config`` field is missing or not a valid config.
    """
    return BundleConfig.of(manifest_config(manifest))
