"""Single-scale imported tokenizers: encoder, quant_conv, codebook, post_quant_conv, decoder.

taming's VQGAN, LlamaGen's VQ models and diffusers' VQModel all have this shape and the same
lookup, ``argmin_k |z|^2 + |e_k|^2 - 2 z.e_k`` (LlamaGen on l2-normalised z and codes;
diffusers writes it as ``argmin cdist``, the same distances up to the square root).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqedge.models.blocks import Backbone, Decoder, Encoder
from vqedge.models.quantizer import nearest_index
from vqedge.models.vqvae import check_images
from vqedge.runtime.config import VQVAEConfig


class Codebook(nn.Module):
    """K codes of dimension C and the family's nearest-code lookup (inference only).

    Parameters
    ----------
    num_embeddings, embedding_dim : int
        K and C.
    l2_normalize : bool
        LlamaGen: latents and codes are scaled to unit length before the lookup, and the
        decoder receives the unit codes.
    usage_buffer : int
        Length of LlamaGen's ``codebook_used`` training buffer kept in its checkpoints
        (0: none). Loaded so that every tensor of the file is accounted for; unused here.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        l2_normalize: bool = False,
        usage_buffer: int = 0,
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.l2_normalize = l2_normalize
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        if usage_buffer:
            self.register_buffer("codebook_used", torch.zeros(usage_buffer))

    # the families compare |z|^2 + |e|^2 - 2 z.e even on unit vectors (LlamaGen): the exported
    # lookup computes it the same way, so that near ties fall as they do in PyTorch
    unit_lookup = False

    def get_codebook(self) -> torch.Tensor:
        """[K, C]: what the decoder receives for each index (unit rows with l2_normalize)."""
        w = self.embedding.weight.detach()
        return F.normalize(w, dim=1) if self.l2_normalize else w

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """The latent [B, C, h, w] as the lookup sees it (unit length along C with l2)."""
        return F.normalize(z, dim=1) if self.l2_normalize else z

    def nearest(self, z_NC: torch.Tensor) -> torch.Tensor:
        """[N, C] projected latents -> [N] int64: argmin |z|^2 + |e|^2 - 2 z.e, as the
        family computes it (also with unit vectors, where argmax z.e is equal but for ties)."""
        return nearest_index(z_NC, self.get_codebook(), unit=False)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """Latent [B, C, h, w] -> indices [B, h, w]."""
        B, C, h, w = z.shape
        if self.embedding_dim != C:
            raise ValueError(f"latent has {C} channels, the codebook {self.embedding_dim}")
        z_NC = self.project(z).permute(0, 2, 3, 1).reshape(-1, C)
        return self.nearest(z_NC).view(B, h, w)

    def embed(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        """Indices [B, h, w] -> codes [B, C, h, w]."""
        return F.embedding(idx_Bhw, self.get_codebook()).permute(0, 3, 1, 2).contiguous()


class TokenMapModel(nn.Module):
    """What a model with one token map per image offers around its five parts (``encoder``,
    ``quant_conv``, ``quantize``, ``post_quant_conv``, ``decoder``): the quantizer is anything
    with ``indices`` (latent -> [B, h, w]), ``embed`` (indices -> codes) and
    ``num_embeddings``, a codebook or a lookup-free one (``vqedge.models.lookup_free``).

    Images are RGB floats in [-1, 1], NCHW, with sides that are multiples of f. Subclasses
    set the parts, ``downsample_factor`` and ``in_channels``, and name their family for
    error messages.
    """

    family = "single-scale VQ"
    downsample_factor: int
    in_channels: int

    @property
    def codebook_size(self) -> int:
        return self.quantize.num_embeddings

    def check_images(self, img: torch.Tensor) -> None:
        check_images(img, self.in_channels)
        f = self.downsample_factor
        if img.shape[-2] % f or img.shape[-1] % f:
            raise ValueError(
                f"{self.family} takes image sides that are multiples of f={f}, got "
                f"{img.shape[-2]}x{img.shape[-1]}"
            )

    def encode(self, img: torch.Tensor) -> torch.Tensor:
        """Images [B, 3, H, W] -> latent [B, C, H/f, W/f] (after quant_conv, before lookup)."""
        self.check_images(img)
        return self.quant_conv(self.encoder(img))

    def quantize_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Latent [B, C, h, w] -> indices [B, h, w] (the family's lookup)."""
        return self.quantize.indices(latent)

    def decode(self, quantized: torch.Tensor) -> torch.Tensor:
        """Codes [B, C, h, w] -> images [B, 3, h*f, w*f], clamped to [-1, 1]."""
        return self.decoder(self.post_quant_conv(quantized)).clamp(-1.0, 1.0)

    def decode_indices(self, idx_Bhw: torch.Tensor) -> torch.Tensor:
        """Indices [B, h, w] -> images [B, 3, h*f, w*f] in [-1, 1]."""
        if idx_Bhw.dim() != 3 or idx_Bhw.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"indices must be int [B, h, w], got {tuple(idx_Bhw.shape)}")
        K = self.codebook_size
        if idx_Bhw.numel() and (idx_Bhw.min() < 0 or idx_Bhw.max() >= K):
            raise ValueError(f"indices must lie in [0, {K})")
        return self.decode(self.quantize.embed(idx_Bhw.long()))

    @torch.no_grad()
    def img_to_idxBl(self, img: torch.Tensor) -> list[torch.Tensor]:
        """Images -> [indices [B, h*w]] (one scale, row-major), as vqedge's own models."""
        return [self.quantize_latent(self.encode(img)).flatten(1)]

    @torch.no_grad()
    def forward(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, 3, H, W] -> (reconstruction [B, 3, H, W], indices [B, h, w])."""
        idx = self.quantize_latent(self.encode(img))
        return self.decode(self.quantize.embed(idx)), idx


class SingleScaleVQ(TokenMapModel):
    """encoder, quant_conv, codebook, post_quant_conv, decoder: one token map per image.

    Subclasses build it from their family's config.
    """

    def __init__(self, backbone: Backbone, codebook: Codebook, quant_conv_kernel: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.downsample_factor = backbone.downsample_factor
        self.in_channels = backbone.in_channels
        C, Z, k = codebook.embedding_dim, backbone.z_channels, quant_conv_kernel
        self.encoder = Encoder(backbone)
        self.quant_conv = nn.Conv2d(Z, C, k, padding=k // 2)
        self.quantize = codebook
        self.post_quant_conv = nn.Conv2d(C, Z, k, padding=k // 2)
        self.decoder = Decoder(backbone)
        self.eval()

    @property
    def runtime_config(self) -> VQVAEConfig:
        """What a bundle of this model tells the runtime: f, K, code dim and the lookup (the
        other fields describe the network's shape as closely as VQVAEConfig can)."""
        b, cb = self.backbone, self.quantize
        return VQVAEConfig(
            in_channels=b.in_channels,
            base_channels=b.ch,
            channel_mult=tuple(max(1, c // b.ch) for c in b.channels),
            num_res_blocks=b.num_res_blocks,
            num_mid_blocks=2,
            codebook_size=cb.num_embeddings,
            code_dim=cb.embedding_dim,
            ema=False,
            dead_code_threshold=0.0,
            l2_normalize=cb.l2_normalize,
        )
