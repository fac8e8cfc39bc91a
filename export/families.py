"""Export the field's pretrained tokenizers from their own checkpoint files.

``export_pretrained(checkpoint, family, out, ...)`` loads a checkpoint with its family's
loader (``vqedge.models``: every tensor used, every shape checked) and exports the model
through the one pipeline (``export_bundle``), the manifest recording where it came from:
the family, the checkpoint's file name and sha256, and the preset.

Families: ``var`` (VAR's VQVAE, a raw state dict), ``llamagen`` (VQ-16 / VQ-8, the dict with
its ``model`` key), ``taming`` (a VQGAN Lightning checkpoint) and ``diffusers`` (a VQModel
``save_pretrained`` folder).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from vqedge.export.pipeline import export_bundle
from vqedge.models import llamagen, taming, var, vqmodel
from vqedge.models.blocks import Backbone
from vqedge.models.import_checkpoint import CheckpointError
from vqedge.runtime.manifest import PRECISIONS, sha256_file

FAMILIES = ("var", "llamagen", "taming", "diffusers")
# each family's presets, the first one its default
PRESETS: dict[str, tuple[str, ...]] = {
    "var": tuple(var.PRESETS),
    "llamagen": tuple(llamagen.PRESETS),
    "taming": tuple(taming.PRESETS),
    "diffusers": (),  # the folder's config.json says the shape
}


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


def _dataclass_from(cls: type, d: dict[str, Any], where: str) -> Any:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown}; expected some of {sorted(known)}")
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
    try:
        return cls(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def taming_config(d: dict[str, Any], where: str = "config") -> taming.TamingConfig:
    """A TamingConfig from taming's own config: its YAML's ``model.params`` (``ddconfig``,
    ``n_embed``, ``embed_dim``), whole or from ``model`` / ``params`` down."""
    for key in ("model", "params"):
        if key in d and isinstance(d[key], dict):
            d = d[key]
    if "ddconfig" not in d:
        raise ValueError(f"{where}: a taming config needs 'ddconfig' (model.params.ddconfig)")
    dd = d["ddconfig"]
    try:
        ch, mult, res = int(dd["ch"]), tuple(dd["ch_mult"]), int(dd["resolution"])
        attn = {int(r) for r in dd.get("attn_resolutions", [])}
        backbone = Backbone(
            ch=ch,
            channels=tuple(ch * m for m in mult),
            num_res_blocks=int(dd["num_res_blocks"]),
            z_channels=int(dd["z_channels"]),
            attn_levels=tuple(i for i in range(len(mult)) if res // 2**i in attn),
            in_channels=int(dd.get("in_channels", 3)),
            out_channels=int(dd.get("out_ch", 3)),
        )
        return taming.TamingConfig(
            backbone=backbone, n_embed=int(d["n_embed"]), embed_dim=int(d["embed_dim"])
        )
    except KeyError as e:
        raise ValueError(f"{where}: taming config lacks {e.args[0]!r}") from None


def _load_var(ckpt: Path, preset: str | None, cfg: dict | None, where: str) -> nn.Module:
    config = _dataclass_from(var.VARConfig, cfg, where) if cfg is not None else None
    return var.load_var(ckpt, preset=preset or "256", config=config)


def _load_llamagen(ckpt: Path, preset: str | None, cfg: dict | None, where: str) -> nn.Module:
    config = _dataclass_from(llamagen.LlamaGenConfig, cfg, where) if cfg is not None else None
    return llamagen.load_llamagen(ckpt, preset=preset or "vq16", config=config)


def _load_taming(ckpt: Path, preset: str | None, cfg: dict | None, where: str) -> nn.Module:
    config = taming_config(cfg, where) if cfg is not None else None
    return taming.load_taming(ckpt, preset=preset or "f16-1024", config=config)


def _load_diffusers(ckpt: Path, preset: str | None, cfg: dict | None, where: str) -> nn.Module:
    if preset is not None and preset not in vqmodel.PRESETS:
        raise ValueError(
            f"{vqmodel.FAMILY} preset must be one of {sorted(vqmodel.PRESETS)}, got {preset!r}"
        )
    config = None
    if cfg is not None:
        config = vqmodel.VQModelConfig.from_dict(cfg, where)
    elif preset is not None:
        config = vqmodel.PRESETS[preset]
    return vqmodel.load_vqmodel(ckpt, config=config)


LOADERS: dict[str, Callable[..., nn.Module]] = {
    "var": _load_var,
    "llamagen": _load_llamagen,
    "taming": _load_taming,
    "diffusers": _load_diffusers,
}


def weights_file(checkpoint: str | Path, family: str) -> Path:
    """The file a family's checkpoint keeps its weights in (diffusers: inside the folder)."""
    path = Path(checkpoint)
    if family == "diffusers":
        if not path.is_dir():
            raise NotADirectoryError(
                f"{vqmodel.FAMILY}: {path} must be a save_pretrained folder "
                f"({vqmodel.CONFIG_FILE} and {vqmodel.WEIGHT_FILES[0]})"
            )
        found = [path / w for w in vqmodel.WEIGHT_FILES if (path / w).is_file()]
        if not found:
            raise FileNotFoundError(
                f"{vqmodel.FAMILY} folder {path} has none of {list(vqmodel.WEIGHT_FILES)}"
            )
        return found[0]
    if not path.is_file():
        raise FileNotFoundError(f"{family} checkpoint {path} does not exist (a file expected)")
    return path


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
        One of FAMILIES.
    preset : str, optional
        A shape the family ships (``PRESETS[family]``); None: the family's default (for
        diffusers, the folder's config.json).
    config : path or dict, optional
        The family's config fields (JSON; taming also takes its YAML), overriding ``preset``.

    Raises
    ------
    ValueError
        Unknown family, preset or config fields; CheckpointError (a ValueError) for a
        checkpoint of another family or a damaged one.
    """
    if family not in LOADERS:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    where = "the given config"
    if isinstance(config, (str, Path)):
        where = str(config)
        config = _read_config_file(config, family)
    weights_file(checkpoint, family)  # a clear error for a missing file, before any loading
    return LOADERS[family](Path(checkpoint), preset, config, where)


def source_facts(
    checkpoint: str | Path, family: str, preset: str | None, model: nn.Module
) -> dict[str, Any]:
    """The manifest's ``source``: family, checkpoint file name, its sha256, preset, and the
    family's own config of the model exported."""
    weights = weights_file(checkpoint, family)
    cfg = getattr(model, "config", None)
    facts: dict[str, Any] = {
        "family": family,
        "checkpoint": weights.name,
        "sha256": sha256_file(weights),
        "preset": preset or (PRESETS[family][0] if PRESETS[family] else None),
    }
    if family == "diffusers":
        folder = Path(checkpoint)
        facts["checkpoint"] = f"{folder.resolve().name}/{weights.name}"
        facts["config_sha256"] = sha256_file(folder / vqmodel.CONFIG_FILE)
        facts["preset"] = preset
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
    "FAMILIES",
    "PRESETS",
    "CheckpointError",
    "export_pretrained",
    "load_family",
    "source_facts",
    "taming_config",
]
