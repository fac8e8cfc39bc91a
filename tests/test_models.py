import math

import pytest
import torch

from vqedge.models import VQVAE, SimpleVQVAE
from vqedge.runtime.config import VQVAEConfig


def test_seed_demo_usage():
    vqvae = SimpleVQVAE(vocab_size=16, embedding_dim=64)
    dummy = torch.randn(1, 3, 64, 64)
    recon, vq_loss, indices = vqvae(dummy)
    assert recon.shape == (1, 3, 64, 64)
    assert vq_loss.dim() == 0
    assert indices.shape == (1, 16, 16)
    idx_Bl = vqvae.img_to_idxBl(dummy)
    assert len(idx_Bl) == 1
    assert idx_Bl[0].shape == (1, 256)  # every token of the 16x16 map
    assert vqvae.idxBl_to_var_input(idx_Bl).shape == (1, 256, 64)


@pytest.mark.parametrize("mult, f", [((1, 2, 2), 4), ((1, 1, 2, 2), 8), ((1, 1, 1, 2, 2), 16)])
def test_configurable_factor(mult, f):
    cfg = VQVAEConfig(base_channels=4, channel_mult=mult, codebook_size=8, code_dim=4)
    model = VQVAE(cfg).eval()
    assert model.downsample_factor == f == cfg.downsample_factor
    recon, _, idx = model(torch.rand(2, 3, 64, 48) * 2 - 1)
    assert recon.shape == (2, 3, 64, 48)
    assert idx.shape == (2, 64 // f, 48 // f)


def test_size_not_multiple_of_f_pads_then_crops(tiny_config):
    model = VQVAE(tiny_config).eval()
    x = torch.rand(1, 3, 37, 50) * 2 - 1
    recon, _, idx = model(x)
    assert recon.shape == x.shape
    assert idx.shape == (1, math.ceil(37 / 4), math.ceil(50 / 4))
    # the tokens are those of the edge-padded image
    padded = torch.nn.functional.pad(x, (0, 2, 0, 3), mode="replicate")
    _, _, idx_padded = model(padded)
    assert torch.equal(idx, idx_padded)


def test_idxBl_round_trip_equals_forward(tiny_config):
    torch.manual_seed(0)
    model = VQVAE(tiny_config).eval()
    x = torch.rand(2, 3, 32, 24) * 2 - 1
    recon, _, idx = model(x)
    idx_Bl = model.img_to_idxBl(x)
    assert len(idx_Bl) == 1 and idx_Bl[0].shape == (2, 8 * 6)
    assert torch.equal(idx_Bl[0], idx.flatten(1))
    img = model.idxBl_to_img(idx_Bl, hw=(8, 6))
    assert torch.allclose(img, recon)
    assert torch.allclose(model.idxBl_to_img([idx]), recon)  # [B, h, w] needs no hw


def test_idxBl_to_var_input_is_code_embeddings(tiny_config):
    model = VQVAE(tiny_config).eval()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    idx_Bl = model.img_to_idxBl(x)
    var = model.idxBl_to_var_input(idx_Bl)
    assert var.shape == (1, 16, tiny_config.code_dim)
    assert torch.equal(var[0, 5], model.quantize.get_codebook()[idx_Bl[0][0, 5]])


def test_idxBl_to_img_square_default_and_errors(tiny_config):
    model = VQVAE(tiny_config).eval()
    idx = torch.zeros(1, 16, dtype=torch.long)
    assert model.idxBl_to_img([idx]).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="square"):
        model.idxBl_to_img([torch.zeros(1, 15, dtype=torch.long)])
    with pytest.raises(ValueError, match=r"\[0, 32\)"):
        model.idxBl_to_img([torch.full((1, 16), 32)])
    with pytest.raises(ValueError, match="int64"):
        model.idxBl_to_img([torch.zeros(1, 16)])
    with pytest.raises(ValueError, match="at least one"):
        model.idxBl_to_img([])


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(3, 16, 16), "rank 4"),
        (torch.rand(1, 4, 16, 16), "3 channels"),
        (torch.rand(1, 1, 16, 16), "3 channels"),
        (torch.full((1, 3, 16, 16), float("nan")), "NaN"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "floats"),
        (torch.zeros(0, 3, 16, 16), "non-empty"),
    ],
)
def test_bad_images_give_clear_errors(tiny_config, bad, match):
    model = VQVAE(tiny_config).eval()
    with pytest.raises(ValueError, match=match):
        model(bad)
    with pytest.raises(ValueError, match=match):
        model.img_to_idxBl(bad)


def test_config_validation_and_json_round_trip(tmp_path):
    cfg = VQVAEConfig(channel_mult=(1, 2, 2, 4))
    assert cfg.downsample_factor == 8
    cfg.save(tmp_path / "c.json")
    assert VQVAEConfig.load(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match="f in"):
        VQVAEConfig(channel_mult=(1, 2))
    with pytest.raises(ValueError, match="unknown config keys"):
        VQVAEConfig.from_dict({"nope": 1})
    assert VQVAEConfig(codebook_size=1024).bits_per_pixel == 10 / 16
