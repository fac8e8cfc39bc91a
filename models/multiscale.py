"""VAR's multi-scale residual quantizer and the multi-scale VQ-VAE around it.

One shared codebook quantizes the latent at every scale of ``patch_nums``, coarse to fine:
the residual is area-downsampled to pn x pn, looked up, the codes are bicubic-upsampled back,
refined by a Phi convolution (``h * (1 - r) + conv(h) * r``; num_phi of them, shared across
scales by nearest tick) and added to f_hat; the residual loses what f_hat gained.

Both resizes are linear and separable, so each is a fixed matrix per scale: area
downsampling is ``D @ f @ D.T`` with D [pn, side], bicubic upsampling ``U @ h @ U.T`` with
U [side, pn]. The matrices are made by F.interpolate itself (applied to the identity), so
they are VAR's resizes, and the exported graph holds the same constants and MatMuls as this
module: exact at the one latent side the model accepts (pn[-1]), where a traced dynamic
``interpolate`` is not (see the export).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vqedge.models.lookup_free import FSQVQVAE
from vqedge.models.vqvae import VQVAE, check_images, vector_quantizer
from vqedge.runtime.config import VQVAEConfig


def resize_matrix(n_in: int, n_out: int, mode: str) -> torch.Tensor:
    """[n_out, n_in]: F.interpolate(mode) along one axis, as a matrix (float32).

    Computed in float64 from F.interpolate on the identity; ``mode`` is "area" or
    "bicubic" (align_corners=False, no antialias, PyTorch's cubic coefficient -0.75).
    """
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, 1, n_in, 1)  # n_in basis signals
    kw = {} if mode == "area" else {"align_corners": False}
    out = F.interpolate(eye, size=(n_out, 1), mode=mode, **kw)  # [n_in, 1, n_out, 1]
    return out[:, 0, :, 0].t().contiguous().float()


def phi_index(si: int, num_scales: int, num_phi: int) -> int:
    """VAR's PhiPartiallyShared: the Phi whose tick is nearest to si / (SN - 1)."""
    ticks = np.linspace(1 / 3 / num_phi, 1 - 1 / 3 / num_phi, num_phi)
    at = si / (num_scales - 1) if num_scales > 1 else 0.0
    return int(np.argmin(np.abs(ticks - at)))


class Phi(nn.Conv2d):
    """h * (1 - r) + conv3x3(h) * r: VAR's refinement of each scale's upsampled codes."""

    def __init__(self, channels: int, resi_ratio: float) -> None:
        super().__init__(channels, channels, 3, padding=1)
        self.resi_ratio = abs(resi_ratio)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h * (1.0 - self.resi_ratio) + super().forward(h) * self.resi_ratio


class MultiScaleQuantizer(nn.Module):
    """Residual quantization over ``patch_nums`` scales with one codebook (VAR).

    The codebook, its EMA learning and dead-code restarts are a VectorQuantizer's; this
    module runs the scale loop around its nearest-code lookup.
    """

    def __init__(self, config: VQVAEConfig) -> None:
        super().__init__()
        if not config.patch_nums:
            raise ValueError("MultiScaleQuantizer needs config.patch_nums")
        self.patch_nums = config.patch_nums
        self.side = config.patch_nums[-1]
        self.vq = vector_quantizer(config)  # l2_normalize is refused with patch_nums
        C, SN = config.code_dim, len(self.patch_nums)
        self.phis = nn.ModuleList(Phi(C, config.quant_resi) for _ in range(config.num_phi))
        self.phi_of_scale = [phi_index(si, SN, config.num_phi) for si in range(SN)]
        for si, pn in enumerate(self.patch_nums[:-1]):
            # derived from the config: kept out of checkpoints
            self.register_buffer(
                f"down{si}", resize_matrix(self.side, pn, "area"), persistent=False
            )
            self.register_buffer(
                f"up{si}", resize_matrix(pn, self.side, "bicubic"), persistent=False
            )

    @property
    def num_embeddings(self) -> int:
        return self.vq.num_embeddings

    @property
    def embedding_dim(self) -> int:
        return self.vq.embedding_dim

    def get_codebook(self) -> torch.Tensor:
        return self.vq.get_codebook()

    def down(self, f: torch.Tensor, si: int) -> torch.Tensor:
        """Area-downsample [B, C, side, side] -> [B, C, pn, pn] (identity at the last scale)."""
        if si == len(self.patch_nums) - 1:
            return f
        D = getattr(self, f"down{si}")  # [pn, side]
        return D @ f @ D.t()

    def up_phi(self, e_BChw: torch.Tensor, si: int) -> torch.Tensor:
        """Codes [B, C, pn, pn] -> this scale's contribution to f_hat [B, C, side, side]."""
        if si != len(self.patch_nums) - 1:
            U = getattr(self, f"up{si}")  # [side, pn]
            e_BChw = U @ e_BChw @ U.t()
        return self.phis[self.phi_of_scale[si]](e_BChw)

    def embed(self, idx_Bl: torch.Tensor, si: int) -> torch.Tensor:
        """One scale's tokens [B, pn*pn] -> their codes [B, C, pn, pn]."""
        pn = self.patch_nums[si]
        e = F.embedding(idx_Bl, self.get_codebook())  # [B, pn*pn, C]
        return e.transpose(1, 2).reshape(idx_Bl.shape[0], -1, pn, pn)

    def check_latent(self, f: torch.Tensor) -> None:
        if tuple(f.shape[1:]) != (self.embedding_dim, self.side, self.side):
            raise ValueError(
                f"multi-scale quantizer expects latents [B, {self.embedding_dim}, {self.side}, "
                f"{self.side}], got {tuple(f.shape)}"
            )

    def scale_loop(
        self, f: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Quantize ``f`` [B, C, side, side] scale by scale, coarse to fine.

        Returns per scale: the tokens [B, pn*pn], the residual vectors looked up [N, C] and
        the contribution to f_hat [B, C, side, side] (with the Phi's gradient; the residual
        itself carries none). The one loop behind training, inference and the exported graph.
        """
        self.check_latent(f)
        B, C = f.shape[:2]
        f_rest = f.detach()
        idx_Bl, z_all, h_all = [], [], []
        for si, pn in enumerate(self.patch_nums):
            z_NC = self.down(f_rest, si).permute(0, 2, 3, 1).reshape(-1, C)
            idx = self.vq.nearest(z_NC).view(B, pn * pn)
            h = self.up_phi(self.embed(idx, si), si)
            f_rest = f_rest - h.detach()
            idx_Bl.append(idx)
            z_all.append(z_NC)
            h_all.append(h)
        return idx_Bl, z_all, h_all

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize ``f`` [B, C, side, side] at every scale.

        Returns
        -------
        f_hat : Tensor [B, C, side, side]
            Sum of the scales' contributions, with the straight-through gradient to ``f``.
        loss : Tensor []
            VAR's loss, the mean over scales of ``beta * |sg(f_hat) - f|^2 + |f_hat - sg(f)|^2``
            (the second term trains the Phi convolutions; with EMA there is no codebook grad).
        idx_BL : LongTensor [B, L]
            Every scale's tokens, concatenated coarse to fine (L = sum of pn^2).
        """
        idx_Bl, z_all, h_all = self.scale_loop(f)
        f_nograd = f.detach()
        f_hat = torch.zeros_like(f_nograd)
        loss = f.new_zeros(())
        for h in h_all:
            f_hat = f_hat + h
            loss = loss + self.vq.commitment_cost * F.mse_loss(f_hat.detach(), f)
            loss = loss + F.mse_loss(f_hat, f_nograd)
        if self.training:
            self.vq.learn(torch.cat(z_all), torch.cat([i.reshape(-1) for i in idx_Bl]))
        f_hat_st = (f_hat.detach() - f_nograd) + f  # straight-through to the encoder
        return f_hat_st, loss / len(self.patch_nums), torch.cat(idx_Bl, dim=1)

    @torch.no_grad()
    def f_to_idxBl(self, f: torch.Tensor) -> list[torch.Tensor]:
        """Latent [B, C, side, side] -> idx_Bl: one LongTensor [B, pn*pn] per scale."""
        return self.scale_loop(f)[0]

    def idxBl_to_fhat_each(self, idx_Bl: list[torch.Tensor]) -> list[torch.Tensor]:
        """f_hat after each given scale: [B, C, side, side] per scale (a prefix is fine)."""
        f_hat, out = None, []
        for si, idx in enumerate(idx_Bl):
            h = self.up_phi(self.embed(idx, si), si)
            f_hat = h if f_hat is None else f_hat + h
            out.append(f_hat)
        return out

    def idxBl_to_var_input(self, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """VAR's teacher-forcing input [B, L - pn_1^2, C].

        f_hat accumulated over scales 1..K-1, area-downsampled after scale k to the side of
        scale k+1 and flattened row-major: the input from which a next-scale model predicts
        scale k+1.
        """
        f_hat_each = self.idxBl_to_fhat_each(idx_Bl[: len(self.patch_nums) - 1])
        nxt = []
        for si, f_hat in enumerate(f_hat_each):
            x = self.down(f_hat, si + 1)  # [B, C, pn_next, pn_next]
            nxt.append(x.flatten(2).transpose(1, 2))
        if not nxt:
            B = idx_Bl[0].shape[0]
            return self.get_codebook().new_zeros(B, 0, self.embedding_dim)
        return torch.cat(nxt, dim=1)


class MultiScaleVQVAE(VQVAE):
    """A VQVAE whose quantizer gives VAR's next-scale token maps.

    It accepts one image size, ``config.resolution`` square (pn[-1] * f): the scales'
    resizes are fixed to that side, as in VAR.
    """

    quantize: MultiScaleQuantizer

    def __init__(self, config: VQVAEConfig) -> None:
        if not config.patch_nums:
            raise ValueError("MultiScaleVQVAE needs config.patch_nums (use VQVAE otherwise)")
        super().__init__(config)
        self.patch_nums = config.patch_nums

    def _make_quantizer(self, cfg: VQVAEConfig) -> nn.Module:
        return MultiScaleQuantizer(cfg)

    def check_side(self, img: torch.Tensor) -> None:
        check_images(img)
        R = self.config.resolution
        if tuple(img.shape[-2:]) != (R, R):
            raise ValueError(
                f"this multi-scale tokenizer accepts {R}x{R} images only (scales "
                f"{list(self.patch_nums)} x f={self.downsample_factor}), got "
                f"{img.shape[-2]}x{img.shape[-1]}; resize first, e.g. "
                "vqedge.runtime.images.fit_square"
            )

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images [B, 3, R, R] -> (reconstruction, VQ loss, tokens [B, L])."""
        self.check_side(img)
        f_hat, loss, idx_BL = self.quantize(self.encode(img))
        return self.decode(f_hat), loss, idx_BL

    @torch.no_grad()
    def img_to_idxBl(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Images [B, 3, R, R] -> idx_Bl: one LongTensor [B, pn*pn] per scale, coarse to fine."""
        self.check_side(img)
        return self.quantize.f_to_idxBl(self.encode(img))

    def _check_scales(self, idx_Bl: list[torch.Tensor], need: tuple[int, int]) -> list:
        if not isinstance(idx_Bl, (list, tuple)) or not need[0] <= len(idx_Bl) <= need[1]:
            got = len(idx_Bl) if isinstance(idx_Bl, (list, tuple)) else type(idx_Bl).__name__
            raise ValueError(
                f"idx_Bl must be a list of {need[0]} to {need[1]} scales "
                f"(patch_nums {list(self.patch_nums)}), got {got}"
            )
        out = []
        for si, idx in enumerate(idx_Bl):
            idx = self._check_idx(idx)
            pn = self.patch_nums[si]
            if idx.dim() == 3:
                idx = idx.flatten(1)
            if idx.dim() != 2 or idx.shape[1] != pn * pn:
                raise ValueError(
                    f"scale {si} must hold [B, {pn * pn}] (or [B, {pn}, {pn}]) tokens, "
                    f"got {tuple(idx_Bl[si].shape)}"
                )
            out.append(idx)
        if len({int(i.shape[0]) for i in out}) > 1:
            raise ValueError("every scale of idx_Bl must have the same batch size")
        return out

    @torch.no_grad()
    def idxBl_to_img(
        self, idx_Bl: list[torch.Tensor], hw: tuple[int, int] | None = None, last_one: bool = True
    ) -> torch.Tensor | list[torch.Tensor]:
        """idx_Bl (all scales or a prefix) -> images [B, 3, R, R] in [-1, 1].

        ``last_one=False`` gives the progressive reconstructions, one per given scale.
        ``hw`` exists for the single-scale signature; the side is fixed here.
        """
        idx_Bl = self._check_scales(idx_Bl, (1, len(self.patch_nums)))
        f_hat_each = self.quantize.idxBl_to_fhat_each(idx_Bl)
        if last_one:
            return self.decode(f_hat_each[-1])
        return [self.decode(f) for f in f_hat_each]

    def decode_indices(self, idx_BL: torch.Tensor) -> torch.Tensor:
        """Concatenated tokens [B, L] -> images [B, 3, R, R]."""
        return self.idxBl_to_img(self.config.split_scales(idx_BL))

    @torch.no_grad()
    def idxBl_to_var_input(self, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """idx_Bl (every scale; the last is not used) -> VAR's input [B, L - pn_1^2, C]."""
        SN = len(self.patch_nums)
        return self.quantize.idxBl_to_var_input(self._check_scales(idx_Bl, (SN - 1, SN)))


def build_model(config: VQVAEConfig) -> VQVAE:
    """The model a config describes: MultiScaleVQVAE with patch_nums, FSQVQVAE with
    fsq_levels, else VQVAE."""
    if config.fsq_levels:
        return FSQVQVAE(config)
    return MultiScaleVQVAE(config) if config.patch_nums else VQVAE(config)
