"""The released sizes of the imported families, built and loaded once each (slow).

Random weights in each official layout, saved by the test in the project's own file format.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from official_layouts import llamagen_layout, random_tensors, taming_layout, var_layout
from test_families import diffusers_parity, images, var_reference

from vqedge.models import llamagen, taming, var, vqmodel

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _inference_only():
    """Every test here only runs models forward (gradients off, in this module alone)."""
    with torch.no_grad():
        yield


@pytest.fixture(scope="module")
def var_file(tmp_path_factory):
    """VAR's released layout as torch.save(state_dict) writes it: 324 random tensors."""
    tensors = random_tensors(var_layout(), seed=10)
    assert len(tensors) == 324
    path = tmp_path_factory.mktemp("var") / "vae_ch160v4096z32.pth"
    torch.save(tensors, path)
    return path, tensors


def test_var_256_tokens_var_input_images_match_reference(var_file):
    path, tensors = var_file
    model = var.load_var(path, preset="256")
    assert sum(p.numel() for p in model.parameters()) == 108_948_355
    x = images(1, 256, seed=11)
    f = model.encode(x)
    assert f.shape == (1, 32, 16, 16)
    ref_idx, ref_fhat, ref_var = var_reference(
        tensors, f, var.PATCH_NUMS_256, var.PHI_OF_SCALE_10x4
    )
    idx_Bl = model.f_to_idxBl_or_fhat(f, to_fhat=False)
    for si, (a, b) in enumerate(zip(idx_Bl, ref_idx)):
        assert torch.equal(a, b), f"scale {si}"
    var_in = model.idxBl_to_var_input(idx_Bl)
    assert var_in.shape == (1, 679, 32)
    torch.testing.assert_close(var_in, ref_var, atol=1e-5, rtol=1e-5)
    img = model.idxBl_to_img(idx_Bl, last_one=True)
    ref_img = model.decoder(
        F.conv2d(
            ref_fhat[-1],
            tensors["post_quant_conv.weight"],
            tensors["post_quant_conv.bias"],
            padding=1,
        )
    ).clamp(-1, 1)
    assert img.shape == (1, 3, 256, 256)
    torch.testing.assert_close(img, ref_img, atol=1e-4, rtol=1e-4)


def test_var_512_preset_loads_the_same_file(var_file):
    path, tensors = var_file
    model = var.load_var(path, preset="512")
    assert model.resolution == 512
    f = torch.randn(1, 32, 32, 32, generator=torch.Generator().manual_seed(12))
    ref_idx, _, ref_var = var_reference(tensors, f, var.PATCH_NUMS_512, var.PHI_OF_SCALE_10x4)
    idx_Bl = model.f_to_idxBl_or_fhat(f, to_fhat=False)
    assert all(torch.equal(a, b) for a, b in zip(idx_Bl, ref_idx))
    var_in = model.idxBl_to_var_input(idx_Bl)
    assert var_in.shape == (1, sum(p * p for p in var.PATCH_NUMS_512) - 1, 32)
    torch.testing.assert_close(var_in, ref_var, atol=1e-5, rtol=1e-5)


def test_llamagen_vq16_loads_and_tokenizes(tmp_path):
    tensors = random_tensors(llamagen_layout(), seed=13)
    torch.save({"model": tensors}, tmp_path / "vq_ds16_c2i.pt")
    model = llamagen.load_llamagen(tmp_path / "vq_ds16_c2i.pt", preset="vq16")
    x = images(1, 64, seed=14)
    latent = model.encode(x)
    assert latent.shape == (1, 8, 4, 4)
    z = F.normalize(latent.permute(0, 2, 3, 1).reshape(-1, 8), dim=-1)
    e = F.normalize(tensors["quantize.embedding.weight"], dim=-1)
    d = (z**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * z @ e.T
    idx = model.quantize_latent(latent)
    assert torch.equal(idx.flatten(), d.argmin(1))
    assert model.decode_indices(idx).shape == (1, 3, 64, 64)


def test_taming_f16_1024_lightning_checkpoint(tmp_path):
    tensors = random_tensors(taming_layout(), seed=15)
    loss = {"loss.discriminator.main.0.weight": torch.zeros(64, 3, 4, 4)}
    torch.save({"state_dict": {**tensors, **loss}, "global_step": 1}, tmp_path / "last.ckpt")
    model = taming.load_taming(tmp_path / "last.ckpt", preset="f16-1024")
    recon, idx = model(images(1, 64, seed=16))
    assert recon.shape == (1, 3, 64, 64) and idx.shape == (1, 4, 4)
    assert torch.equal(model.quantize.embedding.weight, tensors["quantize.embedding.weight"])


def test_diffusers_vq_f4_same_latents_tokens_images(tmp_path):
    from diffusers import VQModel

    cfg = vqmodel.PRESETS["vq-f4"]
    torch.manual_seed(17)
    ref = VQModel(
        block_out_channels=cfg.block_out_channels,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        num_vq_embeddings=cfg.num_vq_embeddings,
        vq_embed_dim=cfg.vq_embed_dim,
    ).eval()
    ref.quantize.embedding.weight.normal_()
    ref.save_pretrained(tmp_path)
    ours = vqmodel.load_vqmodel(tmp_path)
    assert ours.config == cfg
    diffusers_parity(ref, ours, images(1, 64, seed=18))
