"""The convolutional backbone that taming's VQGAN, LlamaGen, VAR and diffusers' VQModel share.

All four descend from the LDM/taming autoencoder: GroupNorm(eps=1e-6) + SiLU residual blocks,
single-head self-attention over the whole feature map, a stride-2 convolution after a (0, 1,
0, 1) zero pad to go down and nearest x2 + convolution to go up. What differs between them is
the names of the tensors, where attention sits, whether q, k and v are one convolution (VAR),
three 1x1 convolutions (taming, LlamaGen) or three Linear layers (diffusers). One
:class:`Backbone` describes each; the family modules map the official names onto these.

Module names here follow taming's (``down.{i}.block.{j}.norm1``, ``mid.attn_1.q``, ...).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

GN_EPS = 1e-6  # every family's GroupNorm epsilon


@dataclass(frozen=True)
class Backbone:
    """Shape of an encoder/decoder pair.

    Level ``i`` runs at 1 / 2**i of the image side with ``channels[i]`` channels; the latent
    side is image side / 2**(len(channels) - 1).
    """

    # width after the encoder's first convolution (taming: ch; diffusers: channels[0])
    ch: int = 128
    # width of each resolution level, finest first
    channels: tuple[int, ...] = (128, 128, 256, 256, 512)
    # residual blocks per encoder level (the decoder has one more per level)
    num_res_blocks: int = 2
    # channels of the encoder's output and the decoder's input
    z_channels: int = 256
    # levels whose residual blocks are each followed by self-attention
    attn_levels: tuple[int, ...] = (4,)
    # self-attention between the two middle residual blocks
    mid_attn: bool = True
    # attention projections: "conv" (three 1x1 convs), "qkv" (one fused 1x1 conv) or "linear"
    attn_proj: str = "conv"
    # GroupNorm groups
    groups: int = 32
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "attn_levels", tuple(int(i) for i in self.attn_levels))
        if self.attn_proj not in ("conv", "qkv", "linear"):
            raise ValueError(f"attn_proj must be conv, qkv or linear, got {self.attn_proj!r}")
        widths = (self.ch, *self.channels)
        if not self.channels or any(c < 1 or c % self.groups for c in widths):
            raise ValueError(
                f"every width ({widths}) must be a positive multiple of groups={self.groups}"
            )
        if any(not 0 <= i < len(self.channels) for i in self.attn_levels):
            raise ValueError(f"attn_levels {self.attn_levels} outside 0..{len(self.channels) - 1}")

    @property
    def downsample_factor(self) -> int:
        """f: image pixels per latent position along each side."""
        return 2 ** (len(self.channels) - 1)

    @property
    def attention_stride(self) -> int | None:
        """Image pixels per position of the finest map self-attention runs on (None: no
        attention). Its score matrix grows with the square of that map's positions."""
        strides = [2**i for i in self.attn_levels]
        if self.mid_attn:
            strides.append(self.downsample_factor)
        return min(strides) if strides else None


def group_norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, ch, eps=GN_EPS, affine=True)


class ResnetBlock(nn.Module):
    """x' = shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))); a 1x1 shortcut when
    the width changes."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = group_norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = group_norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """x + proj(softmax(q k^T / sqrt(C)) v): one head over all H*W positions.

    ``proj`` "conv" has q, k, v, proj_out 1x1 convolutions (taming, LlamaGen), "qkv" one
    fused qkv convolution whose output channels are q, then k, then v (VAR), "linear" Linear
    layers on [B, HW, C] (diffusers). All three compute the same function.
    """

    def __init__(self, ch: int, groups: int, proj: str = "conv") -> None:
        super().__init__()
        self.proj = proj
        self.norm = group_norm(ch, groups)
        if proj == "qkv":
            self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        layer = (lambda: nn.Linear(ch, ch)) if proj == "linear" else (lambda: nn.Conv2d(ch, ch, 1))
        if proj != "qkv":
            self.q, self.k, self.v = layer(), layer(), layer()
        self.proj_out = layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x)
        if self.proj == "linear":
            t = h.flatten(2).transpose(1, 2)  # [B, HW, C]
            q, k, v = self.q(t), self.k(t), self.v(t)
        else:
            if self.proj == "qkv":
                q, k, v = self.qkv(h).chunk(3, dim=1)
            else:
                q, k, v = self.q(h), self.k(h), self.v(h)
            q, k, v = (t.flatten(2).transpose(1, 2) for t in (q, k, v))  # [B, HW, C] each
        w = torch.softmax((q @ k.transpose(1, 2)) * C**-0.5, dim=-1)  # [B, HW(q), HW(k)]
        a = w @ v  # [B, HW, C]
        if self.proj == "linear":
            out = self.proj_out(a).transpose(1, 2).reshape(B, C, H, W)
        else:
            out = self.proj_out(a.transpose(1, 2).reshape(B, C, H, W))
        return x + out


class Downsample(nn.Module):
    """Zero pad right and bottom by one, then a stride-2 3x3 convolution (H -> H/2)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 convolution (H -> 2H)."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution level: residual blocks, each optionally followed by attention."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            h = block(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


class _Middle(nn.Module):
    def __init__(self, ch: int, cfg: Backbone) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, cfg.groups)
        self.attn_1 = AttnBlock(ch, cfg.groups, cfg.attn_proj) if cfg.mid_attn else nn.Identity()
        self.block_2 = ResnetBlock(ch, ch, cfg.groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


class Encoder(nn.Module):
    """Images [B, in_channels, H, W] -> [B, z_channels, H/f, W/f] (before any quant_conv)."""

    def __init__(self, cfg: Backbone) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        last = len(cfg.channels) - 1
        for i, cout in enumerate(cfg.channels):
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cin, cout, cfg.groups))
                cin = cout
                if i in cfg.attn_levels:
                    attns.append(AttnBlock(cout, cfg.groups, cfg.attn_proj))
            level = _Level(blocks, attns)
            if i != last:
                level.downsample = Downsample(cout)
            self.down.append(level)
        self.mid = _Middle(cin, cfg)
        self.norm_out = group_norm(cin, cfg.groups)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """[B, z_channels, h, w] -> images [B, out_channels, h*f, w*f] (not clamped).

    ``up[i]`` is level ``i`` (finest first), run coarsest first, as in taming.
    """

    def __init__(self, cfg: Backbone) -> None:
        super().__init__()
        cin = cfg.channels[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _Middle(cin, cfg)
        levels: list[nn.Module] = []
        for i in reversed(range(len(cfg.channels))):
            cout = cfg.channels[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, cout, cfg.groups))
                cin = cout
                if i in cfg.attn_levels:
                    attns.append(AttnBlock(cout, cfg.groups, cfg.attn_proj))
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(cout)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(cin, cfg.groups)
        self.conv_out = nn.Conv2d(cin, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
