"""Imported tokenizer families: layouts, loaders, errors and numerics on small configurations.

Random weights are written by the tests in each project's own file format and layout (see
official_layouts.py); diffusers' own VQModel is the reference for its family.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from official_layouts import (
    llamagen_layout,
    random_tensors,
    taming_layout,
    var_layout,
)

from vqedge.models import blocks, llamagen, taming, var, vqmodel
from vqedge.models.import_checkpoint import CheckpointError, official_layout


@pytest.fixture(autouse=True)
def _inference_only():
    """Every test here only runs models forward (gradients off, in this module alone)."""
    with torch.no_grad():
        yield


# small configurations of each family (GroupNorm needs widths that are multiples of 32)
VAR_SMALL = var.VARConfig(
    vocab_size=64, z_channels=8, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, patch_nums=(1, 2, 3, 4)
)
LLAMAGEN_SMALL = llamagen.LlamaGenConfig(
    ch_mult=(1, 2), codebook_size=64, embed_dim=8, z_channels=32, ch=32, num_res_blocks=1
)
TAMING_SMALL = taming.TamingConfig(
    backbone=blocks.Backbone(
        ch=32, channels=(32, 64), num_res_blocks=1, z_channels=32, attn_levels=(1,)
    ),
    n_embed=64,
    embed_dim=16,
)


def images(b: int, side: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, side, side, generator=g) * 2 - 1


def var_small_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    c = VAR_SMALL
    return random_tensors(
        var_layout(c.ch, c.ch_mult, c.num_res_blocks, c.z_channels, c.vocab_size, 4, c.num_phi),
        seed,
    )


# ---------------------------------------------------------------- layouts of the presets


@pytest.mark.parametrize("preset", ["256", "512"])
def test_var_preset_layout_is_vars_324_tensors(preset):
    with torch.device("meta"):
        model = var.VARVQVAE(var.PRESETS[preset])
    ours = official_layout(model, var.to_official, var.OURS_ONLY)
    assert ours == var_layout()
    assert len(ours) == 324
    assert ours["quantize.ema_vocab_hit_SV"] == (10, 4096)


@pytest.mark.parametrize(
    "preset, levels, count", [("vq16", (1, 1, 2, 2, 4), 344), ("vq8", (1, 2, 2, 4), 300)]
)
def test_llamagen_preset_layout(preset, levels, count):
    cfg = llamagen.PRESETS[preset]
    with torch.device("meta"):
        model = llamagen.LlamaGenVQ(cfg)
    ours = official_layout(model, llamagen.official_namer(len(cfg.ch_mult)))
    assert ours == llamagen_layout(ch_mult=levels)
    assert len(ours) == count
    assert ours["quantize.embedding.weight"] == (16384, 8)


@pytest.mark.parametrize("preset, codes", [("f16-1024", 1024), ("f16-16384", 16384)])
def test_taming_preset_layout(preset, codes):
    with torch.device("meta"):
        model = taming.TamingVQGAN(taming.PRESETS[preset])
    ours = official_layout(model, taming.to_official)
    assert ours == taming_layout(n_embed=codes)
    assert len(ours) == 343


@pytest.mark.parametrize("preset", ["vq-f4", "vq-f8"])
def test_vqmodel_preset_layout_is_diffusers(preset):
    from diffusers import VQModel

    cfg = vqmodel.PRESETS[preset]
    n = len(cfg.block_out_channels)
    with torch.device("meta"):
        ref = VQModel(
            block_out_channels=cfg.block_out_channels,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            layers_per_block=cfg.layers_per_block,
            latent_channels=cfg.latent_channels,
            num_vq_embeddings=cfg.num_vq_embeddings,
            vq_embed_dim=cfg.vq_embed_dim,
        )
        ours = vqmodel.DiffusersVQModel(cfg)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert official_layout(ours, vqmodel.official_namer(n)) == want


# ---------------------------------------------------------------- VAR


def var_reference(tensors, f, patch_nums, phi_of_scale, r=0.5):
    """VAR's quant.py written out with F.interpolate: tokens, f_hat per scale, var_input."""
    e = tensors["quantize.embedding.weight"]
    B, C, H, W = f.shape
    SN = len(patch_nums)

    def phi(h, si):
        k = phi_of_scale[si]
        w, b = (tensors[f"quantize.quant_resi.qresi_ls.{k}.{p}"] for p in ("weight", "bias"))
        return h * (1 - r) + F.conv2d(h, w, b, padding=1) * r

    f_rest, f_hat = f.clone(), torch.zeros_like(f)
    idx_Bl, f_hats = [], []
    for si, pn in enumerate(patch_nums):
        z = F.interpolate(f_rest, size=(pn, pn), mode="area") if si != SN - 1 else f_rest
        z_NC = z.permute(0, 2, 3, 1).reshape(-1, C)
        d = z_NC.square().sum(1, keepdim=True) + e.square().sum(1)
        d.addmm_(z_NC, e.T, alpha=-2, beta=1)
        idx = d.argmin(1)
        h = e[idx].view(B, pn, pn, C).permute(0, 3, 1, 2)
        if si != SN - 1:
            h = F.interpolate(h, size=(H, W), mode="bicubic")
        h = phi(h, si)
        f_hat = f_hat + h
        f_rest = f_rest - h
        idx_Bl.append(idx.view(B, pn * pn))
        f_hats.append(f_hat)
    nxt, acc = [], torch.zeros_like(f)
    for si in range(SN - 1):
        h = e[idx_Bl[si]].transpose(1, 2).reshape(B, C, patch_nums[si], patch_nums[si])
        acc = acc + phi(F.interpolate(h, size=(H, W), mode="bicubic"), si)
        pn = patch_nums[si + 1]
        nxt.append(F.interpolate(acc, size=(pn, pn), mode="area").view(B, C, -1).transpose(1, 2))
    return idx_Bl, f_hats, torch.cat(nxt, 1)


