"""diffusers' ``VQModel`` (LDM VQ-f4/f8 style) from a ``save_pretrained`` folder, no diffusers.

The folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (or the ``.bin``
form). Down blocks are ``DownEncoderBlock2D`` and up blocks ``UpDecoderBlock2D`` (no attention
inside the levels); the middle has one single-head attention with Linear projections. diffusers
writes the lookup as ``argmin cdist(z, e)``: the same nearest code as the squared-distance
formula used here, up to float rounding of near ties. ``decode`` here quantizes nothing: it
takes codes (diffusers' ``decode`` quantizes its input first).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqedge.models.blocks import Backbone
from vqedge.models.import_checkpoint import (
    CheckpointError,
    load_official,
    preset_config,
    read_checkpoint,
)
from vqedge.models.registry import FAMILIES, dataclass_from_dict
from vqedge.models.single_scale import Codebook, SingleScaleVQ

FAMILY = "diffusers VQModel"
# the save_pretrained folder's files, as the family table names them
CONFIG_FILE = FAMILIES["diffusers"].config_file
WEIGHT_FILES = FAMILIES["diffusers"].folder_weights
DOWN_BLOCK, UP_BLOCK = "DownEncoderBlock2D", "UpDecoderBlock2D"


@dataclass(frozen=True)
class VQModelConfig:
    """The fields of diffusers' VQModel config that shape the network (its defaults)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64,)
    layers_per_block: int = 1
    latent_channels: int = 3
    num_vq_embeddings: int = 256
    norm_num_groups: int = 32
    # None: latent_channels
    vq_embed_dim: int | None = None
    mid_block_add_attention: bool = True

    @property
    def embed_dim(self) -> int:
        return self.vq_embed_dim if self.vq_embed_dim is not None else self.latent_channels

    @property
    def backbone(self) -> Backbone:
        return Backbone(
            ch=self.block_out_channels[0],
            channels=self.block_out_channels,
            num_res_blocks=self.layers_per_block,
            z_channels=self.latent_channels,
            attn_levels=(),
            mid_attn=self.mid_block_add_attention,
            attn_proj="linear",
            groups=self.norm_num_groups,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> VQModelConfig:
        """From diffusers' config.json; refuses what this module does not build."""
        name = d.get("_class_name", "VQModel")
        if name != "VQModel":
            raise CheckpointError(f"{where}: not a {FAMILY} config: _class_name is {name!r}")
        n = len(d.get("block_out_channels", cls.block_out_channels))
        wants = {
            "down_block_types": [DOWN_BLOCK] * n,
            "up_block_types": [UP_BLOCK] * n,
            "act_fn": "silu",
            "norm_type": "group",
        }
        for key, want in wants.items():
            got = d.get(key, want)
            if (list(got) if isinstance(got, (list, tuple)) else got) != want:
                raise CheckpointError(
                    f"{where}: {FAMILY} with {key}={got!r} is not supported (expected {want!r})"
                )
        # config.json holds many more fields than shape the network: those are read
        shape = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return dataclass_from_dict(cls, shape, where)


PRESETS = {
    # LDM vq-f4: 3 levels, 3-dim codes, 8192 of them
    "vq-f4": VQModelConfig(
        block_out_channels=(128, 256, 512),
        layers_per_block=2,
        latent_channels=3,
        num_vq_embeddings=8192,
        vq_embed_dim=3,
    ),
    # an f8 model of the same style: 4 levels, 4-dim codes, 16384 of them
    "vq-f8": VQModelConfig(
        block_out_channels=(128, 256, 256, 512),
        layers_per_block=2,
        latent_channels=4,
        num_vq_embeddings=16384,
        vq_embed_dim=4,
    ),
}


class DiffusersVQModel(SingleScaleVQ):
    """diffusers' VQModel for inference: encode -> indices -> decode."""

    family = FAMILY

    def __init__(self, config: VQModelConfig | None = None) -> None:
        cfg = config or PRESETS["vq-f4"]
        self.config = cfg
        super().__init__(cfg.backbone, Codebook(cfg.num_vq_embeddings, cfg.embed_dim))


_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def official_namer(num_levels: int):
    """Our state_dict name -> diffusers', for a model with ``num_levels`` levels."""

    def to_official(name: str) -> str:
        name = re.sub(r"\.nin_shortcut\.", ".conv_shortcut.", name)
        name = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out.", name)
        name = re.sub(r"\.mid\.block_1\.", ".mid_block.resnets.0.", name)
        name = re.sub(r"\.mid\.block_2\.", ".mid_block.resnets.1.", name)
        name = re.sub(
            r"\.mid\.attn_1\.(norm|q|k|v|proj_out)\.",
            lambda m: f".mid_block.attentions.0.{_ATTN[m[1]]}.",
            name,
        )
        name = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets.", name)
        name = re.sub(
            r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0.", name
        )
        m = re.match(r"^decoder\.up\.(\d+)\.(block|upsample)\.(.*)$", name)
        if m:
            part = "resnets" if m[2] == "block" else "upsamplers.0"
            name = f"decoder.up_blocks.{num_levels - 1 - int(m[1])}.{part}.{m[3]}"
        return name

    return to_official


def read_config(folder: str | Path) -> VQModelConfig:
    """The VQModelConfig of a ``save_pretrained`` folder's config.json."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{FAMILY} folder {folder} has no {CONFIG_FILE}")
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not a readable {FAMILY} config: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: not a {FAMILY} config (a JSON object expected)")
    return VQModelConfig.from_dict(d, str(path))


def config_from_dict(d: dict[str, Any], where: str = "config") -> VQModelConfig:
    """A VQModelConfig from diffusers' config.json fields (``VQModelConfig.from_dict``)."""
    return VQModelConfig.from_dict(d, where)


def load_vqmodel(
    folder: str | Path, config: VQModelConfig | None = None, preset: str | None = None
) -> DiffusersVQModel:
    """A DiffusersVQModel with the weights of a ``save_pretrained`` folder.

    Parameters
    ----------
    folder : path
        Holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (preferred) or
        ``diffusion_pytorch_model.bin``.
    config : VQModelConfig, optional
        Overrides the folder's config.json.
    preset : str, optional
        ``vq-f4`` or ``vq-f8`` instead of the folder's config.json; ``config`` overrides it.

    Raises
    ------
    CheckpointError
        Another model class, an unsupported block type, a truncated weights file, or a
        missing, unexpected or reshaped key.
    """
    folder = Path(folder)
    if config is None and preset is not None:
        config = preset_config(FAMILY, PRESETS, preset, None, default=None)
    cfg = config or read_config(folder)
    weights = next((folder / w for w in WEIGHT_FILES if (folder / w).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{FAMILY} folder {folder} has none of {list(WEIGHT_FILES)}")
    tensors = read_checkpoint(weights, FAMILY)
    model = DiffusersVQModel(cfg)
    namer = official_namer(len(cfg.block_out_channels))
    load_official(model, tensors, FAMILY, namer, str(weights))
    return model
