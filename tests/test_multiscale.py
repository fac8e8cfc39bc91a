"""The multi-scale (VAR) tokenizer: quantizer semantics, training, export.

The PyTorch model is checked against a plain VAR-style reference loop written with
F.interpolate; the export's gate and manifest here, the runtime in test_runtime_multiscale.py.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vqedge.commands.main import main
from vqedge.models.checkpoint import load_pretrained
from vqedge.models.data import CropSampler
from vqedge.models.multiscale import MultiScaleVQVAE, phi_index, resize_matrix
from vqedge.models.train import TrainConfig, train
from vqedge.runtime.config import VQVAEConfig

VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def var_reference(model: MultiScaleVQVAE, f: torch.Tensor) -> list[torch.Tensor]:
    """VAR's quantization loop, written with F.interpolate (area down, bicubic up)."""
    q = model.quantize
    B, C, H, W = f.shape
    e = q.get_codebook()
    f_rest, out = f.clone(), []
    for si, pn in enumerate(q.patch_nums):
        last = si == len(q.patch_nums) - 1
        z = f_rest if last else F.interpolate(f_rest, size=(pn, pn), mode="area")
        z = z.permute(0, 2, 3, 1).reshape(-1, C)
        idx = torch.cdist(z.double(), e.double()).argmin(1).view(B, pn * pn)
        h = e[idx].transpose(1, 2).reshape(B, C, pn, pn)
        if not last:
            h = F.interpolate(h, size=(H, W), mode="bicubic")
        f_rest = f_rest - q.phis[q.phi_of_scale[si]](h)
        out.append(idx)
    return out


# -- PyTorch --------------------------------------------------------------------------------


@pytest.mark.parametrize("pn", VAR_PATCH_NUMS[:-1])
def test_resize_matrices_are_torch_interpolate(pn):
    x = torch.randn(2, 3, 16, 16)
    D, U = resize_matrix(16, pn, "area"), resize_matrix(pn, 16, "bicubic")
    ref_down = F.interpolate(x, size=(pn, pn), mode="area")
    assert torch.allclose(D @ x @ D.t(), ref_down, atol=1e-6)
    y = torch.randn(2, 3, pn, pn)
    ref_up = F.interpolate(y, size=(16, 16), mode="bicubic", align_corners=False)
    assert torch.allclose(U @ y @ U.t(), ref_up, atol=1e-5)


def test_phi_sharing_follows_var():
    # VAR: 4 Phi convolutions at ticks 1/12, 4/12.., each scale takes the nearest to si/(SN-1)
    got = [phi_index(si, 10, 4) for si in range(10)]
    assert got == sorted(got) and got[0] == 0 and got[-1] == 3 and len(set(got)) == 4
    assert phi_index(0, 1, 4) == 0


def test_quantizer_matches_var_reference(ms_model, images):
    with torch.no_grad():
        latent = ms_model.encode(images)
        ours = ms_model.quantize.f_to_idxBl(latent)
        ref = var_reference(ms_model, latent)
    for si, (a, b) in enumerate(zip(ours, ref)):
        assert torch.equal(a, b), f"scale {si}"


def test_model_api_shapes_and_prefix(ms_model, images, ms_config):
    idx_Bl = ms_model.img_to_idxBl(images)
    assert [tuple(i.shape) for i in idx_Bl] == [(3, p * p) for p in ms_config.patch_nums]
    recon, _, idx_BL = ms_model(images)
    assert torch.equal(torch.cat(idx_Bl, 1), idx_BL)
    assert torch.allclose(ms_model.idxBl_to_img(idx_Bl), recon, atol=1e-6)
    prog = ms_model.idxBl_to_img(idx_Bl[:3], last_one=False)
    assert len(prog) == 3 and prog[-1].shape == images.shape
    assert torch.allclose(prog[-1], ms_model.idxBl_to_img(idx_Bl[:3]))
    var_in = ms_model.idxBl_to_var_input(idx_Bl)
    L = ms_config.scale_offsets[-1]
    assert var_in.shape == (3, L - 1, ms_config.code_dim)


