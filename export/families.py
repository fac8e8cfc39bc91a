"""Export the field's pretrained tokenizers from their own checkpoint files.

``export_pretrained(checkpoint, family, out, ...)`` loads a checkpoint with its family's
loader (``vqedge.models``: every tensor used, every shape checked) and exports the model
through the one pipeline (``export_bundle``), the manifest recording where it came from:
the family, the checkpoint's file name and sha256, and the preset.

The families, their presets, loaders and checkpoint rules are the one table
``vqedge.models.registry`` (``var``, ``llamagen``, ``taming``, ``diffusers``, and any
registered at run time).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from torch import nn

from vqedge.export.pipeline import export_bundle
from vqedge.models import registry
from vqedge.models.import_checkpoint import CheckpointError
from vqedge.models.taming import config_from_dict as taming_config
from vqedge.runtime.manifest import PRECISIONS, sha256_file


def _read_config_file(path: str | Path, family: str) -> dict[str, Any]:
    """A JSON (or, where PyYAML is installed, YAML) object of config fields."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{family} config {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"{path}: YAML needs PyYAML (pip install 'vqedge[export]'); or give it as JSON"
            ) from None
        try:
            d = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ValueError(f"{family} config {path} is not valid YAML: {e}") from None
    else:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{family} config {path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"{family} config {path} must hold an object of config fields")
    return d


def load_family(
    checkpoint: str | Path,
    family: str,
    preset: str | None = None,
    config: str | Path | dict[str, Any] | None = None,
) -> nn.Module:
    """The PyTorch model of ``family`` with the weights of ``checkpoint``.

    Parameters
    ----------
    checkpoint : str or Path
        The checkpoint as its authors save it (for ``diffusers``, a ``save_pretrained``
        folder).
    family : str
        A registered family (``vqedge.models.registry.FAMILIES``).
    preset : str, optional
        A shape the family ships (its ``presets``); None: the family's default (for
        diffusers, the folder's config.json).
    config : path or dict, optional
        The family's config fields (JSON; taming also takes its YAML), overriding ``preset``.

    Raises
    ------
    ValueError
        Unknown family, preset or config fields; CheckpointError (a ValueError) for a
        checkpoint of another family or a damaged one.
    """
    fam = registry.get(family)
    where = "the given config"
    if isinstance(config, (str, Path)):
        where = str(config)
        config = _read_config_file(config, family)
    fam.checkpoint_weights(checkpoint)  # a clear error for a missing file, before any loading
    cfg = fam.config_from_dict(config, where) if config is not None else None
    return fam.load(checkpoint, preset, cfg)


def source_facts(
    checkpoint: str | Path, family: str, preset: str | None, model: nn.Module
) -> dict[str, Any]:
    """The manifest's ``source``: family, checkpoint file name, its sha256, preset, and the
    family's own config of the model exported."""
    fam = registry.get(family)
    weights = fam.checkpoint_weights(checkpoint)
    cfg = getattr(model, "config", None)
    facts: dict[str, Any] = {
        "family": family,
        "checkpoint": weights.name,
        "sha256": sha256_file(weights),
        "preset": preset or fam.default_preset,
    }
    if fam.folder_weights:
        folder = Path(checkpoint)
        facts["checkpoint"] = f"{folder.resolve().name}/{weights.name}"
    if fam.config_file:
        facts["config_sha256"] = sha256_file(Path(checkpoint) / fam.config_file)
    if dataclasses.is_dataclass(cfg):
        facts["config"] = json.loads(json.dumps(dataclasses.asdict(cfg)))
    return facts


def export_pretrained(
    checkpoint: str | Path,
    family: str,
    out: str | Path,
    preset: str | None = None,
    config: str | Path | dict[str, Any] | None = None,
    force: bool = False,
    precisions: tuple[str, ...] = PRECISIONS,
    log=print,
) -> dict[str, Any]:
    """Export a pretrained tokenizer of another project to a validated bundle.

    The same gate as vqedge's own bundles (tokens identical to PyTorch, ties counted, images
    within tolerance); the int8 variant is reported, not refused, and each precision's
    manifest quality says whether it is fit for training a generator.

    Parameters
    ----------
    checkpoint, family, preset, config
        See ``load_family``.
    out, force, precisions, log
        See ``vqedge.export.export_bundle``.

    Returns
    -------
    dict
        The manifest written.

    Raises
    ------
    CheckpointError
        A checkpoint of another family, truncated, or with a missing, unexpected or
        reshaped key: nothing is written.
    ExportValidationError
        The graphs do not match PyTorch: nothing is written.
    """
    log(f"loading the {family} checkpoint {checkpoint}")
    model = load_family(checkpoint, family, preset, config)
    source = source_facts(checkpoint, family, preset, model)
    return export_bundle(model, out, force=force, precisions=precisions, log=log, source=source)


__all__ = [
    "CheckpointError",
    "export_pretrained",
    "load_family",
    "source_facts",
    "taming_config",
]
