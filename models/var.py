"""VAR's multi-scale VQVAE (FoundationVision/VAR ``models/vqvae.py``), from its raw state dict.

The released ``vae_ch160v4096z32.pth`` is ``torch.save(vae.state_dict())``: 324 tensors,
including the training statistic ``quantize.ema_vocab_hit_SV`` [scales, V]. Its backbone is
taming's with ch 160, ch_mult (1, 1, 2, 2, 4), attention at the 16x16 level through one
fused ``qkv`` convolution, z_channels = Cvae = 32 and 3x3 quant_conv / post_quant_conv. The
quantizer is vqedge's MultiScaleQuantizer (the same residual scale loop, with VAR's
area-down / bicubic-up resizes as fixed matrices, exact when exported), holding VAR's
codebook and its four shared Phi convolutions.

Names here that differ from VAR's: ``quantize.vq.embedding`` (VAR: ``quantize.embedding``)
and ``quantize.phis.{i}`` (VAR: ``quantize.quant_resi.qresi_ls.{i}``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vqedge.models.blocks import Backbone, Decoder, Encoder
from vqedge.models.import_checkpoint import (
    Source,
    load_official,
    preset_config,
    read_checkpoint,
    source_name,
)
from vqedge.models.multiscale import MultiScaleQuantizer
from vqedge.models.vqvae import check_images
from vqedge.runtime.config import VQVAEConfig

FAMILY = "VAR VQVAE"
PATCH_NUMS_256 = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
PATCH_NUMS_512 = (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
# The Phi each of ten scales uses with four shared Phis. VAR picks the Phi whose tick
# (linspace(1/12, 11/12, 4)) is nearest to si / 9; scales 2 and 7 lie exactly between two
# ticks, and float rounding in VAR's numpy picks the later one. Stated, not recomputed.
PHI_OF_SCALE_10x4 = (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
# our quantizer's EMA usage counts: VAR's files have no such tensor
OURS_ONLY = ("quantize.vq.ema_count",)


@dataclass(frozen=True)
class VARConfig:
    """VAR's VQVAE arguments (build_vae_var), in our terms."""

    # V: the number of codes
    vocab_size: int = 4096
    # Cvae: code dimension = z_channels
    z_channels: int = 32
    # ch: build_vae_var uses 160 (the class default is 128)
    ch: int = 160
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    # side of each scale's token map, coarse to fine; the last is the latent side
    patch_nums: tuple[int, ...] = PATCH_NUMS_256
    # share_quant_resi: Phi convolutions shared across the scales
    num_phi: int = 4
    # quant_resi: Phi blend ratio
    quant_resi: float = 0.5
    # quant_conv_ks
    quant_conv_kernel: int = 3

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "patch_nums", tuple(self.patch_nums))
        if self.num_phi < 2 or abs(self.quant_resi) < 1e-6:
            raise ValueError(
                f"{FAMILY}: only partially shared Phis (share_quant_resi >= 2, quant_resi != 0) "
                f"are supported, got num_phi={self.num_phi}, quant_resi={self.quant_resi}"
            )

    @property
    def backbone(self) -> Backbone:
        return Backbone(
            ch=self.ch,
            channels=tuple(self.ch * m for m in self.ch_mult),
            num_res_blocks=self.num_res_blocks,
            z_channels=self.z_channels,
            attn_levels=(len(self.ch_mult) - 1,),
            attn_proj="qkv",
        )

    @property
    def quantizer_config(self) -> VQVAEConfig:
        """What MultiScaleQuantizer reads (codebook, scales, Phis; no EMA, no restarts) and
        what a bundle of the model records for the runtime (f, K, C, patch_nums, resolution)."""
        return VQVAEConfig(
            base_channels=self.ch,
            channel_mult=self.ch_mult,
            num_res_blocks=self.num_res_blocks,
            codebook_size=self.vocab_size,
            code_dim=self.z_channels,
            ema=False,
            dead_code_threshold=0.0,
            patch_nums=self.patch_nums,
            quant_resi=self.quant_resi,
            num_phi=self.num_phi,
        )

    @property
    def resolution(self) -> int:
        """The one image side the model takes: patch_nums[-1] * f."""
        return self.patch_nums[-1] * 2 ** (len(self.ch_mult) - 1)


PRESETS = {"256": VARConfig(), "512": VARConfig(patch_nums=PATCH_NUMS_512)}


def phi_of_scales(num_scales: int, num_phi: int) -> tuple[int, ...]:
    """The Phi index of each scale, by VAR's PhiPartiallyShared rule."""
    if (num_scales, num_phi) == (10, 4):
        return PHI_OF_SCALE_10x4
    K = num_phi
    lo = 1 / 3 / K if K == 4 else 1 / 2 / K  # VAR's ticks
    ticks = np.linspace(lo, 1 - lo, K)
    at = [si / (num_scales - 1) if num_scales > 1 else 0.0 for si in range(num_scales)]
    return tuple(int(np.argmin(np.abs(ticks - a))) for a in at)


