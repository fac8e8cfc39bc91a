"""Open-MAGVIT2's image tokenizer (``open_magvit2.taming.models.lfqgan.VQModel``), loaded from
its Lightning file: a lookup-free (LFQ) tokenizer of 2^18 codes.

The network, as its ``improved_model.py`` lays it out: bias-free 3x3 residual blocks
(GroupNorm(32, eps 1e-6), SiLU), a stride-2 3x3 conv between encoder levels, no attention,
a 1x1 conv to the 18 latent channels; the decoder upsamples by a 3x3 conv to 4x the channels
then depth-to-space (DCR order), and before each level's blocks an adaptive GroupNorm whose
scale and bias are linear maps of the per-channel standard deviation and mean of the code
map. So its decode of one token depends on the whole map (bundles refuse tiling). No
quant_conv; the quantizer is the sign of each channel (``vqedge.models.lookup_free.LFQ``).

Our module names are Open-MAGVIT2's own, so the official name of every tensor is its name
here. Its checkpoints are Lightning files whose ``state_dict`` also holds the loss (``loss.*``)
and, when trained with EMA, the averaged weights under ``model_ema.`` with the dots of each
name removed: those are the weights Open-MAGVIT2 itself loads for generation, and so here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vqedge.models.import_checkpoint import (
    Source,
    load_official,
    preset_config,
    read_checkpoint,
    source_name,
)
from vqedge.models.lookup_free import LFQ
from vqedge.models.registry import dataclass_from_dict
from vqedge.models.single_scale import TokenMapModel
from vqedge.runtime.config import VQVAEConfig

FAMILY = "Open-MAGVIT2"
CONTAINER = "state_dict"
# what the Lightning state dict holds beside the tokenizer
LOSS_PREFIX = "loss."
EMA_PREFIX = "model_ema."
GN_GROUPS, GN_EPS = 32, 1e-6


@dataclass(frozen=True)
class OpenMagvit2Config:
    """Its yaml's ``ddconfig`` + ``embed_dim`` and the token factorization."""

    # width of the first level; level i is ch * ch_mult[i] wide
    ch: int = 128
    # one entry per level; len - 1 stride-2 steps set f
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    # residual blocks per level and in the middle (encoder and decoder alike)
    num_res_blocks: int = 4
    # latent channels = LFQ bits (embed_dim; n_embed = 2^z_channels)
    z_channels: int = 18
    in_channels: int = 3
    out_ch: int = 3
    # the two sub-tokens of its AR model (low bits first); recorded whether or not the
    # checkpoint was trained with token_factorization
    factorized_bits: tuple[int, ...] = (9, 9)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


PRESETS = {
    # imagenet_lfqgan_128_L.yaml: f=8, 16x16 tokens at 128x128
    "128": OpenMagvit2Config(ch_mult=(1, 2, 2, 4)),
    # imagenet_lfqgan_256_L.yaml: f=16, 16x16 tokens at 256x256
    "256": OpenMagvit2Config(ch_mult=(1, 1, 2, 2, 4)),
}


def _norm(ch: int, affine: bool = True) -> nn.GroupNorm:
    return nn.GroupNorm(GN_GROUPS, ch, eps=GN_EPS, affine=affine)


