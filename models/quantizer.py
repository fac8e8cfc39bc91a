"""Vector quantizer: nearest-code lookup with a straight-through gradient."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def nearest_index(z: torch.Tensor, e_KC: torch.Tensor, unit: bool) -> torch.Tensor:
    """Index of the nearest code for each vector along the last dim: z [..., C] -> [...] int64.

    The one lookup formula for training, inference and the exported quantizer graph. With
    ``unit`` (z and the codes have unit length) |z - e|^2 = 2 - 2 z.e, so the nearest code is
    the most similar one: a MatMul and an ArgMax, which reads the [..., K] scores once instead
    of the three passes of |z|^2 + |e|^2 - 2 z.e (timings: benchmarks/results/latest.md).
    """
    if unit:
        return (z @ e_KC.t()).argmax(-1)
    # |z|^2 + |e|^2 - 2 z.e: exports as MatMul + ArgMin (torch.cdist exports badly).
    d = z.pow(2).sum(-1, keepdim=True) + e_KC.pow(2).sum(1) - 2.0 * z @ e_KC.t()
    return d.argmin(-1)


class VectorQuantizer(nn.Module):
    """Map each latent vector to its nearest codebook entry.

    Parameters
    ----------
    num_embeddings : int
        K, the number of codes.
    embedding_dim : int
        C, the dimension of one code (the latent's channel count).
    commitment_cost : float
        Weight of ``|z - sg(e)|^2`` in the loss.
    ema : bool
        Learn the codebook by exponential moving averages of the assigned latents (no
        codebook gradient) instead of the codebook loss.
    decay : float
        Decay of the EMA codebook and of the per-code usage counts.
    dead_code_threshold : float
        In training, codes whose EMA usage count falls below this are restarted from random
        latents of the current batch. 0 turns restarts off.
    l2_normalize : bool
        Compare directions only: latents and codes are scaled to unit length before the
        lookup (cosine similarity), which keeps far more codes in use.
    """

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        commitment_cost: float = 0.25,
        ema: bool = False,
        decay: float = 0.99,
        dead_code_threshold: float = 0.0,
        l2_normalize: bool = False,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.commitment_cost = commitment_cost
        self.ema = ema
        self.decay = decay
        self.dead_code_threshold = dead_code_threshold
        self.l2_normalize = l2_normalize
        self.eps = eps
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        self.embedding.weight.data.uniform_(-1.0 / num_embeddings, 1.0 / num_embeddings)
        # EMA count of latents assigned to each code: usage statistics and dead-code detection.
        self.register_buffer("ema_count", torch.zeros(num_embeddings))
        if ema:
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_sum", self.embedding.weight.data.clone())

    def codes(self) -> torch.Tensor:
        """The effective codebook [K, C] (unit rows with l2_normalize), with its gradient."""
        w = self.embedding.weight
        return F.normalize(w, dim=1) if self.l2_normalize else w

    def get_codebook(self) -> torch.Tensor:
        """The codebook, [K, C]: what the decoder receives for each index."""
        return self.codes().detach()

    def project(self, z: torch.Tensor) -> torch.Tensor:
        """The latent as the lookup sees it: unit length along dim 1 with l2_normalize."""
        return F.normalize(z, dim=1) if self.l2_normalize else z

    @property
    def unit_lookup(self) -> bool:
        """Whether the lookup is argmax z.e on unit vectors (with l2_normalize)."""
        return self.l2_normalize

    def nearest(self, z_NC: torch.Tensor) -> torch.Tensor:
        """Index of the nearest code for each row of ``z_NC`` [N, C] -> [N] (int64)."""
        return nearest_index(z_NC, self.codes(), unit=self.l2_normalize)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantize ``z`` [B, C, H, W].

        Returns
        -------
        quantized : Tensor [B, C, H, W]
            The nearest codes, with the straight-through gradient to ``z``.
        loss : Tensor []
            The VQ loss (codebook + commitment, or commitment alone with EMA).
        indices : LongTensor [B, H, W]
        """
        B, C, H, W = z.shape
        if self.embedding_dim != C:
            raise ValueError(f"quantizer expects {self.embedding_dim} channels, got {C}")
        z_NC = self.project(z).permute(0, 2, 3, 1).reshape(-1, C)
        with torch.no_grad():
            idx_N = self.nearest(z_NC.detach())
        if self.training:
            self.learn(z_NC.detach(), idx_N)
        q_NC = F.embedding(idx_N, self.codes())
        commitment = F.mse_loss(z_NC, q_NC.detach())
        if self.ema:
            loss = self.commitment_cost * commitment
        else:
            loss = F.mse_loss(q_NC, z_NC.detach()) + self.commitment_cost * commitment
        # Straight-through: forward value is the code, the gradient flows to z unchanged.
        q_NC = z_NC + (q_NC - z_NC).detach()
        quantized = q_NC.view(B, H, W, C).permute(0, 3, 1, 2).contiguous()
        return quantized, loss, idx_N.view(B, H, W)

    @torch.no_grad()
    def learn(self, z_NC: torch.Tensor, idx_N: torch.Tensor) -> None:
        """One training step of the codebook from latents [N, C] and their codes [N]: usage
        counts, the EMA codebook, then dead-code restarts."""
        self._update(z_NC, idx_N)
        if self.dead_code_threshold > 0:
            self._restart_dead_codes(z_NC)

    @torch.no_grad()
    def _update(self, z_NC: torch.Tensor, idx_N: torch.Tensor) -> None:
        onehot_NK = F.one_hot(idx_N, self.num_embeddings).to(z_NC.dtype)
        count_K = onehot_NK.sum(0)
        self.ema_count.mul_(self.decay).add_(count_K, alpha=1.0 - self.decay)
        if not self.ema:
            return
        self.ema_sum.mul_(self.decay).add_(onehot_NK.t() @ z_NC, alpha=1.0 - self.decay)
        # Laplace smoothing keeps unused codes from dividing by zero.
        n = self.ema_count.sum()
        smoothed_K = (self.ema_count + self.eps) / (n + self.num_embeddings * self.eps) * n
        self.embedding.weight.data.copy_(self.ema_sum / smoothed_K[:, None])

    @torch.no_grad()
    def _restart_dead_codes(self, z_NC: torch.Tensor) -> None:
        dead_K = self.ema_count < self.dead_code_threshold
        n_dead = int(dead_K.sum())
        if n_dead == 0:
            return
        pick = torch.randint(0, z_NC.shape[0], (n_dead,), device=z_NC.device)
        new_DC = z_NC[pick]
        # A restarted code starts exactly at the threshold: unless latents pick it in the
        # next step it is restarted again, so no code stays idle while the encoder moves.
        grace = self.dead_code_threshold
        self.embedding.weight.data[dead_K] = new_DC
        self.ema_count[dead_K] = grace
        if self.ema:
            self.ema_sum[dead_K] = new_DC * grace