def test_var_loads_its_raw_state_dict_and_uses_every_tensor(tmp_path):
    tensors = var_small_tensors()
    path = tmp_path / "vae.pth"
    torch.save(tensors, path)
    model = var.load_var(path, config=VAR_SMALL)
    sd = model.state_dict()
    for name, t in sd.items():
        if name not in var.OURS_ONLY:
            assert torch.equal(t, tensors[var.to_official(name)]), name
    assert len(sd) - len(var.OURS_ONLY) == len(tensors)


def test_var_matches_reference_loop_small(tmp_path):
    tensors = var_small_tensors(1)
    model = var.load_var(tensors, config=VAR_SMALL)
    x = images(2, VAR_SMALL.resolution)
    f = model.encode(x)
    phis = var.phi_of_scales(4, 4)
    ref_idx, ref_fhat, ref_var = var_reference(tensors, f, VAR_SMALL.patch_nums, phis)
    idx_Bl = model.img_to_idxBl(x)
    for si, (a, b) in enumerate(zip(idx_Bl, ref_idx)):
        assert torch.equal(a, b), f"scale {si}"
    var_in = model.idxBl_to_var_input(idx_Bl)
    assert var_in.shape == (2, 4 + 9 + 16, 8)  # L - pn_1^2
    torch.testing.assert_close(var_in, ref_var, atol=1e-5, rtol=1e-5)
    imgs = model.idxBl_to_img(idx_Bl, last_one=False)
    for img, fh in zip(imgs, ref_fhat):
        torch.testing.assert_close(img, model.decode(fh), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(x)[0], imgs[-1], atol=1e-5, rtol=1e-5)
    prefix = model.idxBl_to_img(idx_Bl[:2], last_one=True)
    torch.testing.assert_close(prefix, imgs[1])


