"""VAR's VQVAE exported as a multi-scale bundle and run by the torch-free runtime.

Weights are drawn at random in VAR's official layout and saved as VAR saves them
(torch.save of the raw state dict); the bundle must give the PyTorch module's tokens at every
scale, its images (last scale and every prefix) and its var_input, as VAR's own methods lay
them out.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from official_layouts import random_tensors, var_layout
from test_families import VAR_SMALL, var_small_tensors

from vqedge.export.families import source_facts
from vqedge.export.graphs import EncoderGraph, FhatDecoderGraph
from vqedge.export.pipeline import export_bundle, recipe_for
from vqedge.export.var_recipe import VARRecipe
from vqedge.models import var
from vqedge.models.data import held_out_paths
from vqedge.runtime import MultiScaleTokenizer, load
from vqedge.runtime.fidelity import TOKENS_MIN_AGREEMENT
from vqedge.runtime.images import fit_square, uint8_to_float
from vqedge.runtime.inputs import read_image
from vqedge.runtime.manifest import MULTI_SCALE

IMAGE_ATOL = 1e-3
FHAT_ATOL = 1e-4


# every test here exports a bundle: not part of the development loop
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _inference_only():
    with torch.no_grad():
        yield


def photos(b: int, side: int, seed: int = 0) -> np.ndarray:
    """uint8 [b, side, side, 3]: smooth gradients plus noise, far from one flat colour."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side] / side
    base = np.stack([yy, xx, (yy + xx) / 2], -1)[None] * 200
    return np.clip(base + rng.normal(0, 25, (b, side, side, 3)), 0, 255).astype(np.uint8)


def save_official(tmp_path, tensors: dict[str, torch.Tensor], name: str):
    path = tmp_path / name
    torch.save(tensors, path)
    return path