class ResBlock(nn.Module):
    """x + conv(silu(norm(conv(silu(norm(x)))))); a 1x1 shortcut where the width changes."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = _norm(cin), _norm(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h + (self.nin_shortcut(x) if self.nin_shortcut is not None else x)


class Level(nn.Module):
    """One resolution level: its residual blocks, then the resize (``downsample`` /
    ``upsample``, as the official names say), absent at the last level."""

    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)


class Encoder(nn.Module):
    def __init__(self, cfg: OpenMagvit2Config) -> None:
        super().__init__()
        chs = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1, bias=False)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for i, c in enumerate(chs):
            level = Level([ResBlock(cin if j == 0 else c, c) for j in range(cfg.num_res_blocks)])
            if i < len(chs) - 1:
                level.downsample = nn.Conv2d(c, c, 3, stride=2, padding=1)
            self.down.append(level)
            cin = c
        self.mid_block = nn.ModuleList(ResBlock(cin, cin) for _ in range(cfg.num_res_blocks))
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            for blk in level.block:
                x = blk(x)
            if hasattr(level, "downsample"):
                x = level.downsample(x)
        for blk in self.mid_block:
            x = blk(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class AdaptiveGroupNorm(nn.Module):
    """GroupNorm without affine, then scale = gamma(std of each code channel over the map)
    and bias = beta(its mean); the variance is the unbiased one, torch.var's default, as the
    reference computes it."""

    def __init__(self, z_channels: int, ch: int) -> None:
        super().__init__()
        self.gn = _norm(ch, affine=False)
        self.gamma = nn.Linear(z_channels, ch)
        self.beta = nn.Linear(z_channels, ch)

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        flat = code.flatten(2)  # [B, Z, h*w]
        mean = flat.mean(dim=-1)
        # torch.var's unbiased variance, with the count n summed rather than read from the
        # shape: a shape's Cast to float is what the fp16 conversion mistypes
        n = torch.ones_like(flat[:1, :1]).sum(dim=-1)
        var = (flat - mean[..., None]).square().mean(dim=-1) * (n / (n - 1))
        scale = self.gamma((var + GN_EPS).sqrt())[:, :, None, None]
        bias = self.beta(mean)[:, :, None, None]
        return self.gn(x) * scale + bias


class Upsampler(nn.Module):
    """3x3 conv to 4x the channels, then depth-to-space x2 in DCR order (the channel index
    is (row offset, column offset, channel), unlike PixelShuffle's)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch * 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        B, C4, h, w = y.shape
        y = y.view(B, 2, 2, C4 // 4, h, w).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(B, C4 // 4, h * 2, w * 2)


class Decoder(nn.Module):
    def __init__(self, cfg: OpenMagvit2Config) -> None:
        super().__init__()
        chs = [cfg.ch * m for m in cfg.ch_mult]
        cin = chs[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid_block = nn.ModuleList(ResBlock(cin, cin) for _ in range(cfg.num_res_blocks))
        ups: list[Level] = []
        adaptive: list[nn.Module] = []
        for i in reversed(range(len(chs))):
            adaptive.insert(0, AdaptiveGroupNorm(cfg.z_channels, cin))
            c = chs[i]
            level = Level([ResBlock(cin if j == 0 else c, c) for j in range(cfg.num_res_blocks)])
            cin = c
            if i > 0:
                level.upsample = Upsampler(cin)
            ups.insert(0, level)
        self.up = nn.ModuleList(ups)
        self.adaptive = nn.ModuleList(adaptive)
        self.norm_out = _norm(cin)
        self.conv_out = nn.Conv2d(cin, cfg.out_ch, 3, padding=1)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        z = self.conv_in(code)
        for blk in self.mid_block:
            z = blk(z)
        for i in reversed(range(len(self.up))):
            z = self.adaptive[i](z, code)
            for blk in self.up[i].block:
                z = blk(z)
            if i > 0:
                z = self.up[i].upsample(z)
        return self.conv_out(F.silu(self.norm_out(z)))


class OpenMagvit2(TokenMapModel):
    """Open-MAGVIT2's tokenizer for inference: images -> LFQ indices -> images.

    The export surface of every model (``encoder``, ``quant_conv``, ``quantize``,
    ``post_quant_conv``, ``decoder``, ``runtime_config``); the convolutions around the
    quantizer are identities, as Open-MAGVIT2 has none. ``encode`` gives the latent before
    the sign, ``decode`` takes codes (+-1 per channel) and clamps to [-1, 1].
    """

    family = FAMILY
    # the decoder's adaptive GroupNorm reads statistics of the whole code map
    tiles = False
    imported = True

    def __init__(self, config: OpenMagvit2Config | None = None) -> None:
        super().__init__()
        cfg = config or PRESETS["256"]
        self.config = cfg
        self.downsample_factor = cfg.downsample_factor
        self.in_channels = cfg.in_channels
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Identity()
        self.quantize = LFQ(cfg.z_channels, cfg.factorized_bits)
        self.post_quant_conv = nn.Identity()
        self.decoder = Decoder(cfg)
        self.eval()

    @property
    def runtime_config(self) -> VQVAEConfig:
        """f, K = 2^bits and the code dim (the other fields as close as VQVAEConfig gets)."""
        cfg = self.config
        return VQVAEConfig(
            in_channels=cfg.in_channels,
            base_channels=cfg.ch,
            channel_mult=cfg.ch_mult,
            num_res_blocks=cfg.num_res_blocks,
            num_mid_blocks=cfg.num_res_blocks,
            codebook_size=self.codebook_size,
            code_dim=cfg.z_channels,
            ema=False,
            dead_code_threshold=0.0,
        )


def config_from_dict(d: dict[str, Any], where: str = "config") -> OpenMagvit2Config:
    """An OpenMagvit2Config from its yaml (``model.init_args``: ``ddconfig``, ``n_embed``,
    ``embed_dim``, ``factorized_bits``), whole or from ``model`` / ``init_args`` down, or
    from OpenMagvit2Config's own fields (what a bundle's manifest records)."""
    for key in ("model", "init_args"):
        if key in d and isinstance(d[key], dict):
            d = d[key]
    if "ddconfig" not in d:
        return dataclass_from_dict(OpenMagvit2Config, d, where)
    dd = d["ddconfig"]
    try:
        z = int(dd["z_channels"])
        if int(d.get("embed_dim", z)) != z or int(d.get("n_embed", 2**z)) != 2**z:
            raise ValueError(
                f"{where}: embed_dim {d.get('embed_dim')} and n_embed {d.get('n_embed')} must "
                f"be z_channels ({z}) and 2^z_channels ({2**z})"
            )
        fb = tuple(int(b) for b in d.get("factorized_bits", (z // 2, z - z // 2)))
        return OpenMagvit2Config(
            ch=int(dd["ch"]),
            ch_mult=tuple(int(m) for m in dd["ch_mult"]),
            num_res_blocks=int(dd["num_res_blocks"]),
            z_channels=z,
            in_channels=int(dd.get("in_channels", 3)),
            out_ch=int(dd.get("out_ch", 3)),
            factorized_bits=fb,
        )
    except KeyError as e:
        raise ValueError(f"{where}: Open-MAGVIT2 ddconfig lacks {e.args[0]!r}") from None


def _tokenizer_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's and decoder's tensors: the EMA copies where the file has them."""
    ema = {k[len(EMA_PREFIX) :]: v for k, v in tensors.items() if k.startswith(EMA_PREFIX)}
    own = {
        k: v for k, v in tensors.items() if not k.startswith((LOSS_PREFIX, EMA_PREFIX, "quantize."))
    }
    if not ema:
        return own
    return {k: ema.get(k.replace(".", ""), v) for k, v in own.items()}


def load_open_magvit2(
    source: Source, preset: str | None = "256", config: OpenMagvit2Config | None = None
) -> OpenMagvit2:
    """An OpenMagvit2 with the weights of an Open-MAGVIT2 Lightning checkpoint.

    Parameters
    ----------
    source : path or mapping
        The ``.ckpt`` file, or the dict it holds (with its ``state_dict`` key).
    preset : str
        ``256`` (also None) or ``128``; ignored when ``config`` is given (``--config``: its
        yaml).

    Raises
    ------
    CheckpointError
        A file of another family, truncated, or with a missing, unexpected or reshaped key.
    """
    cfg = preset_config(FAMILY, PRESETS, preset, config, default="256")
    tensors = _tokenizer_tensors(read_checkpoint(source, FAMILY, container=CONTAINER))
    model = OpenMagvit2(cfg)
    load_official(model, tensors, FAMILY, lambda k: k, source_name(source))
    return model


__all__ = [
    "PRESETS",
    "OpenMagvit2",
    "OpenMagvit2Config",
    "config_from_dict",
    "load_open_magvit2",
]
