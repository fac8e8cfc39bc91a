"""The multi-scale (VAR) runtime: the exported bundle against PyTorch scale by scale, the
MultiScaleTokenizer's API and policies, and the shipped bundle against its checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqedge.models.checkpoint import PRETRAINED_DIR, load_pretrained
from vqedge.models.data import held_out_paths
from vqedge.runtime import load
from vqedge.runtime.images import fit_square, uint8_to_float
from vqedge.runtime.inputs import read_image
from vqedge.runtime.metrics import psnr
from vqedge.runtime.multiscale import MultiScaleTokenizer
from vqedge.runtime.tokenizer import Tokenizer

VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
SHIPPED = "vqvae-ms-f8"


@pytest.fixture(scope="module")
def tok(bundle) -> MultiScaleTokenizer:
    return load(bundle)


def test_load_gives_a_multiscale_tokenizer_without_tiling(tok):
    assert type(tok) is MultiScaleTokenizer and not isinstance(tok, Tokenizer)
    for name in ("encode_tiled", "decode_tiled", "reconstruct_tiled"):
        assert not hasattr(tok, name), name
    assert tok.token_shape(32, 32) == (1, 103) and tok.info["num_tokens"] == 103


def test_onnx_tokens_match_torch_per_scale(tok, ms_model):
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    x = torch.from_numpy(uint8_to_float(img))
    ours = tok.img_to_idxBl(img)
    ref = ms_model.img_to_idxBl(x)
    assert len(ours) == len(ref) == 5
    for si, (a, b) in enumerate(zip(ours, ref)):
        np.testing.assert_array_equal(a, b.numpy(), err_msg=f"scale {si}")


def test_runtime_var_input_and_prefix_decoding_match_torch(tok, ms_model, images):
    img_u8 = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    idx_Bl = tok.img_to_idxBl(img_u8)
    t_Bl = [torch.from_numpy(i) for i in idx_Bl]
    var_in = tok.idxBl_to_var_input(idx_Bl)
    np.testing.assert_allclose(var_in, ms_model.idxBl_to_var_input(t_Bl).numpy(), atol=1e-5)
    # the last scale is not needed for the teacher-forcing input
    np.testing.assert_allclose(tok.idxBl_to_var_input(idx_Bl[:-1]), var_in, atol=1e-6)
    prog = tok.idxBl_to_img(idx_Bl[:3], last_one=False, output="float")
    ref = ms_model.idxBl_to_img(t_Bl[:3], last_one=False)
    assert len(prog) == 3
    for a, b in zip(prog, ref):
        np.testing.assert_allclose(a, b.numpy(), atol=1e-4)
    full = tok.idxBl_to_img(idx_Bl, output="float")
    np.testing.assert_allclose(full, ms_model.idxBl_to_img(t_Bl).numpy(), atol=1e-4)


def test_runtime_refuses_sizes_and_bad_tokens(tok):
    with pytest.raises(ValueError, match="accepts 32x32 images only.*fit_square"):
        tok.encode(np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(ValueError, match=r"must be \[B, 103\]"):
        tok.decode(np.zeros((1, 100), np.int64))
    with pytest.raises(ValueError, match=r"scale 2 must be \[B, 9\]"):
        tok.idxBl_to_img([np.zeros((1, n), np.int64) for n in (1, 4, 8)])
    with pytest.raises(ValueError, match="scale 0 must hold integer"):
        tok.idxBl_to_img([np.zeros((1, 1))])
    with pytest.raises(ValueError, match=r"expected \[0, 64\)"):
        tok.idxBl_to_img([np.full((1, 1), 64)])
    with pytest.raises(ValueError, match="list of 4 to 5 scales"):
        tok.idxBl_to_var_input([np.zeros((1, 1), np.int64)])
    C, s = tok.config.code_dim, tok.patch_nums[-1]
    with pytest.raises(ValueError, match=rf"latent must be float \[B, {C}, {s}, {s}\]"):
        tok.quantize(np.zeros((1, C, s + 1, s), np.float32))


def test_token_files_keep_every_scale(tok, tmp_path):
    img = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    rec, idx = tok.reconstruct(img)
    path = tmp_path / "t.vqt"
    tok.save_tokens(path, idx)
    tf = tok.load_tokens(path)
    assert [s.shape for s in tf.scales] == [(2, p, p) for p in tok.patch_nums]
    np.testing.assert_array_equal(tok.decode(tf.scales), rec)


@pytest.mark.slow
def test_shipped_bundle_matches_shipped_checkpoint():
    """Real trained weights: the shipped bundle gives the shipped checkpoint's tokens."""
    model = load_pretrained(PRETRAINED_DIR / SHIPPED)
    tok = load(SHIPPED)
    assert isinstance(tok, MultiScaleTokenizer) and tok.patch_nums == VAR_PATCH_NUMS
    R = tok.resolution
    photos = np.stack([fit_square(read_image(p), R) for p in held_out_paths()])
    ours = tok.img_to_idxBl(photos)
    ref = model.img_to_idxBl(torch.from_numpy(uint8_to_float(photos)))
    for si, (a, b) in enumerate(zip(ours, ref)):
        np.testing.assert_array_equal(a, b.numpy(), err_msg=f"scale {si}")
    prog = tok.idxBl_to_img(ours, last_one=False)
    scores = [np.mean([psnr(r, p) for r, p in zip(batch, photos)]) for batch in prog]
    # each added scale brings the reconstruction closer to the photo
    assert scores[-1] > scores[0] + 3
    assert scores[-1] == pytest.approx(tok.info["quality"]["held_out_psnr"], abs=0.01)


def test_per_file_policy_fits_any_photo(tok, tmp_path):
    photo = np.random.default_rng(4).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    idx, used = tok.encode_image(photo)
    assert used.shape == (32, 32, 3) and idx.shape == (1, 103)
    assert np.array_equal(used, fit_square(photo, 32))
    recon, idx2, used2 = tok.reconstruct_image(photo)
    assert np.array_equal(idx2, idx) and np.array_equal(used2, used)
    assert recon.shape == (1, 32, 32, 3)
    assert tok.describe_tokens(idx) == "103 tokens over 5 scales"
    assert tok.preprocessing == "images are fitted to 32x32: centre square, Lanczos"
    tok.save_tokens(tmp_path / "a.vqt", idx, image_size=(32, 32))
    np.testing.assert_array_equal(tok.decode_file(tok.load_tokens(tmp_path / "a.vqt")), recon)
    rows = dict(tok.describe())
    assert rows["kind"] == "multi-scale" and rows["scales"].startswith("[1, 2, 3, 5, 8] (103")
    assert "scales on CPUExecutionProvider" in rows["providers"]


def test_reconstruct_is_encode_then_decode(tok):
    img = np.random.default_rng(6).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    recon, idx = tok.reconstruct(img)
    np.testing.assert_array_equal(idx, tok.encode(img))
    np.testing.assert_array_equal(recon, tok.decode(idx))
    assert "tokenizer" not in tok.info["graph_files"]


def test_max_side_below_the_resolution_is_refused(bundle):
    small = load(bundle, max_side=16)
    with pytest.raises(ValueError, match="makes 32x32 images, above max_side=16"):
        small.decode(np.zeros((1, 103), np.int64))
    with pytest.raises(ValueError, match="exceeds the limit of 16"):
        small.encode(np.zeros((32, 32, 3), np.uint8))