def export_var(model, out, checkpoint=None, preset=None, **kw):
    """Export a loaded VAR model as ``vqedge export --from var`` does, its file in ``source``."""
    source = source_facts(checkpoint, "var", preset, model) if checkpoint else None
    return export_bundle(model, out, source=source, **kw)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small VAR exported once: (model, bundle folder, manifest, checkpoint path)."""
    tmp = tmp_path_factory.mktemp("var_small")
    path = save_official(tmp, var_small_tensors(3), "vae_small.pth")
    model = var.load_var(path, config=VAR_SMALL)
    out = tmp / "bundle"
    manifest = export_var(model, out, checkpoint=path, log=lambda _: None)
    return model, out, manifest, path


def test_recipe_registered_for_var_model():
    model = var.VARVQVAE(VAR_SMALL)
    recipe = recipe_for(model)
    assert isinstance(recipe, VARRecipe)
    assert recipe.model is model  # the model itself: it offers the export surface
    assert recipe.config.resolution == model.resolution == 16


def test_graph_modules_are_vars_encode_and_decode():
    model = var.load_var(var_small_tensors(4), config=VAR_SMALL)
    x = torch.from_numpy(uint8_to_float(photos(2, 16)))
    torch.testing.assert_close(EncoderGraph(model)(x), model.encode(x), rtol=0, atol=0)
    f = torch.randn(2, VAR_SMALL.z_channels, 4, 4)
    torch.testing.assert_close(FhatDecoderGraph(model)(f), model.decode(f), rtol=0, atol=0)


def test_manifest_records_gate_per_scale_source_and_variants(small):
    model, out, manifest, path = small
    assert manifest["kind"] == MULTI_SCALE
    assert manifest["validation"]["passed"]
    cases = manifest["validation"]["cases"]
    assert [c["shape"][0] for c in cases] == [1, 3, 2]  # batches 1 and 3 never traced
    for c in cases:
        assert len(c["index_mismatches_per_scale"]) == len(VAR_SMALL.patch_nums)
        # identical tokens, or every difference at the first differing scale is a tie
        # (later scales then quantize another residual, so they may differ)
        per_scale, first = c["index_mismatches_per_scale"], c["first_mismatch_scale"]
        if first == -1:
            assert sum(per_scale) == 0, c
        else:
            assert sum(per_scale[:first]) == 0 and per_scale[first] == c["first_scale_ties"], c
        assert max(c["f_hat_max_abs"], c["var_input_max_abs"]) <= FHAT_ATOL
        assert c["image_max_abs"] <= IMAGE_ATOL
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    assert {k: manifest["source"][k] for k in ("family", "checkpoint", "sha256")} == {
        "family": "var",
        "checkpoint": "vae_small.pth",
        "sha256": sha,
    }
    assert manifest["architecture"]["ch"] == VAR_SMALL.ch
    assert manifest["scales"]["patch_nums"] == list(VAR_SMALL.patch_nums)
    assert manifest["scales"]["num_tokens"] == 1 + 4 + 9 + 16
    assert set(manifest["variants"]) == {"fp32", "fp16", "int8"}
    for prec, v in manifest["variants"].items():
        q = v["quality"]
        assert len(q["token_agreement_per_scale"]) == len(VAR_SMALL.patch_nums)
        assert all(0.0 <= a <= 1.0 for a in q["token_agreement_per_scale"])
        assert len(q["held_out_psnr_per_prefix"]) == len(VAR_SMALL.patch_nums)
        expected_fit = prec == "fp32" or q["token_agreement"] >= TOKENS_MIN_AGREEMENT
        assert q["fit_for_generator_training"] is expected_fit, prec
    assert manifest["variants"]["fp32"]["quality"]["fit_for_generator_training"] is True
    assert manifest["sizes"]["parameters"] == sum(p.numel() for p in model.parameters())


def test_runtime_tokens_per_scale_equal_pytorch_at_untraced_batch(small):
    model, out, _, _ = small
    tok = load(out)
    assert isinstance(tok, MultiScaleTokenizer)
    assert tok.patch_nums == VAR_SMALL.patch_nums and tok.resolution == 16
    imgs = photos(3, 16, seed=5)
    ours = tok.img_to_idxBl(imgs)
    ref = model.img_to_idxBl(torch.from_numpy(uint8_to_float(imgs)))
    assert len(ours) == len(ref)
    for si, (a, b) in enumerate(zip(ours, ref)):
        pn = VAR_SMALL.patch_nums[si]
        assert a.dtype == np.int64 and a.shape == (3, pn * pn), si
        np.testing.assert_array_equal(a, b.numpy(), err_msg=f"scale {si}")


def test_runtime_idxBl_to_img_last_and_every_prefix_match_pytorch(small):
    model, out, _, _ = small
    tok = load(out)
    ref_Bl = model.img_to_idxBl(torch.from_numpy(uint8_to_float(photos(2, 16, seed=6))))
    idx_Bl = [t.numpy() for t in ref_Bl]
    last = tok.idxBl_to_img(idx_Bl, output="float", last_one=True)
    ref_last = model.idxBl_to_img(ref_Bl, last_one=True)
    assert last.shape == tuple(ref_last.shape) == (2, 3, 16, 16)
    np.testing.assert_allclose(last, ref_last.numpy(), atol=IMAGE_ATOL, rtol=0)
    every = tok.idxBl_to_img(idx_Bl, output="float", last_one=False)
    ref_every = model.idxBl_to_img(ref_Bl, last_one=False)
    assert len(every) == len(ref_every) == len(VAR_SMALL.patch_nums)
    for k, (a, b) in enumerate(zip(every, ref_every)):
        np.testing.assert_allclose(a, b.numpy(), atol=IMAGE_ATOL, rtol=0, err_msg=f"prefix {k}")
    # a prefix of two scales decodes as VAR decodes those two scales
    two = tok.idxBl_to_img(idx_Bl[:2], output="float", last_one=True)
    np.testing.assert_allclose(
        two, model.idxBl_to_img(ref_Bl[:2], last_one=True).numpy(), atol=IMAGE_ATOL, rtol=0
    )


def test_runtime_var_input_matches_pytorch(small):
    model, out, _, _ = small
    tok = load(out)
    ref_Bl = model.img_to_idxBl(torch.from_numpy(uint8_to_float(photos(3, 16, seed=7))))
    ours = tok.idxBl_to_var_input([t.numpy() for t in ref_Bl])
    ref = model.idxBl_to_var_input(ref_Bl)
    assert ours.shape == tuple(ref.shape) == (3, 4 + 9 + 16, VAR_SMALL.z_channels)
    np.testing.assert_allclose(ours, ref.numpy(), atol=FHAT_ATOL, rtol=0)
    # the last scale is not read, so it may be left out, as in VAR
    np.testing.assert_allclose(
        tok.idxBl_to_var_input([t.numpy() for t in ref_Bl[:-1]]), ours, atol=0, rtol=0
    )


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_reduced_precisions_run_and_agree_as_recorded(small, precision):
    """The runtime at a reduced precision gives, on the export's own held-out inputs, the
    token agreement with fp32 that the manifest records, overall and per scale."""
    _, out, manifest, _ = small
    imgs = np.stack([fit_square(read_image(p), 16) for p in held_out_paths()])
    ref = load(out).encode(imgs)
    # measured by the test itself: unverified (a random model's reduced tokens may not hold)
    idx = load(out, precision=precision, verify=False).encode(imgs)
    assert idx.shape == ref.shape == (3, 30)
    assert idx.min() >= 0 and idx.max() < VAR_SMALL.vocab_size
    q = manifest["variants"][precision]["quality"]
    assert float((idx == ref).mean()) == pytest.approx(q["token_agreement"], abs=1e-12)
    split = load(out).split
    per_scale = [float((a == b).mean()) for a, b in zip(split(idx), split(ref))]
    assert per_scale == pytest.approx(q["token_agreement_per_scale"], abs=1e-12)
    assert q["fit_for_generator_training"] == (q["token_agreement"] >= TOKENS_MIN_AGREEMENT)


# ---------------------------------------------------------------- full size (slow)


@pytest.fixture(scope="module")
def var_pth(tmp_path_factory):
    """VAR's released layout (324 tensors) with random weights, as VAR saves it."""
    tensors = random_tensors(var_layout(), seed=20)
    return save_official(tmp_path_factory.mktemp("var_full"), tensors, "vae_ch160v4096z32.pth")


