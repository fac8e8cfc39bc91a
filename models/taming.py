"""taming-transformers' VQGAN (``taming.models.vqgan.VQModel``), loaded from its Lightning file.

The released f16 models: ch 128, ch_mult (1, 1, 2, 2, 4), two residual blocks per level,
attention at the 16x16 level, z_channels 256, codes of dimension 256 (1024 or 16384 of them),
1x1 quant_conv / post_quant_conv. The checkpoint is a Lightning file whose ``state_dict``
also holds the training loss (``loss.*``: the discriminator and LPIPS), left out by name.
Our module names are taming's own, so the official name of every tensor is its name here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vqedge.models.blocks import Backbone
from vqedge.models.import_checkpoint import (
    Source,
    load_official,
    preset_config,
    read_checkpoint,
    source_name,
)
from vqedge.models.registry import dataclass_from_dict
from vqedge.models.single_scale import Codebook, SingleScaleVQ

FAMILY = "taming VQGAN"
# Lightning's checkpoint dict holds the model under this key
CONTAINER = "state_dict"
# the training loss (discriminator, LPIPS) sits beside the model in the state dict
LOSS_PREFIX = "loss."


@dataclass(frozen=True)
class TamingConfig:
    """A VQGAN's ddconfig + n_embed / embed_dim, in our Backbone's terms."""

    backbone: Backbone = field(default_factory=Backbone)
    # n_embed: the number of codes
    n_embed: int = 1024
    # embed_dim: the dimension of one code
    embed_dim: int = 256


PRESETS = {
    "f16-1024": TamingConfig(n_embed=1024),
    "f16-16384": TamingConfig(n_embed=16384),
}


class TamingVQGAN(SingleScaleVQ):
    """taming's VQGAN for inference: encode -> indices -> decode."""

    family = FAMILY

    def __init__(self, config: TamingConfig | None = None) -> None:
        cfg = config or PRESETS["f16-1024"]
        self.config = cfg
        super().__init__(cfg.backbone, Codebook(cfg.n_embed, cfg.embed_dim))


def to_official(name: str) -> str:
    """Our state_dict name -> taming's (the same)."""
    return name


def is_loss(name: str) -> bool:
    """True for the training loss's tensors, which the tokenizer does not use."""
    return name.startswith(LOSS_PREFIX)


def config_from_dict(d: dict[str, Any], where: str = "config") -> TamingConfig:
    """A TamingConfig from taming's own config: its YAML's ``model.params`` (``ddconfig``,
    ``n_embed``, ``embed_dim``), whole or from ``model`` / ``params`` down; or from
    TamingConfig's own fields (``backbone``, ``n_embed``, ``embed_dim``: what a bundle's
    manifest records)."""
    if "backbone" in d:
        return dataclass_from_dict(TamingConfig, d, where)
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
        return TamingConfig(
            backbone=backbone, n_embed=int(d["n_embed"]), embed_dim=int(d["embed_dim"])
        )
    except KeyError as e:
        raise ValueError(f"{where}: taming config lacks {e.args[0]!r}") from None


def load_taming(
    source: Source, preset: str | None = "f16-1024", config: TamingConfig | None = None
) -> TamingVQGAN:
    """A TamingVQGAN with the weights of a taming Lightning checkpoint (``last.ckpt``).

    Parameters
    ----------
    source : path or mapping
        The ``.ckpt`` file, or the dict it holds (with its ``state_dict`` key).
    preset : str
        ``f16-1024`` (also None) or ``f16-16384``; ignored when ``config`` is given.

    Raises
    ------
    CheckpointError
        A file of another family, truncated, or with a missing, unexpected or reshaped key.
    """
    cfg = preset_config(FAMILY, PRESETS, preset, config, default="f16-1024")
    tensors = read_checkpoint(source, FAMILY, container=CONTAINER)
    model = TamingVQGAN(cfg)
    load_official(model, tensors, FAMILY, to_official, source_name(source), ignore=is_loss)
    return model
