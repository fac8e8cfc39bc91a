"""Checkpoints: safetensors weights + JSON config and training state; no pickle.

A checkpoint is a folder ``model.safetensors``, ``config.json`` and, for training runs,
``train_state.json``, ``optimizer.safetensors`` and ``rng.safetensors``. A run folder holds
``ckpt-NNNNNNN/`` folders and a ``latest`` file naming the newest one. Every folder is
written under a temporary name and renamed into place once complete, and ``latest`` is
replaced atomically, so a crash mid-write never leaves a broken checkpoint as the latest.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vqedge.models.multiscale import build_model
from vqedge.models.quantizer import VectorQuantizer
from vqedge.models.vqvae import VQVAE
from vqedge.runtime.atomic import fsync_dir, write_bytes_atomic
from vqedge.runtime.config import VQVAEConfig

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
DEFAULT_PRETRAINED = PRETRAINED_DIR / "vqvae-f4"
WEIGHTS, CONFIG, STATE, OPTIM, RNG = (
    "model.safetensors",
    "config.json",
    "train_state.json",
    "optimizer.safetensors",
    "rng.safetensors",
)
# a codebook's EMA statistics: training state, kept in checkpoints but in no bundle
EMA_STATS = ("ema_count", "ema_sum")


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors = {
        f"state.{i}.{k}": v.contiguous()
        for i, s in sd["state"].items()
        for k, v in s.items()
        if isinstance(v, torch.Tensor)
    }
    return tensors, {"param_groups": sd["param_groups"]}


def _load_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        _, i, k = key.split(".", 2)
        state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: VQVAE,
    optimizer: torch.optim.Optimizer | None = None,
    train_state: dict[str, Any] | None = None,
    rng: dict[str, torch.Tensor] | None = None,
    keep: int = 3,
) -> Path:
    """Write ``run_dir/ckpt-{step}`` atomically, point ``latest`` at it, keep the newest few."""
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    final = run / f"ckpt-{step:07d}"
    tmp = Path(tempfile.mkdtemp(dir=run, prefix=".tmp-ckpt-"))
    try:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / WEIGHTS)
        model.config.save(tmp / CONFIG)
        state = dict(train_state or {}, step=step)
        if optimizer is not None:
            tensors, meta = _optimizer_tensors(optimizer)
            save_file(tensors, tmp / OPTIM)
            state["optimizer"] = meta
        if rng is not None:
            save_file(rng, tmp / RNG)
        (tmp / STATE).write_text(json.dumps(state, indent=2) + "\n")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        if final.exists():  # re-saving a step (after a resume): move the old one aside first
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(run)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_bytes_atomic(run / "latest", (final.name + "\n").encode())
    for old in sorted(run.glob("ckpt-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from a checkpoint folder, a run folder or a weights file."""
    p = Path(path)
    if p.is_file() and p.suffix == ".safetensors":
        p = p.parent
    if (p / "latest").is_file():
        p = p / (p / "latest").read_text().strip()
    if not (p / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: expected a folder with {WEIGHTS} and {CONFIG}, "
            "or a run folder with a 'latest' file"
        )
    return p