def test_var_input_matches_var_reference(ms_model, images):
    """VAR's idxBl_to_var_input: f_hat over scales 1..K-1, area-downsampled to the next."""
    q = ms_model.quantize
    idx_Bl = ms_model.img_to_idxBl(images)
    B, C, s = images.shape[0], q.embedding_dim, q.side
    f_hat, nxt = torch.zeros(B, C, s, s), []
    with torch.no_grad():
        for si in range(len(q.patch_nums) - 1):
            pn = q.patch_nums[si]
            h = q.get_codebook()[idx_Bl[si]].transpose(1, 2).reshape(B, C, pn, pn)
            f_hat = f_hat + q.phis[q.phi_of_scale[si]](
                F.interpolate(h, size=(s, s), mode="bicubic")
            )
            pn_next = q.patch_nums[si + 1]
            down = F.interpolate(f_hat, size=(pn_next, pn_next), mode="area")
            nxt.append(down.view(B, C, -1).transpose(1, 2))
    ref = torch.cat(nxt, dim=1)
    assert torch.allclose(ms_model.idxBl_to_var_input(idx_Bl), ref, atol=1e-5)


def test_model_refuses_other_sizes(ms_model):
    with pytest.raises(ValueError, match="accepts 32x32 images only"):
        ms_model.img_to_idxBl(torch.zeros(1, 3, 32, 40))
    with pytest.raises(ValueError, match="scale 1 must hold"):
        ms_model.idxBl_to_img([torch.zeros(1, 1, dtype=torch.long)] * 2)


def test_config_checks_patch_nums():
    with pytest.raises(ValueError, match="strictly increasing"):
        VQVAEConfig(patch_nums=(1, 3, 2))
    with pytest.raises(ValueError, match="l2_normalize cannot"):
        VQVAEConfig(patch_nums=(1, 2), l2_normalize=True)
    cfg = VQVAEConfig(channel_mult=(1, 1, 2, 4), patch_nums=VAR_PATCH_NUMS)
    assert cfg.resolution == 128 and cfg.scale_offsets[-1] == 680


def test_training_steps_and_resume(ms_config, photo_folder, tmp_path):
    tc = TrainConfig(
        data=str(photo_folder),
        out=str(tmp_path / "run"),
        steps=2,
        batch_size=2,
        crop=ms_config.resolution,
        max_zoom_out=1.5,
        eval_every=2,
        model=ms_config,
    )
    ev = train(tc, progress=False)
    assert len(ev["psnr_per_prefix"]) == len(ms_config.patch_nums)
    assert isinstance(load_pretrained(tmp_path / "run"), MultiScaleVQVAE)
    tc.steps = 3
    assert "psnr_per_prefix" in train(tc, resume=True, progress=False)
    with pytest.raises(ValueError, match="trains on 32x32 crops"):
        train(TrainConfig(data=str(photo_folder), crop=24, model=ms_config), progress=False)


def test_zoomed_crops_are_reproducible():
    img = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    a = CropSampler([img], 32, torch.Generator().manual_seed(3), max_zoom_out=4).sample(4)
    b = CropSampler([img], 32, torch.Generator().manual_seed(3), max_zoom_out=4).sample(4)
    assert a.shape == (4, 3, 32, 32) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1


# -- runtime over an exported bundle (the export itself: test_export_multiscale.py) -----------


def test_cli_info_encode_decode(bundle, tmp_path, capsys):
    assert main(["info", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "multi-scale" in out and re.search(r"scales +\[1, 2, 3, 5, 8\] \(103 tokens\)", out)
    from PIL import Image

    Image.fromarray(np.full((50, 70, 3), 120, np.uint8)).save(tmp_path / "a.png")
    assert main(["encode", str(tmp_path / "a.png"), "-o", str(tmp_path / "a.vqt"), "--bundle",
                 str(bundle)]) == 0  # fmt: skip
    assert "fitted to 32x32" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "a.vqt"), "-o", str(tmp_path / "b.png"), "--bundle",
                 str(bundle)]) == 0  # fmt: skip
    assert Image.open(tmp_path / "b.png").size == (32, 32)
