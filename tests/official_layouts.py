"""The official checkpoint layouts of the imported families, written from their reference code.

Independent of vqedge's modules on purpose: the tests save random tensors under these names
and shapes, in the file format each project uses, and check that our loaders take them.
Sources: FoundationVision/VAR models/basic_vae.py, vqvae.py, quant.py; FoundationVision/
LlamaGen tokenizer/tokenizer_image/vq_model.py; CompVis/taming-transformers
taming/modules/diffusionmodules/model.py, taming/models/vqgan.py.
"""

from __future__ import annotations

import math

import torch

Layout = dict[str, tuple[int, ...]]


class _Writer:
    def __init__(self) -> None:
        self.layout: Layout = {}

    def conv(self, name: str, cout: int, cin: int, k: int) -> None:
        self.layout[f"{name}.weight"] = (cout, cin, k, k)
        self.layout[f"{name}.bias"] = (cout,)

    def norm(self, name: str, c: int) -> None:
        self.layout[f"{name}.weight"] = (c,)
        self.layout[f"{name}.bias"] = (c,)

    def res(self, name: str, cin: int, cout: int) -> None:
        self.norm(f"{name}.norm1", cin)
        self.conv(f"{name}.conv1", cout, cin, 3)
        self.norm(f"{name}.norm2", cout)
        self.conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            self.conv(f"{name}.nin_shortcut", cout, cin, 1)

    def attn(self, name: str, c: int, fused: bool) -> None:
        self.norm(f"{name}.norm", c)
        if fused:  # VAR
            self.conv(f"{name}.qkv", 3 * c, c, 1)
        else:
            for p in "qkv":
                self.conv(f"{name}.{p}", c, c, 1)
        self.conv(f"{name}.proj_out", c, c, 1)


