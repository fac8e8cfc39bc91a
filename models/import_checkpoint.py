"""Read other projects' checkpoint files and load them into our modules, checking every tensor.

Each family module knows its official names (a function from our state_dict names to the
official ones); this module reads the file the way its authors save it (a raw state dict, a
dict holding it under a key, a safetensors file), compares the official layout with what the
file holds, name by name and shape by shape, and only then copies the weights. Every tensor
of the file must be used, except those a family recognises by name as not part of the
tokenizer (taming's ``loss.*``); every tensor of the model must be in the file, except
buffers the family never saved.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from torch import nn

Source = str | Path | Mapping[str, torch.Tensor]


class CheckpointError(ValueError):
    """A checkpoint that is not the expected family's, or is damaged."""


def _torch_load(path: Path, family: str) -> object:
    def load(mmap: bool) -> object:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            return load(mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):  # a file in torch's legacy format cannot be mapped
                raise
            return load(mmap=False)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: holds Python objects besides tensors, which a weights-only load refuses "
            f"({str(e).splitlines()[0]}); if you trust the file, torch.load it yourself and "
            f"pass the {family} state dict"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(
            f"{path}: cannot be read as a {family} checkpoint (a torch.save file): "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; "
            "is it truncated or of another format?"
        ) from e


def read_checkpoint(
    source: Source, family: str, container: str | None = None
) -> dict[str, torch.Tensor]:
    """The state dict a checkpoint file holds, without copying tensors it maps.

    Parameters
    ----------
    source : path or mapping
        A ``torch.save`` file (loaded with ``weights_only=True``, memory-mapped when the
        format allows), a ``.safetensors`` file, or an already loaded dict.
    family : str
        The family expected, named in every error.
    container : str, optional
        The key the state dict sits under (LlamaGen: ``model``; taming's Lightning
        checkpoints: ``state_dict``); None for a raw state dict (VAR).

    Raises
    ------
    CheckpointError
        Unreadable or truncated file, a dict without ``container``, or non-tensor values.
    """
    where = source_name(source)
    if isinstance(source, Mapping):
        obj: object = source
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{family} checkpoint {path} does not exist")
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                obj = load_file(path)
            except (SafetensorError, OSError, ValueError) as e:
                raise CheckpointError(
                    f"{path}: cannot be read as a {family} safetensors file: {e}; is it truncated?"
                ) from e
        else:
            obj = _torch_load(path, family)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{where}: expected a {family} checkpoint (a dict of tensors), found "
            f"{type(obj).__name__}"
        )
    if container is not None:
        if container not in obj or not isinstance(obj[container], Mapping):
            raise CheckpointError(
                f"{where}: not a {family} checkpoint: expected its weights under the key "
                f"{container!r}, found top-level keys {_first(obj)}"
            )
        obj = obj[container]
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        hint = "" if container else " (a raw state dict); it looks wrapped: another family?"
        raise CheckpointError(
            f"{where}: not a {family} checkpoint{hint}: key {bad[0]!r} holds a "
            f"{type(obj[bad[0]]).__name__}, not a tensor"
        )
    return dict(obj)


def source_name(source: Source) -> str:
    """How errors name a checkpoint: its path, or "the given dict"."""
    return "the given dict" if isinstance(source, Mapping) else str(source)


def _first(keys: Iterable[str], n: int = 5) -> str:
    keys = list(keys)
    more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
    return "[" + ", ".join(repr(k) for k in keys[:n]) + more + "]"


def check_layout(
    found: Mapping[str, torch.Tensor],
    expected: Mapping[str, tuple[int, ...]],
    family: str,
    where: str = "checkpoint",
) -> None:
    """Raise CheckpointError unless ``found`` has exactly the names and shapes expected.

    The message names the family, how many tensors were expected and found, the first
    missing key (with its expected shape), the first unexpected key (with the shape found)
    and the first key whose shape differs (found vs expected).
    """
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [k for k in expected if k in found and tuple(found[k].shape) != expected[k]]
    if not (missing or unexpected or reshaped):
        return
    parts = []
    if missing:
        k = missing[0]
        parts.append(f"first missing key {k!r} (expected shape {expected[k]})")
    if unexpected:
        k = unexpected[0]
        parts.append(f"first unexpected key {k!r} (shape found {tuple(found[k].shape)})")
    if reshaped:
        k = reshaped[0]
        parts.append(f"key {k!r} has shape {tuple(found[k].shape)} found, {expected[k]} expected")
    counts = (
        f"{len(expected)} tensors expected, {len(found)} found: {len(missing)} missing, "
        f"{len(unexpected)} unexpected, {len(reshaped)} of another shape"
    )
    raise CheckpointError(
        f"{where}: not a {family} checkpoint in the expected layout ({counts}); " + "; ".join(parts)
    )


def official_layout(
    model: nn.Module, to_official: Callable[[str], str], ours_only: Iterable[str] = ()
) -> dict[str, tuple[int, ...]]:
    """Official name -> shape of every tensor the family's file holds for ``model``."""
    skip = set(ours_only)
    return {to_official(k): tuple(v.shape) for k, v in model.state_dict().items() if k not in skip}


def load_official(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    family: str,
    to_official: Callable[[str], str],
    where: str = "checkpoint",
    ignore: Callable[[str], bool] = lambda k: False,
    ours_only: Iterable[str] = (),
) -> nn.Module:
    """Copy an official state dict into ``model`` after checking every name and shape.

    Parameters
    ----------
    to_official : callable
        Our state_dict name -> the official name (one to one).
    ignore : callable
        True for official names the family recognises as not part of the tokenizer.
    ours_only : iterable of str
        Our buffers the family's files do not hold (left as initialised).
    """
    ours_only = set(ours_only)
    ours = {k: v for k, v in model.state_dict().items() if k not in ours_only}
    name_of = {to_official(k): k for k in ours}
    if len(name_of) != len(ours):
        raise AssertionError(f"{family}: two of our tensors map to one official name")
    found = {k: v for k, v in tensors.items() if not ignore(k)}
    check_layout(found, {o: tuple(ours[k].shape) for o, k in name_of.items()}, family, where)
    result = model.load_state_dict({name_of[o]: v for o, v in found.items()}, strict=False)
    if set(result.missing_keys) != ours_only or result.unexpected_keys:
        raise AssertionError(f"{family}: load left {result}")
    return model


def preset_config(family: str, presets: Mapping[str, object], preset: str | None, config, default):
    """The config a loader builds: ``config`` when given, else the named preset (``default``
    when ``preset`` is None).

    Raises
    ------
    ValueError
        A preset the family does not ship.
    """
    if config is not None:
        return config
    name = default if preset is None else preset
    if name not in presets:
        raise ValueError(f"{family} preset must be one of {sorted(presets)}, got {preset!r}")
    return presets[name]