def load_model(path: str | Path) -> tuple[VQVAE, Path]:
    """Build a VQVAE from a checkpoint; clear errors for corrupt or mismatched files."""
    ckpt = resolve_checkpoint(path)
    config = VQVAEConfig.load(ckpt / CONFIG)
    try:
        weights = load_file(ckpt / WEIGHTS)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint weights {ckpt / WEIGHTS} are corrupt: {e}") from None
    model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = sorted(k for k in expected if k in weights and weights[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"checkpoint {ckpt} does not match its config.json: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    model.load_state_dict(weights)
    return model, ckpt


def load_training(ckpt: Path, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Restore the optimizer from a checkpoint; return (train_state, rng tensors)."""
    state = json.loads((ckpt / STATE).read_text())
    _load_optimizer(optimizer, load_file(ckpt / OPTIM), state["optimizer"])
    rng = load_file(ckpt / RNG) if (ckpt / RNG).is_file() else {}
    return state, rng


def _pretrained_path(path: str | Path | None) -> Path:
    p = DEFAULT_PRETRAINED if path is None else Path(path)
    if not p.exists() and (PRETRAINED_DIR / str(path)).is_dir():
        p = PRETRAINED_DIR / str(path)
    return p


def training_record(path: str | Path | None = None) -> dict | None:
    """The training state a checkpoint (or shipped model, as ``load_pretrained`` finds it)
    was saved with, without the optimizer's bookkeeping; None when it has none."""
    p = _pretrained_path(path)
    try:
        p = resolve_checkpoint(p)
    except FileNotFoundError:
        return None
    if not (p / STATE).is_file():
        return None
    state = json.loads((p / STATE).read_text())
    state.pop("optimizer", None)
    return state


def load_pretrained(path: str | Path | None = None) -> VQVAE:
    """A trained VQVAE in eval mode.

    A shipped model (a folder under ``vqedge/models/pretrained``, or its name) whose
    ``model.safetensors`` is not installed (the wheel leaves the torch checkpoints out) is
    rebuilt from the shipped bundle of the same name: see ``model_from_bundle``.

    Parameters
    ----------
    path : str or Path, optional
        A checkpoint folder, a run folder (its ``latest``), a ``model.safetensors`` file
        with ``config.json`` beside it, or a shipped model's name ("vqvae-ms-f8"). None loads
        the shipped default (f=4).
    """
    p = _pretrained_path(path)
    bundle = shipped_bundle(p.name)
    if p.is_dir() and not (p / WEIGHTS).is_file() and not (p / "latest").is_file() and bundle:
        return model_from_bundle(bundle).eval()
    model, _ = load_model(p)
    return model.eval()


def shipped_bundle(name: str) -> Path | None:
    """The runtime's shipped bundle folder called ``name``, if there is one."""
    import vqedge.runtime

    folder = Path(vqedge.runtime.__file__).parent / "bundles" / name
    return folder if (folder / "manifest.json").is_file() else None


def model_from_bundle(bundle: str | Path) -> VQVAE:
    """Rebuild a PyTorch model from a bundle: its fp32 graphs' initializers (named by the
    state_dict keys) and its codebook.

    Every weight the graphs use comes back bit for bit. The codebook is the bundle's
    ``codebook.npy``: the codebook the decoder receives (unit rows for an l2-normalized
    codebook, whose norms no graph keeps). The EMA statistics of the codebook are training
    state that no bundle holds: they start as a new model's.

    Raises
    ------
    BundleError
        The bundle fails its checks or lacks a weight the model needs.
    """
    from vqedge.runtime.manifest import BundleError, manifest_config, read_manifest

    root = Path(bundle)
    manifest = read_manifest(root, verify=True)
    model = build_model(manifest_config(manifest))
    state = model.state_dict()
    found: dict[str, torch.Tensor] = {}
    for graph in manifest["variants"]["fp32"]["graphs"].values():
        for name, array in onnx_initializers(root / graph["file"]).items():
            if name in state and tuple(array.shape) == tuple(state[name].shape):
                found[name] = torch.from_numpy(array)
    # a lookup-free bundle (FSQ) has no codebook: its quantizer has no weights to restore
    if "codebook" in manifest:
        codebook = torch.from_numpy(np.load(root / manifest["codebook"]["file"]))
        for name, module in model.named_modules():
            if isinstance(module, VectorQuantizer):
                found[f"{name}.embedding.weight"] = codebook
    # the codebook's EMA statistics are training state that no bundle holds: a new model's
    found = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] in EMA_STATS} | found
    missing = sorted(set(state) - set(found))
    if missing:
        raise BundleError(f"bundle {root} lacks weights the model needs: {missing[:5]}")
    model.load_state_dict(found)
    return model


# ONNX protobuf field numbers (onnx.proto3): ModelProto.graph, GraphProto.initializer, and
# TensorProto's dims, data_type, float_data, name, raw_data, external_data, data_location
_GRAPH, _INITIALIZER = 7, 5
_DIMS, _DTYPE, _FLOAT_DATA, _NAME, _RAW, _EXTERNAL, _LOCATION = 1, 2, 4, 8, 9, 13, 14
_FLOAT = 1  # TensorProto.FLOAT
_EXTERNAL_LOCATION = 1  # TensorProto.EXTERNAL


def onnx_initializers(path: Path) -> dict[str, np.ndarray]:
    """The fp32 initializers of an ONNX file (inline or in external data beside it), read
    from the protobuf wire format: the torch side has no onnx package to lean on."""
    data = memoryview(path.read_bytes())
    out: dict[str, np.ndarray] = {}
    for field, graph in _fields(data):
        if field != _GRAPH:
            continue
        for gfield, tensor in _fields(graph):
            if gfield != _INITIALIZER:
                continue
            t = _tensor(tensor)
            if t["dtype"] != _FLOAT:
                continue
            shape = tuple(t["dims"])
            if t["location"] == _EXTERNAL_LOCATION:
                ext = t["external"]
                rel = Path(ext["location"])
                if rel.is_absolute() or ".." in rel.parts:
                    raise ValueError(f"{path}: external data {rel} is outside the bundle")
                with open(path.parent / rel, "rb") as fh:
                    fh.seek(int(ext.get("offset", 0)))
                    raw = fh.read(int(ext["length"]))
            elif t["raw"] is not None:
                raw = t["raw"]
            else:
                raw = np.asarray(t["floats"], np.float32).tobytes()
            out[t["name"]] = np.frombuffer(raw, "<f4").reshape(shape).copy()
    return out


def _tensor(buf: memoryview) -> dict[str, Any]:
    t: dict[str, Any] = {"dims": [], "dtype": 0, "name": "", "raw": None, "floats": []}
    t |= {"external": {}, "location": 0}
    for field, value in _fields(buf):
        if field == _DIMS:
            t["dims"] += list(_varints(value)) if isinstance(value, memoryview) else [value]
        elif field == _DTYPE:
            t["dtype"] = value
        elif field == _NAME:
            t["name"] = bytes(value).decode()
        elif field == _RAW:
            t["raw"] = bytes(value)
        elif field == _FLOAT_DATA:
            t["floats"] += list(np.frombuffer(bytes(value), "<f4"))
        elif field == _EXTERNAL:
            entry = {k: bytes(v).decode() for k, v in _fields(value)}
            t["external"][entry.get(1, "")] = entry.get(2, "")
        elif field == _LOCATION:
            t["location"] = value
    return t


def _varint(buf: memoryview, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def _varints(buf: memoryview):
    i = 0
    while i < len(buf):
        v, i = _varint(buf, i)
        yield v


def _fields(buf: memoryview):
    """(field number, value) of each field of one protobuf message: an int for varints, a
    memoryview for length-delimited fields and fixed-width ones."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        wire = key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            value, i = buf[i : i + n], i + n
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield key >> 3, value