def test_var_quantizer_at_256_gives_679_var_input_as_reference():
    """The released quantizer (V=4096, Cvae=32, ten scales to 16, stated Phi per scale) in a
    VARVQVAE whose backbone is cut down to nothing (no residual blocks, 32 channels)."""
    cfg = var.VARConfig(ch=32, ch_mult=(1,) * 5, num_res_blocks=0)
    tensors = random_tensors(var_layout(ch=32, ch_mult=(1,) * 5, nrb=0), seed=2)
    model = var.load_var(tensors, config=cfg)
    assert model.quantize.phi_of_scale == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    f = torch.randn(2, 32, 16, 16, generator=torch.Generator().manual_seed(3))
    ref_idx, ref_fhat, ref_var = var_reference(tensors, f, cfg.patch_nums, var.PHI_OF_SCALE_10x4)
    idx_Bl = model.f_to_idxBl_or_fhat(f, to_fhat=False)
    assert [i.shape[1] for i in idx_Bl] == [p * p for p in cfg.patch_nums]
    for si, (a, b) in enumerate(zip(idx_Bl, ref_idx)):
        assert torch.equal(a, b), f"scale {si}"
    var_in = model.idxBl_to_var_input(idx_Bl)
    assert var_in.shape == (2, 679, 32)
    torch.testing.assert_close(var_in, ref_var, atol=1e-5, rtol=1e-5)
    f_hats = model.embed_to_fhat(model.idxBl_to_h(idx_Bl))
    for si, (a, b) in enumerate(zip(f_hats, ref_fhat)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=f"f_hat after scale {si}")
    for a, b in zip(model.f_to_idxBl_or_fhat(f, to_fhat=True), ref_fhat):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_var_phi_rule_matches_stated_list_and_var_ticks():
    assert var.phi_of_scales(10, 4) == (0, 0, 1, 1, 1, 2, 2, 3, 3, 3)
    assert var.phi_of_scales(4, 4) == (0, 1, 2, 3)
    # K != 4: VAR's ticks are linspace(1/2K, 1 - 1/2K, K)
    assert var.phi_of_scales(5, 2) == (0, 0, 0, 1, 1)


def test_var_refuses_other_sizes_and_bad_tokens():
    model = var.VARVQVAE(VAR_SMALL)
    with pytest.raises(ValueError, match="takes 16x16 images"):
        model.encode(images(1, 32))
    with pytest.raises(ValueError, match=r"scale 1 must be int \[B, 4\]"):
        model.idxBl_to_img([torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 5).long()])
    with pytest.raises(ValueError, match=r"\[0, 64\)"):
        model.idxBl_to_var_input([torch.full((1, p * p), 64) for p in VAR_SMALL.patch_nums])


# ---------------------------------------------------------------- errors


def test_renamed_key_is_refused_naming_family_key_and_shape(tmp_path):
    tensors = var_small_tensors()
    tensors["quantize.codebook.weight"] = tensors.pop("quantize.embedding.weight")
    torch.save(tensors, tmp_path / "vae.pth")
    with pytest.raises(CheckpointError) as e:
        var.load_var(tmp_path / "vae.pth", config=VAR_SMALL)
    msg = str(e.value)
    assert "VAR VQVAE" in msg
    assert "first missing key 'quantize.embedding.weight' (expected shape (64, 8))" in msg
    assert "first unexpected key 'quantize.codebook.weight' (shape found (64, 8))" in msg


def test_reshaped_key_is_refused_with_both_shapes(tmp_path):
    c = LLAMAGEN_SMALL
    tensors = random_tensors(llamagen_layout(c.ch, c.ch_mult, 1, c.z_channels, 64, 8))
    tensors["quant_conv.weight"] = torch.zeros(4, 32, 1, 1)
    torch.save({"model": tensors}, tmp_path / "vq.pt")
    with pytest.raises(CheckpointError, match="LlamaGen VQ") as e:
        llamagen.load_llamagen(tmp_path / "vq.pt", config=c)
    assert "'quant_conv.weight' has shape (4, 32, 1, 1) found, (8, 32, 1, 1) expected" in str(
        e.value
    )