def taming_style(
    ch: int, ch_mult: tuple[int, ...], nrb: int, z: int, fused: bool, w: _Writer | None = None
) -> _Writer:
    """Encoder + decoder as taming (and VAR's basic_vae) name them; attention at the coarsest
    level (taming's attn_resolutions=[16] at 256 for f16) and in the middle."""
    w = w or _Writer()
    last = len(ch_mult) - 1
    in_ch_mult = (1, *ch_mult)
    w.conv("encoder.conv_in", ch, 3, 3)
    block_in = ch
    for i in range(len(ch_mult)):
        block_in, block_out = ch * in_ch_mult[i], ch * ch_mult[i]
        for j in range(nrb):
            w.res(f"encoder.down.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if i == last:
                w.attn(f"encoder.down.{i}.attn.{j}", block_in, fused)
        if i != last:
            w.conv(f"encoder.down.{i}.downsample.conv", block_in, block_in, 3)
    for p in ("encoder", "decoder"):
        c = ch * ch_mult[-1]
        if p == "decoder":
            w.conv("decoder.conv_in", c, z, 3)
        w.res(f"{p}.mid.block_1", c, c)
        w.attn(f"{p}.mid.attn_1", c, fused)
        w.res(f"{p}.mid.block_2", c, c)
        if p == "encoder":
            w.norm("encoder.norm_out", c)
            w.conv("encoder.conv_out", z, c, 3)
    block_in = ch * ch_mult[-1]
    for i in reversed(range(len(ch_mult))):
        block_out = ch * ch_mult[i]
        for j in range(nrb + 1):
            w.res(f"decoder.up.{i}.block.{j}", block_in, block_out)
            block_in = block_out
            if i == last:
                w.attn(f"decoder.up.{i}.attn.{j}", block_in, fused)
        if i != 0:
            w.conv(f"decoder.up.{i}.upsample.conv", block_in, block_in, 3)
    w.norm("decoder.norm_out", block_in)
    w.conv("decoder.conv_out", 3, block_in, 3)
    return w


def var_layout(
    ch: int = 160,
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
    nrb: int = 2,
    cvae: int = 32,
    vocab: int = 4096,
    num_scales: int = 10,
    num_phi: int = 4,
    quant_conv_ks: int = 3,
) -> Layout:
    """VAR's VQVAE state dict (raw, as torch.save(vae.state_dict()) writes it)."""
    w = taming_style(ch, ch_mult, nrb, cvae, fused=True)
    w.conv("quant_conv", cvae, cvae, quant_conv_ks)
    w.conv("post_quant_conv", cvae, cvae, quant_conv_ks)
    w.layout["quantize.ema_vocab_hit_SV"] = (num_scales, vocab)
    w.layout["quantize.embedding.weight"] = (vocab, cvae)
    for k in range(num_phi):
        w.conv(f"quantize.quant_resi.qresi_ls.{k}", cvae, cvae, 3)
    return w.layout


def taming_layout(
    ch: int = 128,
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
    nrb: int = 2,
    z: int = 256,
    n_embed: int = 1024,
    embed_dim: int = 256,
) -> Layout:
    """taming's VQModel state dict (without the loss.* tensors)."""
    w = taming_style(ch, ch_mult, nrb, z, fused=False)
    w.layout["quantize.embedding.weight"] = (n_embed, embed_dim)
    w.conv("quant_conv", embed_dim, z, 1)
    w.conv("post_quant_conv", z, embed_dim, 1)
    return w.layout


def llamagen_layout(
    ch: int = 128,
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
    nrb: int = 2,
    z: int = 256,
    codebook_size: int = 16384,
    embed_dim: int = 8,
    usage: int = 65536,
) -> Layout:
    """LlamaGen's VQModel state dict: conv_blocks / res / mid.0-2, decoder levels coarsest
    first, q/k/v attention, and the codebook_used buffer."""
    w = _Writer()
    n = len(ch_mult)
    in_ch_mult = (1, *ch_mult)
    w.conv("encoder.conv_in", ch, 3, 3)
    for i in range(n):
        block_in, block_out = ch * in_ch_mult[i], ch * ch_mult[i]
        for j in range(nrb):
            w.res(f"encoder.conv_blocks.{i}.res.{j}", block_in, block_out)
            block_in = block_out
            if i == n - 1:
                w.attn(f"encoder.conv_blocks.{i}.attn.{j}", block_in, False)
        if i != n - 1:
            w.conv(f"encoder.conv_blocks.{i}.downsample.conv", block_in, block_in, 3)
    c = ch * ch_mult[-1]
    for p in ("encoder", "decoder"):
        w.res(f"{p}.mid.0", c, c)
        w.attn(f"{p}.mid.1", c, False)
        w.res(f"{p}.mid.2", c, c)
    w.norm("encoder.norm_out", c)
    w.conv("encoder.conv_out", z, c, 3)
    w.conv("decoder.conv_in", c, z, 3)
    block_in = c
    for k, i in enumerate(reversed(range(n))):
        block_out = ch * ch_mult[i]
        for j in range(nrb + 1):
            w.res(f"decoder.conv_blocks.{k}.res.{j}", block_in, block_out)
            block_in = block_out
            if i == n - 1:
                w.attn(f"decoder.conv_blocks.{k}.attn.{j}", block_in, False)
        if i != 0:
            w.conv(f"decoder.conv_blocks.{k}.upsample.conv", block_in, block_in, 3)
    w.norm("decoder.norm_out", block_in)
    w.conv("decoder.conv_out", 3, block_in, 3)
    w.layout["quantize.embedding.weight"] = (codebook_size, embed_dim)
    w.layout["quantize.codebook_used"] = (usage,)
    w.conv("quant_conv", embed_dim, z, 1)
    w.conv("post_quant_conv", z, embed_dim, 1)
    return w.layout


def random_tensors(layout: Layout, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for a layout, scaled so activations stay O(1) through deep stacks."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in layout.items():
        t = torch.randn(shape, generator=g)
        if "norm" in name and name.endswith(".weight"):
            t = 1.0 + 0.1 * t
        elif len(shape) == 4:
            t = t / math.sqrt(shape[1] * shape[2] * shape[3])
        elif name.endswith(".bias"):
            t = 0.02 * t
        elif "ema_vocab_hit" in name or "codebook_used" in name:
            t = t.abs()
        out[name] = t
    return out


def open_magvit2_checkpoint(
    ddconfig: dict, seed: int = 0
) -> tuple[torch.nn.Module, torch.nn.Module, dict[str, torch.Tensor]]:
    """Open-MAGVIT2's own Encoder and Decoder (the ``open-magvit2`` package's
    improved_model.py) with random weights, and the Lightning ``state_dict`` its
    lfqgan.VQModel saves for them: ``encoder.*``, ``decoder.*`` and the loss's tensors
    (``loss.*``), which a loader must leave out. GroupNorm affines are drawn too, so that a
    tensor loaded into the wrong place shows."""
    from open_magvit2.taming.modules.diffusionmodules.improved_model import Decoder, Encoder

    torch.manual_seed(seed)
    enc, dec = Encoder(**ddconfig), Decoder(**ddconfig)
    g = torch.Generator().manual_seed(seed)
    for name, p in [*enc.named_parameters(), *dec.named_parameters()]:
        if "norm" in name:
            p.data = (1.0 if name.endswith(".weight") else 0.0) + 0.1 * torch.randn(
                p.shape, generator=g
            )
    state = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    state |= {f"decoder.{k}": v for k, v in dec.state_dict().items()}
    state["loss.discriminator.main.0.weight"] = torch.randn(8, 3, 4, 4, generator=g)
    state["loss.perceptual_loss.scaling_layer.shift"] = torch.zeros(1, 3, 1, 1)
    return enc, dec, state