class VARVQVAE(nn.Module):
    """VAR's VQVAE for inference, with VAR's method names and meanings.

    Images are [B, 3, R, R] floats in [-1, 1], R = patch_nums[-1] * 16. Token lists
    ``idx_Bl`` hold one LongTensor [B, pn*pn] per scale, coarse to fine.
    """

    family = FAMILY

    def __init__(self, config: VARConfig | None = None) -> None:
        super().__init__()
        cfg = config or PRESETS["256"]
        self.config = cfg
        self.patch_nums = cfg.patch_nums
        self.resolution = cfg.resolution
        self.Cvae, self.V = cfg.z_channels, cfg.vocab_size
        k = cfg.quant_conv_kernel
        self.encoder = Encoder(cfg.backbone)
        self.quant_conv = nn.Conv2d(self.Cvae, self.Cvae, k, padding=k // 2)
        self.quantize = MultiScaleQuantizer(cfg.quantizer_config)
        self.quantize.phi_of_scale = list(phi_of_scales(len(cfg.patch_nums), cfg.num_phi))
        # VAR's per-scale code usage statistic, kept so the file round-trips; unused here
        self.quantize.register_buffer(
            "ema_vocab_hit_SV", torch.zeros(len(cfg.patch_nums), cfg.vocab_size)
        )
        self.post_quant_conv = nn.Conv2d(self.Cvae, self.Cvae, k, padding=k // 2)
        self.decoder = Decoder(cfg.backbone)
        self.eval()

    @property
    def codebook_size(self) -> int:
        return self.V

    @property
    def runtime_config(self) -> VQVAEConfig:
        """What a bundle of this model tells the runtime (f, K, C, patch_nums, resolution), in
        VAR's numbers; its training fields do not apply (no EMA)."""
        cfg = self.config.quantizer_config
        if cfg.resolution != self.resolution:
            raise ValueError(
                f"{FAMILY}: resolution {self.resolution} does not match patch_nums "
                f"{list(self.patch_nums)} x f={cfg.downsample_factor}"
            )
        return cfg

    # ---- the three graphs an export needs: image -> f, f -> idx_Bl, f_hat -> image ----
    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, R, R] -> f [B, Cvae, pn[-1], pn[-1]] (quant_conv applied)."""
        check_images(img)
        R = self.resolution
        if tuple(img.shape[-2:]) != (R, R):
            raise ValueError(
                f"{FAMILY} with patch_nums {list(self.patch_nums)} takes {R}x{R} images, "
                f"got {img.shape[-2]}x{img.shape[-1]}"
            )
        return self.quant_conv(self.encoder(img))

    def decode(self, f_hat: torch.Tensor) -> torch.Tensor:
        """f_hat [B, Cvae, pn[-1], pn[-1]] -> images [B, 3, R, R] clamped to [-1, 1]."""
        return self.decoder(self.post_quant_conv(f_hat)).clamp(-1.0, 1.0)

    fhat_to_img = decode

    # ---- VAR's API ----
    @torch.no_grad()
    def img_to_idxBl(self, inp_img_no_grad: torch.Tensor) -> list[torch.Tensor]:
        """Images -> idx_Bl: one LongTensor [B, pn*pn] per scale (VAR's img_to_idxBl)."""
        return self.quantize.f_to_idxBl(self.encode(inp_img_no_grad))

    @torch.no_grad()
    def f_to_idxBl_or_fhat(self, f: torch.Tensor, to_fhat: bool) -> list[torch.Tensor]:
        """f -> per scale the tokens [B, pn*pn], or with ``to_fhat`` f_hat after that scale."""
        idx_Bl, _, h_all = self.quantize.scale_loop(f)
        if not to_fhat:
            return idx_Bl
        return list(torch.stack(h_all).cumsum(0).unbind(0))

    def _check_idxBl(self, idx_Bl: list[torch.Tensor], lo: int) -> list[torch.Tensor]:
        SN = len(self.patch_nums)
        if not isinstance(idx_Bl, (list, tuple)) or not lo <= len(idx_Bl) <= SN:
            raise ValueError(f"idx_Bl must be a list of {lo} to {SN} scales")
        out = []
        for si, idx in enumerate(idx_Bl):
            pn = self.patch_nums[si]
            if idx.dim() == 3:
                idx = idx.flatten(1)
            if idx.dim() != 2 or idx.shape[1] != pn * pn or idx.is_floating_point():
                raise ValueError(f"scale {si} must be int [B, {pn * pn}], got {tuple(idx.shape)}")
            if idx.numel() and (idx.min() < 0 or idx.max() >= self.V):
                raise ValueError(f"scale {si}: token indices must lie in [0, {self.V})")
            out.append(idx.long())
        return out

    def idxBl_to_h(self, idx_Bl: list[torch.Tensor]) -> list[torch.Tensor]:
        """idx_Bl -> ms_h_BChw: each scale's codes [B, Cvae, pn, pn] (VAR's embedding step)."""
        return [self.quantize.embed(idx, si) for si, idx in enumerate(self._check_idxBl(idx_Bl, 1))]

    def embed_to_fhat(
        self, ms_h_BChw: list[torch.Tensor], all_to_max_scale: bool = True, last_one: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Codes per scale -> f_hat after each scale (or only the last), at the latent side.

        Every scale but the last is bicubic-upsampled to pn[-1] (a fixed matrix), passed
        through its Phi and summed, as VAR's embed_to_fhat(all_to_max_scale=True).
        """
        if not all_to_max_scale:
            raise ValueError(f"{FAMILY}: only all_to_max_scale=True (VAR's inference path)")
        f_hat, out = None, []
        for si, h in enumerate(ms_h_BChw):
            h = self.quantize.up_phi(h, si)
            f_hat = h if f_hat is None else f_hat + h
            out.append(f_hat)
        return out[-1] if last_one else out

    @torch.no_grad()
    def idxBl_to_img(
        self, ms_idx_Bl: list[torch.Tensor], same_shape: bool = True, last_one: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """idx_Bl (every scale or a prefix) -> images [B, 3, R, R] in [-1, 1].

        ``last_one=False`` gives one image per given scale (VAR's progressive decode).
        """
        f_hats = self.embed_to_fhat(self.idxBl_to_h(ms_idx_Bl), same_shape, last_one=False)
        return self.decode(f_hats[-1]) if last_one else [self.decode(f) for f in f_hats]

    @torch.no_grad()
    def idxBl_to_var_input(self, gt_ms_idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """idx_Bl (all scales; the last is not read) -> teacher-forcing input [B, L - 1, Cvae].

        [B, 679, 32] for the 256 preset: f_hat after each scale k < K, area-downsampled to
        scale k+1's side and flattened row-major.
        """
        SN = len(self.patch_nums)
        return self.quantize.idxBl_to_var_input(self._check_idxBl(gt_ms_idx_Bl, SN - 1))

    @torch.no_grad()
    def img_to_reconstructed_img(
        self, x: torch.Tensor, last_one: bool = False
    ) -> torch.Tensor | list[torch.Tensor]:
        """Images -> reconstructions after each scale (or the last only)."""
        f_hats = self.f_to_idxBl_or_fhat(self.encode(x), to_fhat=True)
        return self.decode(f_hats[-1]) if last_one else [self.decode(f) for f in f_hats]

    def get_next_autoregressive_input(
        self, si: int, f_hat: torch.Tensor, h_BChw: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """VAR's sampling step: add scale ``si``'s codes [B, Cvae, pn, pn] to f_hat; return
        (f_hat, the next step's input: f_hat at scale si+1's side)."""
        f_hat = f_hat + self.quantize.up_phi(h_BChw, si)
        return f_hat, self.quantize.down(f_hat, min(si + 1, len(self.patch_nums) - 1))

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Images -> (reconstruction from every scale, idx_Bl)."""
        idx_Bl, _, h_all = self.quantize.scale_loop(self.encode(img))
        return self.decode(torch.stack(h_all).sum(0)), idx_Bl


def to_official(name: str) -> str:
    """Our state_dict name -> VAR's."""
    name = re.sub(r"^quantize\.vq\.embedding\.", "quantize.embedding.", name)
    return re.sub(r"^quantize\.phis\.", "quantize.quant_resi.qresi_ls.", name)


def load_var(
    source: Source, preset: str | None = "256", config: VARConfig | None = None
) -> VARVQVAE:
    """A VARVQVAE with the weights of VAR's raw state dict (``vae_ch160v4096z32.pth``).

    Parameters
    ----------
    source : path or mapping
        The ``.pth`` file (``torch.save(state_dict)``) or the state dict.
    preset : str
        ``256`` (patch nums 1..16, also None) or ``512`` (1..32); the same weights serve
        both. Ignored when ``config`` is given.

    Raises
    ------
    CheckpointError
        A file of another family, truncated, or with a missing, unexpected or reshaped key.
    """
    cfg = preset_config(FAMILY, PRESETS, preset, config, default="256")
    tensors = read_checkpoint(source, FAMILY)
    model = VARVQVAE(cfg)
    load_official(model, tensors, FAMILY, to_official, source_name(source), ours_only=OURS_ONLY)
    return model