def test_truncated_file_is_refused_naming_family(tmp_path):
    path = tmp_path / "vae.pth"
    torch.save(var_small_tensors(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read as a VAR VQVAE checkpoint"):
        var.load_var(path, config=VAR_SMALL)


def test_truncated_safetensors_is_refused(tmp_path):
    from diffusers import VQModel

    ref = small_diffusers()
    ref.save_pretrained(tmp_path)
    w = tmp_path / "diffusion_pytorch_model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    assert isinstance(ref, VQModel)
    with pytest.raises(CheckpointError, match="diffusers VQModel safetensors"):
        vqmodel.load_vqmodel(tmp_path)


def test_wrong_family_files_are_refused(tmp_path):
    c = LLAMAGEN_SMALL
    lg = random_tensors(llamagen_layout(c.ch, c.ch_mult, 1, c.z_channels, 64, 8))
    torch.save({"model": lg}, tmp_path / "llamagen.pt")
    torch.save(var_small_tensors(), tmp_path / "var.pth")
    # a LlamaGen file given as VAR's raw state dict
    with pytest.raises(CheckpointError, match="not a VAR VQVAE checkpoint .*'model'"):
        var.load_var(tmp_path / "llamagen.pt", config=VAR_SMALL)
    # VAR's raw state dict given as LlamaGen's
    with pytest.raises(
        CheckpointError, match="not a LlamaGen VQ checkpoint: .*under the key 'model'"
    ):
        llamagen.load_llamagen(tmp_path / "var.pth", config=c)
    # LlamaGen's weights inside a Lightning file: the layout is refused key by key
    torch.save({"state_dict": lg}, tmp_path / "as_taming.ckpt")
    with pytest.raises(CheckpointError, match="not a taming VQGAN checkpoint .*first missing key"):
        taming.load_taming(tmp_path / "as_taming.ckpt", config=TAMING_SMALL)


def test_unknown_preset_is_refused():
    with pytest.raises(ValueError, match="preset must be one of"):
        var.load_var({}, preset="1024")


# ---------------------------------------------------------------- LlamaGen


def test_llamagen_loads_model_key_and_matches_its_l2_lookup(tmp_path):
    c = LLAMAGEN_SMALL
    tensors = random_tensors(llamagen_layout(c.ch, c.ch_mult, 1, c.z_channels, 64, 8), seed=4)
    torch.save({"model": tensors, "steps": 1000}, tmp_path / "vq.pt")
    model = llamagen.load_llamagen(tmp_path / "vq.pt", config=c)
    namer = llamagen.official_namer(2)
    for name, t in model.state_dict().items():
        assert torch.equal(t, tensors[namer(name)]), name
    x = images(2, 16, seed=5)
    latent = model.encode(x)
    # LlamaGen's VectorQuantizer.forward, written out
    z = F.normalize(latent.permute(0, 2, 3, 1).reshape(-1, 8), dim=-1)
    e = F.normalize(tensors["quantize.embedding.weight"], dim=-1)
    d = (z**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * torch.einsum("bd,dn->bn", z, e.T)
    ref_idx = d.argmin(1).view(2, 8, 8)  # f=2
    idx = model.quantize_latent(latent)
    assert torch.equal(idx, ref_idx)
    assert torch.allclose(model.quantize.get_codebook().norm(dim=1), torch.ones(64))
    z_q = e[ref_idx].permute(0, 3, 1, 2)
    torch.testing.assert_close(model.decode_indices(idx), model.decode(z_q))
    recon, idx2 = model(x)
    assert torch.equal(idx2, idx) and recon.shape == x.shape


def test_llamagen_decoder_levels_are_numbered_coarsest_first():
    namer = llamagen.official_namer(5)
    assert namer("decoder.up.4.attn.0.q.weight") == "decoder.conv_blocks.0.attn.0.q.weight"
    assert namer("decoder.up.0.block.2.conv1.bias") == "decoder.conv_blocks.4.res.2.conv1.bias"
    assert namer("encoder.mid.attn_1.proj_out.weight") == "encoder.mid.1.proj_out.weight"


# ---------------------------------------------------------------- taming


def test_taming_lightning_file_loss_tensors_left_out_by_name(tmp_path):
    b = TAMING_SMALL.backbone
    tensors = random_tensors(
        taming_layout(b.ch, (1, 2), 1, b.z_channels, TAMING_SMALL.n_embed, TAMING_SMALL.embed_dim),
        seed=6,
    )
    loss = {
        "loss.discriminator.main.0.weight": torch.randn(64, 3, 4, 4),
        "loss.perceptual_loss.net.slice1.0.weight": torch.randn(64, 3, 3, 3),
        "loss.perceptual_loss.lin0.model.1.weight": torch.randn(1, 64, 1, 1),
    }
    ckpt = {"state_dict": {**tensors, **loss}, "epoch": 3, "global_step": 1200}
    torch.save(ckpt, tmp_path / "last.ckpt")
    model = taming.load_taming(tmp_path / "last.ckpt", config=TAMING_SMALL)
    for name, t in model.state_dict().items():
        assert torch.equal(t, tensors[name]), name
    x = images(1, 16, seed=7)
    latent = model.encode(x)
    z = latent.permute(0, 2, 3, 1).reshape(-1, 16)
    e = tensors["quantize.embedding.weight"]
    d = (z**2).sum(1, keepdim=True) + (e**2).sum(1) - 2 * torch.matmul(z, e.t())
    assert torch.equal(model.quantize_latent(latent).flatten(), d.argmin(1))
    # anything else outside the model is refused, by name
    ckpt["state_dict"]["lossy.extra"] = torch.zeros(2)
    torch.save(ckpt, tmp_path / "extra.ckpt")
    with pytest.raises(CheckpointError, match="first unexpected key 'lossy.extra' .*\\(2,\\)"):
        taming.load_taming(tmp_path / "extra.ckpt", config=TAMING_SMALL)


def test_legacy_torch_format_without_mmap_still_loads(tmp_path):
    tensors = var_small_tensors()
    torch.save(tensors, tmp_path / "old.pth", _use_new_zipfile_serialization=False)
    model = var.load_var(tmp_path / "old.pth", config=VAR_SMALL)
    assert torch.equal(model.quant_conv.weight, tensors["quant_conv.weight"])


def test_pickled_objects_are_refused_by_weights_only_load(tmp_path):
    torch.save({"model": {}, "args": np.dtype("float32")}, tmp_path / "args.pt")
    with pytest.raises(CheckpointError, match="besides tensors"):
        llamagen.load_llamagen(tmp_path / "args.pt", config=LLAMAGEN_SMALL)


# ---------------------------------------------------------------- shared blocks


@pytest.mark.parametrize("proj", ["conv", "qkv", "linear"])
def test_attention_matches_the_reference_bmm_formulation(proj):
    """VAR's / taming's AttnBlock: w = softmax(bmm(q^T, k) / sqrt(C)), h = bmm(v, w^T)."""
    torch.manual_seed(0)
    blk = blocks.AttnBlock(32, 8, proj)
    x = torch.randn(2, 32, 5, 3)
    h = blk.norm(x)
    B, C, H, W = x.shape
    if proj == "qkv":
        q, k, v = blk.qkv(h).reshape(B, 3, C, H, W).unbind(1)
    elif proj == "conv":
        q, k, v = blk.q(h), blk.k(h), blk.v(h)
    else:
        t = h.flatten(2).transpose(1, 2)
        q, k, v = (lin(t).transpose(1, 2).reshape(B, C, H, W) for lin in (blk.q, blk.k, blk.v))
    w = torch.bmm(q.reshape(B, C, -1).permute(0, 2, 1), k.reshape(B, C, -1)) * C**-0.5
    w = F.softmax(w, dim=2)
    a = torch.bmm(v.reshape(B, C, -1), w.permute(0, 2, 1)).reshape(B, C, H, W)
    if proj == "linear":
        out = blk.proj_out(a.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(B, C, H, W)
    else:
        out = blk.proj_out(a)
    torch.testing.assert_close(blk(x), x + out, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- diffusers


def small_diffusers(seed: int = 0):
    from diffusers import VQModel

    torch.manual_seed(seed)
    ref = VQModel(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=2,
        latent_channels=4,
        num_vq_embeddings=32,
        norm_num_groups=16,
    ).eval()
    # codes at the latents' scale: no near ties between codes
    ref.quantize.embedding.weight.normal_()
    return ref


def fp32_tolerance(ref32: torch.Tensor, ref64: torch.Tensor) -> float:
    """How far a float32 implementation of the same maths may be from the reference's float32
    output: the reference's own float32 error against float64, four times (another op order
    rounds differently, by about as much), and at least a few float32 ulps of 1."""
    return max(4 * float((ref32.double() - ref64).abs().max()), 1e-6)


def diffusers_parity(ref, ours, x):
    import copy

    ref64 = copy.deepcopy(ref).double()
    lat_ref = ref.encode(x).latents
    lat = ours.encode(x)
    tol = fp32_tolerance(lat_ref, ref64.encode(x.double()).latents)
    torch.testing.assert_close(lat, lat_ref, atol=tol, rtol=0)
    _, _, (_, _, idx_ref) = ref.quantize(lat_ref)
    idx = ours.quantize_latent(lat)
    assert torch.equal(idx.flatten(), idx_ref.flatten())
    img_ref = ref.decode(lat_ref).sample.clamp(-1, 1)
    tol = fp32_tolerance(img_ref, ref64.decode(lat_ref.double()).sample.clamp(-1, 1))
    torch.testing.assert_close(ours.decode_indices(idx), img_ref, atol=tol, rtol=0)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_diffusers_small_vqmodel_same_latents_tokens_images(tmp_path, safe):
    ref = small_diffusers()
    ref.save_pretrained(tmp_path, safe_serialization=safe)
    ours = vqmodel.load_vqmodel(tmp_path)
    assert ours.config.norm_num_groups == 16 and ours.codebook_size == 32
    diffusers_parity(ref, ours, images(2, 24, seed=8))


def test_diffusers_config_of_another_model_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKL"}')
    with pytest.raises(CheckpointError, match="not a diffusers VQModel config"):
        vqmodel.load_vqmodel(tmp_path)
    (tmp_path / "config.json").write_text(
        '{"_class_name": "VQModel", "block_out_channels": [32], "norm_type": "spatial"}'
    )
    with pytest.raises(CheckpointError, match="norm_type='spatial' is not supported"):
        vqmodel.load_vqmodel(tmp_path)


def test_diffusers_missing_key_names_it(tmp_path):
    from safetensors.torch import load_file, save_file

    ref = small_diffusers()
    ref.save_pretrained(tmp_path)
    w = tmp_path / "diffusion_pytorch_model.safetensors"
    sd = load_file(w)
    del sd["decoder.mid_block.attentions.0.to_out.0.weight"]
    save_file(sd, w)
    with pytest.raises(CheckpointError) as e:
        vqmodel.load_vqmodel(tmp_path)
    assert "first missing key 'decoder.mid_block.attentions.0.to_out.0.weight'" in str(e.value)
    assert "(64, 64)" in str(e.value)


def test_vqmodel_module_needs_no_diffusers(tmp_path):
    """Loading a save_pretrained folder works with diffusers made unimportable."""
    import subprocess
    import sys

    ref = small_diffusers()
    ref.save_pretrained(tmp_path)
    code = (
        "import sys; sys.modules['diffusers'] = None\n"
        "from vqedge.models.vqmodel import load_vqmodel\n"
        f"m = load_vqmodel({str(tmp_path)!r})\n"
        "print(m.codebook_size)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "32"
