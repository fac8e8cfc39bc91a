"""LlamaGen's VQ tokenizers (``tokenizer/tokenizer_image/vq_model.py``): VQ-16 and VQ-8.

ch 128, two residual blocks per level, attention at the coarsest level, z_channels 256,
1x1 quant_conv to codes of dimension 8, 16384 codes. Latents and codes are l2-normalised
before the lookup (``argmin |z|^2 + |e|^2 - 2 z.e`` on unit vectors) and the decoder receives
the unit code. The checkpoint is a dict with the weights under ``model``, including the
training buffer ``quantize.codebook_used`` (65536 floats).

LlamaGen names its levels ``conv_blocks.{i}.res.{j}`` and its middle ``mid.0/1/2``; its
decoder numbers levels coarsest first (``decoder.conv_blocks.0`` is the coarsest), the
opposite of taming's ``decoder.up.{i}``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vqedge.models.blocks import Backbone
from vqedge.models.import_checkpoint import (
    Source,
    load_official,
    preset_config,
    read_checkpoint,
    source_name,
)
from vqedge.models.single_scale import Codebook, SingleScaleVQ

FAMILY = "LlamaGen VQ"
CONTAINER = "model"
# length of the codebook_used buffer LlamaGen's VectorQuantizer registers (show_usage)
USAGE_BUFFER = 65536


@dataclass(frozen=True)
class LlamaGenConfig:
    """LlamaGen's ModelArgs, in our terms."""

    # ch_mult of encoder and decoder (VQ-16: 5 levels, VQ-8: 4)
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    # codebook_size
    codebook_size: int = 16384
    # codebook_embed_dim
    embed_dim: int = 8
    z_channels: int = 256
    ch: int = 128
    num_res_blocks: int = 2
    # codebook_l2_norm
    l2_normalize: bool = True
    # length of quantize.codebook_used (codebook_show_usage); 0: the file has none
    usage_buffer: int = USAGE_BUFFER

    @property
    def backbone(self) -> Backbone:
        n = len(self.ch_mult)
        return Backbone(
            ch=self.ch,
            channels=tuple(self.ch * m for m in self.ch_mult),
            num_res_blocks=self.num_res_blocks,
            z_channels=self.z_channels,
            attn_levels=(n - 1,),
        )


PRESETS = {
    "vq16": LlamaGenConfig(ch_mult=(1, 1, 2, 2, 4)),
    "vq8": LlamaGenConfig(ch_mult=(1, 2, 2, 4)),
}


class LlamaGenVQ(SingleScaleVQ):
    """LlamaGen's VQModel for inference: encode -> indices -> decode."""

    family = FAMILY

    def __init__(self, config: LlamaGenConfig | None = None) -> None:
        cfg = config or PRESETS["vq16"]
        self.config = cfg
        codebook = Codebook(cfg.codebook_size, cfg.embed_dim, cfg.l2_normalize, cfg.usage_buffer)
        super().__init__(cfg.backbone, codebook)


_MID = {"block_1": "0", "attn_1": "1", "block_2": "2"}


def official_namer(num_levels: int):
    """Our state_dict name -> LlamaGen's, for a model with ``num_levels`` levels."""

    def to_official(name: str) -> str:
        name = re.sub(
            r"^(encoder|decoder)\.mid\.(block_1|attn_1|block_2)\.",
            lambda m: f"{m[1]}.mid.{_MID[m[2]]}.",
            name,
        )
        name = re.sub(r"^encoder\.down\.(\d+)\.block\.", r"encoder.conv_blocks.\1.res.", name)
        name = re.sub(r"^encoder\.down\.", "encoder.conv_blocks.", name)
        m = re.match(r"^decoder\.up\.(\d+)\.(block|attn|upsample)\.(.*)$", name)
        if m:
            part = "res" if m[2] == "block" else m[2]
            name = f"decoder.conv_blocks.{num_levels - 1 - int(m[1])}.{part}.{m[3]}"
        return name

    return to_official


def load_llamagen(
    source: Source, preset: str | None = "vq16", config: LlamaGenConfig | None = None
) -> LlamaGenVQ:
    """A LlamaGenVQ with the weights of a LlamaGen checkpoint (``vq_ds16_c2i.pt``).

    Parameters
    ----------
    source : path or mapping
        The ``.pt`` file, or the dict it holds (with its ``model`` key).
    preset : str
        ``vq16`` (also None) or ``vq8``; ignored when ``config`` is given.

    Raises
    ------
    CheckpointError
        A file of another family, truncated, or with a missing, unexpected or reshaped key.
    """
    cfg = preset_config(FAMILY, PRESETS, preset, config, default="vq16")
    tensors = read_checkpoint(source, FAMILY, container=CONTAINER)
    model = LlamaGenVQ(cfg)
    namer = official_namer(len(cfg.ch_mult))
    load_official(model, tensors, FAMILY, namer, source_name(source))
    return model