@pytest.mark.heavy
def test_var_256_bundle_tokens_per_scale_and_var_input(var_pth, tmp_path):
    model = var.load_var(var_pth, preset="256")
    out = tmp_path / "var256"
    manifest = export_var(
        model, out, precisions=("fp32",), checkpoint=var_pth, preset="256", log=print
    )
    assert manifest["validation"]["passed"]
    assert manifest["scales"]["num_tokens"] == 680
    tok = load(out)
    imgs = photos(1, 256, seed=21)
    ours = tok.img_to_idxBl(imgs)
    ref = model.img_to_idxBl(torch.from_numpy(uint8_to_float(imgs)))
    for si, (a, b) in enumerate(zip(ours, ref)):
        np.testing.assert_array_equal(a, b.numpy(), err_msg=f"scale {si}")
    var_in = tok.idxBl_to_var_input(ours)
    assert var_in.shape == (1, 679, 32)
    np.testing.assert_allclose(
        var_in, model.idxBl_to_var_input(ref).numpy(), atol=FHAT_ATOL, rtol=0
    )


@pytest.mark.heavy
def test_var_512_builds_exports_and_round_trips_batch_1(var_pth, tmp_path):
    model = var.load_var(var_pth, preset="512")
    assert model.resolution == 512
    out = tmp_path / "var512"
    export_var(model, out, precisions=("fp32",), checkpoint=var_pth, preset="512")
    tok = load(out)
    imgs = photos(1, 512, seed=22)
    recon, idx = tok.reconstruct(imgs, output="float")
    assert idx.shape == (1, sum(p * p for p in var.PATCH_NUMS_512))
    ref_Bl = model.img_to_idxBl(torch.from_numpy(uint8_to_float(imgs)))
    np.testing.assert_array_equal(idx, torch.cat(ref_Bl, 1).numpy())
    np.testing.assert_allclose(
        recon, model.idxBl_to_img(ref_Bl, last_one=True).numpy(), atol=IMAGE_ATOL, rtol=0
    )


def test_demo_serves_an_imported_var_bundle(small):
    """`vqedge demo --scales-bundle DIR` runs an imported VAR bundle in its next-scale section."""
    from vqedge.demo.engine import ScalesEngine

    model, out, _, _ = small
    engine = ScalesEngine(out)
    assert engine.available and engine.sides == tuple(model.patch_nums)
    photo = photos(1, 40, seed=31)[0]  # not square, not the bundle's size: fitted first
    r = engine.analyze(photo)
    assert [m.shape for m in r["maps"]] == [(pn, pn) for pn in model.patch_nums]
    assert len(r["recons"]) == len(model.patch_nums) == len(r["psnr_db"])
    assert r["fitted"].shape == (model.resolution, model.resolution, 3)
    ref = model.img_to_idxBl(torch.from_numpy(uint8_to_float(r["fitted"])))
    for m, b in zip(r["maps"], ref):
        np.testing.assert_array_equal(m.reshape(1, -1), b.numpy())
    maps, recons = engine.galleries(r)
    assert len(maps) == len(recons) == len(model.patch_nums)


def test_imported_bundle_runs_where_torch_cannot_be_imported(small):
    """The runtime runs an imported bundle with torch unimportable (as in the base install)."""
    import json
    import subprocess
    import sys

    model, out, _, _ = small
    img = photos(1, model.resolution, seed=32)
    code = (
        "import sys, json, numpy as np\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "from vqedge.runtime import load\n"
        f"tok = load({str(out)!r})\n"
        f"img = np.array(json.loads(sys.stdin.read()), dtype=np.uint8)\n"
        "idx_Bl = tok.img_to_idxBl(img)\n"
        "x = tok.idxBl_to_var_input(idx_Bl)\n"
        "print(json.dumps({'tokens': [i.tolist() for i in idx_Bl], 'var_input': list(x.shape)}))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(img.tolist()),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    ref = model.img_to_idxBl(torch.from_numpy(uint8_to_float(img)))
    assert [np.asarray(t).tolist() for t in got["tokens"]] == [t.tolist() for t in ref]
    assert got["var_input"] == [1, sum(p * p for p in model.patch_nums) - 1, VAR_SMALL.z_channels]
