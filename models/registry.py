"""The one table of imported model families: what ``vqedge export --from``, the export and
the benchmarks know of each.

Torch-free: the table holds names and strings only, so ``vqedge --help`` lists the families
without importing torch. The model module a family names is imported when a model is built.

A family's model module defines the names its entry gives: the config dataclass, the model
class, ``PRESETS`` (preset name -> config) and a loader ``load(checkpoint, preset=None,
config=None)``; it may define ``config_from_dict(d, where)`` for a config written in the
family's own layout (taming's YAML, diffusers' config.json). Adding a family is that module
and one ``register(Family(...))`` (docs/extending.md).
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints


@dataclass(frozen=True)
class Family:
    """One imported family: how its checkpoint is found, read and built."""

    # what `vqedge export --from` takes and a bundle's manifest records as source.family
    name: str
    # the model module (dotted name, or the module itself) that builds it
    module: str | types.ModuleType
    # names in that module: the config dataclass, the model class, the loader
    config_class: str
    model_class: str
    loader: str
    # the shapes it ships (the module's PRESETS), the first its default
    presets: tuple[str, ...] = ()
    # what the checkpoint is, as `vqedge export --help` says it
    checkpoint: str = "the checkpoint file"
    # a checkpoint that is a folder: the weight files it may hold, the first found is read
    # (empty: the checkpoint is the weights file itself)
    folder_weights: tuple[str, ...] = ()
    # a file in that folder that gives the shape: no preset is the default, and its sha256
    # is recorded beside the weights'
    config_file: str | None = None

    @property
    def default_preset(self) -> str | None:
        """The preset used when none is given (None where the folder's config decides)."""
        return None if self.config_file or not self.presets else self.presets[0]

    def models(self) -> types.ModuleType:
        """The model module (imports torch)."""
        m = self.module
        return m if isinstance(m, types.ModuleType) else import_module(m)

    def config_type(self) -> type:
        return getattr(self.models(), self.config_class)

    def model_type(self) -> type:
        return getattr(self.models(), self.model_class)

    def preset_configs(self) -> dict[str, Any]:
        return dict(getattr(self.models(), "PRESETS", {}))

    def config_from_dict(self, d: dict[str, Any], where: str = "config") -> Any:
        """The family's config from a dict: in its own layout where the module reads one
        (``config_from_dict``), else the dataclass's fields (nested dataclasses as dicts)."""
        own = getattr(self.models(), "config_from_dict", None)
        if own is not None:
            return own(d, where)
        return dataclass_from_dict(self.config_type(), d, where)

    def checkpoint_weights(self, checkpoint: str | Path) -> Path:
        """The file the checkpoint keeps its weights in (a folder's: the first of
        ``folder_weights`` it holds).

        Raises
        ------
        FileNotFoundError, NotADirectoryError
            No such checkpoint, or a file where a folder is expected.
        """
        path = Path(checkpoint)
        if not self.folder_weights:
            if not path.is_file():
                raise FileNotFoundError(
                    f"{self.name} checkpoint {path} does not exist (a file expected)"
                )
            return path
        if not path.is_dir():
            raise NotADirectoryError(
                f"{self.name}: {path} must be a folder holding "
                f"{' and '.join(filter(None, (self.config_file, self.folder_weights[0])))}"
            )
        for w in self.folder_weights:
            if (path / w).is_file():
                return path / w
        raise FileNotFoundError(
            f"{self.name} folder {path} has none of {list(self.folder_weights)}"
        )

    def load(
        self, checkpoint: str | Path, preset: str | None = None, config: Any | None = None
    ) -> Any:
        """The model with the checkpoint's weights (the module's loader); ``config`` (the
        family's config dataclass) overrides ``preset``."""
        loader = getattr(self.models(), self.loader)
        return loader(Path(checkpoint), preset=preset, config=config)


def dataclass_from_dict(cls: type, d: dict[str, Any], where: str = "config") -> Any:
    """A config dataclass from a dict of its fields (``dataclasses.asdict``'s form): lists
    become tuples, dicts of a nested dataclass field become that dataclass.

    Raises
    ------
    ValueError
        Unknown fields (named, with the known ones), or values the dataclass refuses.
    """
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected an object of {cls.__name__} fields")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown}; expected some of {sorted(known)}")
    hints = get_type_hints(cls)
    fields = {}
    for name, v in d.items():
        nested = _dataclass_of(hints.get(name))
        if isinstance(v, dict) and nested is not None:
            v = dataclass_from_dict(nested, v, f"{where}.{name}")
        elif isinstance(v, list):
            v = tuple(v)
        fields[name] = v
    try:
        return cls(**fields)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass a field's type names (``X`` or ``X | None``), else None."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return hint
    if get_origin(hint) in (Union, types.UnionType):
        found = [a for a in get_args(hint) if isinstance(a, type) and dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


# name -> family; the order is the order `vqedge export --help` lists them
FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` to the table (a name already there is replaced)."""
    FAMILIES[family.name] = family
    return family


def get(name: str) -> Family:
    """The family called ``name``.

    Raises
    ------
    ValueError
        No such family (the message lists the known ones).
    """
    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def names() -> tuple[str, ...]:
    """Every registered family's name."""
    return tuple(FAMILIES)


register(
    Family(
        name="var",
        module="vqedge.models.var",
        config_class="VARConfig",
        model_class="VARVQVAE",
        loader="load_var",
        presets=("256", "512"),
        checkpoint="VAR's raw state dict (vae_ch160v4096z32.pth)",
    )
)
register(
    Family(
        name="llamagen",
        module="vqedge.models.llamagen",
        config_class="LlamaGenConfig",
        model_class="LlamaGenVQ",
        loader="load_llamagen",
        presets=("vq16", "vq8"),
        checkpoint="LlamaGen's .pt (weights under 'model')",
    )
)
register(
    Family(
        name="taming",
        module="vqedge.models.taming",
        config_class="TamingConfig",
        model_class="TamingVQGAN",
        loader="load_taming",
        presets=("f16-1024", "f16-16384"),
        checkpoint="taming's Lightning .ckpt",
    )
)
register(
    Family(
        name="diffusers",
        module="vqedge.models.vqmodel",
        config_class="VQModelConfig",
        model_class="DiffusersVQModel",
        loader="load_vqmodel",
        presets=("vq-f4", "vq-f8"),
        checkpoint="a VQModel save_pretrained folder",
        folder_weights=("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
        config_file="config.json",
    )
)
register(
    Family(
        name="open-magvit2",
        module="vqedge.models.open_magvit2",
        config_class="OpenMagvit2Config",
        model_class="OpenMagvit2",
        loader="load_open_magvit2",
        presets=("256", "128"),
        checkpoint="Open-MAGVIT2's Lightning .ckpt (--config: its yaml)",
    )
)

__all__ = ["FAMILIES", "Family", "dataclass_from_dict", "get", "names", "register"]
