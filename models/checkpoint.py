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

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vqedge.models.multiscale import build_model
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


def load_pretrained(path: str | Path | None = None) -> VQVAE:
    """A trained VQVAE in eval mode.

    Parameters
    ----------
    path : str or Path, optional
        A checkpoint folder, a run folder (its ``latest``) or a ``model.safetensors`` file
        with ``config.json`` beside it. None loads the shipped default (f=4).
    """
    model, _ = load_model(DEFAULT_PRETRAINED if path is None else path)
    return model.eval()
