"""VQ-VAE image tokenizers: the minimal SimpleVQVAE and the configurable VQVAE.

Images are RGB floats in [-1, 1], NCHW. A size that is not a multiple of f is padded at the
bottom and right by repeating the edge pixels, tokenized, and the reconstruction is cropped
back: an H x W image gives a ceil(H/f) x ceil(W/f) token map.

Token lists follow VAR: ``idx_Bl`` holds one LongTensor [B, l] per scale, coarse to fine. A
single-scale model has one scale, l = h * w tokens in row-major order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqedge.models.quantizer import VectorQuantizer
from vqedge.runtime.config import VQVAEConfig
from vqedge.runtime.inputs import token_map_hw


def check_images(img: torch.Tensor, channels: int = 3) -> None:
    """Raise a ValueError naming what is wrong unless ``img`` is a float [B, channels, H, W]."""
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, {channels}, H, W], got {type(img)}")
    if img.dim() != 4:
        raise ValueError(
            f"images must have rank 4 [B, {channels}, H, W], got shape {tuple(img.shape)}"
        )
    if img.shape[1] != channels:
        raise ValueError(
            f"images must have {channels} channels (RGB, NCHW), got shape {tuple(img.shape)}"
        )
    if not img.is_floating_point():
        raise ValueError(f"images must be floats in [-1, 1], got dtype {img.dtype}")
    if img.numel() == 0:
        raise ValueError(f"images must be non-empty, got shape {tuple(img.shape)}")
    if not torch.isfinite(img).all():
        raise ValueError("images contain NaN or Inf values")


def pad_to_multiple(img: torch.Tensor, f: int) -> torch.Tensor:
    """Pad [B, C, H, W] at the bottom and right by edge replication to multiples of f."""
    H, W = img.shape[-2:]
    ph, pw = -H % f, -W % f
    if ph == 0 and pw == 0:
        return img
    return F.pad(img, (0, pw, 0, ph), mode="replicate")


class VQTokenizerBase(nn.Module):
    """What every vqedge tokenizer offers; subclasses set encoder, quantize, decoder, f.

    The surface the export reads is the same for every exportable model, ours and the
    imported families': ``encoder``, ``quant_conv``, ``quantize``, ``post_quant_conv``,
    ``decoder`` and ``runtime_config``. Ours have no convolutions around the codebook.
    """

    encoder: nn.Module
    quantize: VectorQuantizer
    decoder: nn.Module
    downsample_factor: int

    def __init__(self) -> None:
        super().__init__()
        self.quant_conv = nn.Identity()
        self.post_quant_conv = nn.Identity()

    @property
    def codebook_size(self) -> int:
        return self.quantize.num_embeddings

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] (H, W multiples of f) -> latent [B, C, H/f, W/f]."""
        return self.quant_conv(self.encoder(img))

    def quantize_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent [B, C, h, w] -> indices [B, h, w] (the codebook's lookup)."""
        return self.quantize(latent)[2]

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantized latent [B, C, h, w] -> images [B, 3, h*f, w*f] (clamped in eval)."""
        img = self.decoder(self.post_quant_conv(quantized))
        # Clamp only in eval: in training it would zero the gradient of out-of-range pixels.
        return img if self.training else img.clamp(-1.0, 1.0)

    def decode_indices(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        """Token map [B, h, w] -> images [B, 3, h*f, w*f]."""
        q = F.embedding(idx_Bhw, self.quantize.get_codebook())  # [B, h, w, C]
        return self.decode(q.permute(0, 3, 1, 2).contiguous())

    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images [B, 3, H, W] -> (reconstruction [B, 3, H, W], VQ loss, indices [B, h, w])."""
        check_images(img)
        H, W = img.shape[-2:]
        latent = self.encode(pad_to_multiple(img, self.downsample_factor))
        quantized, loss, indices = self.quantize(latent)
        return self.decode(quantized)[..., :H, :W], loss, indices

    @torch.no_grad()
    def img_to_idxBl(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Images [B, 3, H, W] -> idx_Bl: one LongTensor [B, h*w] (single scale, row-major)."""
        check_images(img)
        latent = self.encode(pad_to_multiple(img, self.downsample_factor))
        _, _, idx_Bhw = self.quantize(latent)
        return [idx_Bhw.flatten(1)]

    @torch.no_grad()
    def idxBl_to_img(
        self, idx_Bl: list[torch.Tensor], hw: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """idx_Bl -> images [B, 3, h*f, w*f] in [-1, 1].

        The last scale is decoded. Its entry may be [B, h, w], or [B, l] with ``hw=(h, w)``;
        [B, l] without ``hw`` is taken as a square map (l must be a perfect square).
        """
        idx_Bhw = self._token_map(idx_Bl, hw)
        return self.decode_indices(idx_Bhw)

    def idxBl_to_var_input(self, idx_Bl: list[torch.Tensor]) -> torch.Tensor:
        """idx_Bl -> the code embeddings of every token as one sequence [B, L, C].

        L is the total token count over scales (h*w for a single scale), in the order of
        idx_Bl: the input of an autoregressive model over the tokens.
        """
        if not idx_Bl:
            raise ValueError("idx_Bl must hold at least one scale")
        e_KC = self.quantize.get_codebook()
        flat = [self._check_idx(idx).flatten(1) for idx in idx_Bl]
        return F.embedding(torch.cat(flat, dim=1), e_KC)

    def _check_idx(self, idx: torch.Tensor) -> torch.Tensor:
        if not isinstance(idx, torch.Tensor) or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError("token indices must be an int64 or int32 tensor")
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.codebook_size):
            raise ValueError(
                f"token indices must lie in [0, {self.codebook_size}), "
                f"got [{int(idx.min())}, {int(idx.max())}]"
            )
        return idx.long()

    def _token_map(self, idx_Bl: list[torch.Tensor], hw: tuple[int, int] | None) -> torch.Tensor:
        if not idx_Bl:
            raise ValueError("idx_Bl must hold at least one scale")
        idx = self._check_idx(idx_Bl[-1])
        if idx.dim() == 3:
            return idx
        if idx.dim() != 2:
            raise ValueError(f"a scale's indices must be [B, l] or [B, h, w], got {idx.shape}")
        return idx.view(idx.shape[0], *token_map_hw(idx.shape[1], hw))


class SimpleVQVAE(VQTokenizerBase):
    """The smallest model: two stride-2 convs down, two transposed convs up (f=4)."""

    def __init__(self, vocab_size: int = 16, embedding_dim: int = 64, hidden_dim: int = 128):
        super().__init__()
        self.vocab_size = vocab_size
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.downsample_factor = 4
        self.encoder = nn.Sequential(
            nn.Conv2d(3, hidden_dim, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_dim, embedding_dim, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
        )
        self.quantize = VectorQuantizer(vocab_size, embedding_dim)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(embedding_dim, hidden_dim, kernel_size=4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(hidden_dim, 3, kernel_size=4, stride=2, padding=1),
        )


class ResBlock(nn.Module):
    """relu(x + conv(relu(conv(x)))): ReLU after each conv fuses into it at export."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


def vector_quantizer(cfg: VQVAEConfig) -> VectorQuantizer:
    """The codebook and lookup a config describes (both model kinds use it)."""
    return VectorQuantizer(
        cfg.codebook_size,
        cfg.code_dim,
        commitment_cost=cfg.commitment_cost,
        ema=cfg.ema,
        decay=cfg.ema_decay,
        dead_code_threshold=cfg.dead_code_threshold,
        l2_normalize=cfg.l2_normalize,
    )


def _stage(ch: int, n: int) -> list[nn.Module]:
    return [ResBlock(ch) for _ in range(n)]


class VQVAE(VQTokenizerBase):
    """Configurable VQ-VAE: convolutions, ReLU and residual blocks only.

    No normalization layers and no SiLU: every activation is a ReLU right after a conv, so
    the exported graph is Conv(+Relu) and Add, which fuse and quantize to int8 well.
    """

    def __init__(self, config: VQVAEConfig | None = None) -> None:
        super().__init__()
        cfg = config or VQVAEConfig()
        self.config = cfg
        self.downsample_factor = cfg.downsample_factor
        chs = [cfg.base_channels * m for m in cfg.channel_mult]

        enc: list[nn.Module] = [nn.Conv2d(cfg.in_channels, chs[0], 3, padding=1), nn.ReLU()]
        for i, ch in enumerate(chs):
            enc += _stage(ch, cfg.num_res_blocks)
            if i + 1 < len(chs):  # [B, ch, H, W] -> [B, ch', H/2, W/2]
                enc += [nn.Conv2d(ch, chs[i + 1], 3, stride=2, padding=1), nn.ReLU()]
        enc += _stage(chs[-1], cfg.num_mid_blocks)
        enc += [nn.Conv2d(chs[-1], cfg.code_dim, 1)]  # latent [B, C, H/f, W/f]
        self.encoder = nn.Sequential(*enc)

        self.quantize = self._make_quantizer(cfg)

        dec: list[nn.Module] = [nn.Conv2d(cfg.code_dim, chs[-1], 3, padding=1), nn.ReLU()]
        dec += _stage(chs[-1], cfg.num_mid_blocks)
        for i in reversed(range(len(chs))):
            dec += _stage(chs[i], cfg.num_res_blocks)
            if i > 0:  # [B, ch, h, w] -> [B, ch', 2h, 2w]
                dec += [nn.ConvTranspose2d(chs[i], chs[i - 1], 4, stride=2, padding=1), nn.ReLU()]
        dec += [nn.Conv2d(chs[0], cfg.in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def runtime_config(self) -> VQVAEConfig:
        """The config a bundle of this model carries: what the runtime reads."""
        return self.config

    def _make_quantizer(self, cfg: VQVAEConfig) -> nn.Module:
        return vector_quantizer(cfg)
