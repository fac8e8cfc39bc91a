"""Lookup-free bundles: Open-MAGVIT2 (LFQ) against the ``open-magvit2`` package and FSQ against
``vector-quantize-pytorch``, exported and run through the runtime, the CLI, the demo's engine
and the dataset stage. No codebook file: an index's code is computed from the index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from node_runtime import encode_in_node
from official_layouts import open_magvit2_checkpoint
from open_magvit2.taming.modules.diffusionmodules.improved_model import Decoder as RefDecoder
from open_magvit2.taming.modules.diffusionmodules.improved_model import Encoder as RefEncoder
from open_magvit2.taming.modules.vqvae.lookup_free_quantize import LFQ as RefLFQ
from PIL import Image
from vector_quantize_pytorch import FSQ as RefFSQ

from vqedge.commands.common import EXIT_OK
from vqedge.commands.main import main
from vqedge.demo.engine import MODES, Engine
from vqedge.models.data import held_out_paths
from vqedge.models.lookup_free import FSQ, FSQVQVAE, LFQ
from vqedge.models.open_magvit2 import PRESETS, OpenMagvit2, config_from_dict
from vqedge.runtime import load
from vqedge.runtime.images import fit_square, float_to_uint8, pad_to_multiple, uint8_to_float
from vqedge.runtime.inputs import read_image
from vqedge.runtime.lookup_free import LookupFreeTokenizer
from vqedge.runtime.manifest import BundleError
from vqedge.runtime.metrics import psnr
from vqedge.runtime.tokens import load_tokens

BITS = 18
# a configuration none of the presets has: f=4, 32 channels, one block per level
SMALL_DDCONFIG = {
    "double_z": False,
    "z_channels": BITS,
    "resolution": 128,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 1, 2],
    "num_res_blocks": 1,
}


@pytest.fixture(autouse=True)
def _inference_only():
    with torch.no_grad():
        yield


# -- the quantizers against their references ----------------------------------------------


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [7, 5, 5, 5, 5], [4, 4, 3]])
def test_fsq_indices_and_codes_equal_vector_quantize_pytorch(levels):
    ref, ours = RefFSQ(levels), FSQ(levels)
    z = torch.randn(2, len(levels), 9, 11, generator=torch.Generator().manual_seed(0)) * 2
    codes, idx = ref(z)
    assert torch.equal(ours.indices(z), idx.long())
    assert torch.equal(ours.embed(idx), codes)
    assert torch.equal(ours.embed(idx), ref.indices_to_codes(idx))
    # every index maps to a code and back
    every = torch.arange(ours.num_embeddings).view(1, -1, 1)
    assert torch.equal(ref.codes_to_indices(ours.embed(every).permute(0, 2, 3, 1)), every)


def test_lfq_indices_codes_and_sub_tokens_equal_open_magvit2():
    ref = RefLFQ(dim=10, codebook_size=2**10, token_factorization=True, factorized_bits=[4, 6])
    ref.eval()
    ours = LFQ(10, (4, 6))
    z = torch.randn(2, 10, 6, 7, generator=torch.Generator().manual_seed(0))
    quantized, _, (pre, post) = ref(z)
    idx = ours.indices(z)
    assert torch.equal(idx.flatten() % 16, pre.long()) and torch.equal(idx.flatten() // 16, post)
    assert torch.equal(ours.embed(idx), quantized)
    plain = RefLFQ(dim=10, codebook_size=2**10).eval()
    assert torch.equal(idx.flatten(), plain(z)[2].long())


def test_fsq_config_sets_k_and_code_dim_and_refuses_bad_levels():
    from vqedge.runtime.config import VQVAEConfig

    cfg = VQVAEConfig(fsq_levels=(8, 5, 5, 5))
    assert (cfg.codebook_size, cfg.code_dim) == (1000, 4)
    assert VQVAEConfig.from_dict(cfg.to_dict()) == cfg
    assert "fsq_levels" not in VQVAEConfig().to_dict()  # codebook bundles' manifests unchanged
    with pytest.raises(ValueError, match="at least 3"):
        VQVAEConfig(fsq_levels=(2, 5))


# -- Open-MAGVIT2: the model against the package's modules ----------------------------------


@pytest.mark.parametrize("preset, yaml_name", [("128", "128_L"), ("256", "256_L")])
def test_presets_are_the_published_configs_and_layouts(preset, yaml_name):
    import open_magvit2

    path = Path(open_magvit2.__file__).parent / f"configs/gpu/imagenet_lfqgan_{yaml_name}.yaml"
    published = yaml.safe_load(path.read_text())
    assert config_from_dict(published) == PRESETS[preset]
    dd = published["model"]["init_args"]["ddconfig"]
    with torch.device("meta"):
        ref = {
            **{f"encoder.{k}": v.shape for k, v in RefEncoder(**dd).state_dict().items()},
            **{f"decoder.{k}": v.shape for k, v in RefDecoder(**dd).state_dict().items()},
        }
        ours = {k: v.shape for k, v in OpenMagvit2(PRESETS[preset]).state_dict().items()}
    assert ours == ref


@pytest.fixture(scope="module")
def magvit(tmp_path_factory):
    """A small Open-MAGVIT2 in the package's own modules, random weights, saved as its
    Lightning checkpoint + yaml, and exported by `vqedge export --from open-magvit2`."""
    root = tmp_path_factory.mktemp("magvit")
    enc, dec, state = open_magvit2_checkpoint(SMALL_DDCONFIG, seed=0)
    torch.save({"state_dict": state, "epoch": 1}, root / "small.ckpt")
    init = {"ddconfig": SMALL_DDCONFIG, "n_embed": 2**BITS, "embed_dim": BITS}
    init |= {"token_factorization": True, "factorized_bits": [9, 9]}
    (root / "small.yaml").write_text(yaml.safe_dump({"model": {"init_args": init}}))
    bundle = root / "bundle"
    args = ["export", str(root / "small.ckpt"), "--from", "open-magvit2"]
    args += ["--config", str(root / "small.yaml"), "--out", str(bundle)]
    assert main([*args, "--precisions", "fp32", "fp16"]) == EXIT_OK
    return enc.eval(), dec.eval(), bundle


def photos() -> list[np.ndarray]:
    """The held-out photos: 256 x 256 centre squares and one non-square crop."""
    imgs = [read_image(p) for p in held_out_paths()]
    return [fit_square(i, 256) for i in imgs] + [imgs[2][100:212, 40:200]]


def test_runtime_reproduces_the_references_indices_and_decode_on_photos(magvit):
    enc, dec, bundle = magvit
    tok = load(bundle, providers="cpu")
    assert isinstance(tok, LookupFreeTokenizer) and tok.codebook_size == 2**BITS
    ref_lfq = RefLFQ(dim=BITS, codebook_size=2**BITS, token_factorization=True).eval()
    agree, total = 0, 0
    for img in photos():
        x = torch.from_numpy(uint8_to_float(img))
        codes, _, (pre, post) = ref_lfq(enc(x))
        ref_idx = (pre + post * 2**9).view(1, *codes.shape[2:]).numpy()
        idx = tok.encode(img)
        agree, total = agree + int((idx == ref_idx).sum()), total + idx.size
        # the two sub-token maps are the reference's
        low, high = tok.factorize(ref_idx)
        assert np.array_equal(low.ravel(), pre) and np.array_equal(high.ravel(), post)
        assert np.array_equal(tok.unfactorize(low, high), ref_idx)
        ref_img = float_to_uint8(dec(codes).clamp(-1, 1).numpy())[0]
        assert psnr(tok.decode(ref_idx)[0], ref_img) >= 45.0
    assert agree / total >= 0.999, agree / total


@pytest.mark.slow
def test_the_browser_package_runs_a_lookup_free_bundle(magvit, tmp_path):
    _, _, bundle = magvit
    img = photos()[0][:64, :96]
    js = encode_in_node(bundle, img, tmp_path, extra="tok.factorize(enc.indices).high.length")
    assert js["kind"] == "lookup-free" and js["cls"] == "LookupFreeTokenizer"
    expected = load(bundle, providers="cpu").encode(img)[0]
    assert js["hw"] == list(expected.shape) and js["extra"] == expected.size
    # WASM sums may round apart from the CPU provider's near a sign: the tokens tier
    assert np.mean(np.array(js["indices"]) == expected.ravel()) >= 0.99


def test_bundle_holds_no_codebook_of_two_to_the_eighteen(magvit):
    _, _, bundle = magvit
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert "codebook" not in manifest and not (bundle / "codebook.npy").exists()
    assert manifest["kind"] == "lookup-free"
    assert manifest["quantizer"] == {
        "quantizer": "lfq",
        "bits": BITS,
        "factorized_bits": [9, 9],
        "scale": 1.0,
    }
    largest = 0
    for graph in bundle.glob("*.onnx"):
        for t in onnx.load(str(graph), load_external_data=True).graph.initializer:
            largest = max(largest, int(np.prod(t.dims)) if t.dims else 1)
    assert largest < 2**BITS, largest  # a 2^18-entry codebook would be 2^18 x 18 values
    # every weights file is far smaller than such a codebook, even at one byte a value
    assert all(p.stat().st_size < 2**BITS * BITS for p in bundle.iterdir())


def test_tokens_of_18_bits_round_trip_through_a_vqt_file(magvit, tmp_path):
    _, _, bundle = magvit
    tok = load(bundle, providers="cpu")
    idx = np.array([[[0, 2**BITS - 1, 12345], [2**17, 1, 2**BITS - 2]]], np.int64)
    tok.save_tokens(tmp_path / "t.vqt", idx, image_size=(8, 12))
    tf = tok.load_tokens(tmp_path / "t.vqt")
    assert tf.bits == BITS and tf.codebook_size == 2**BITS
    assert np.array_equal(tf.indices, idx)
    with pytest.raises(ValueError, match="262144"):
        tok.save_tokens(tmp_path / "bad.vqt", idx + 1)


def test_cli_stages_run_a_lookup_free_bundle(magvit, tmp_path, capsys):
    _, _, bundle = magvit
    photo = tmp_path / "p.png"
    Image.fromarray(photos()[3]).save(photo)  # 112 x 160: not a multiple of 16
    vqt, out = tmp_path / "p.vqt", tmp_path / "back.png"
    assert main(["encode", str(photo), "-o", str(vqt), "--bundle", str(bundle)]) == EXIT_OK
    assert main(["decode", str(vqt), "-o", str(out), "--bundle", str(bundle)]) == EXIT_OK
    assert Image.open(out).size == (160, 112)
    recon = tmp_path / "r.png"
    assert main(["reconstruct", str(photo), "-o", str(recon), "--bundle", str(bundle)]) == EXIT_OK
    assert np.array_equal(np.asarray(Image.open(recon)), np.asarray(Image.open(out)))
    assert main(["info", str(bundle)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "lookup-free" in text and "LFQ: sign of 18 channels" in text
    assert "statistics of the whole code map" in text  # why tiling is refused
    assert main(["verify", str(bundle), "--precision", "fp32"]) == EXIT_OK
    # fp16 is judged per stage: a sign flip of any of 18 bits changes a token, so its encoder
    # may fall short of the tokens tier (exit 4) while its decoder holds the pixels tier
    capsys.readouterr()
    assert main(["verify", str(bundle), "--precision", "fp16"]) in (EXIT_OK, 4)
    rows = [r.split() for r in capsys.readouterr().out.splitlines() if r.startswith("fp16")]
    assert any(r[1] == "decoder" and r[-1] == "holds" for r in rows), rows
    tf = load_tokens(vqt)
    assert tf.bits == BITS and tf.indices.shape == (1, 28, 40)


def test_demo_engine_analyzes_encodes_edits_and_decodes(magvit):
    _, _, bundle = magvit
    eng = Engine(bundle, max_side=256)
    img = photos()[3]
    r = eng.analyze(img, "fp32", "CPUExecutionProvider")
    assert r["metrics"]["codebook_size"] == 2**BITS and r["metrics"]["bits_per_token"] == BITS
    assert r["token_map"].shape == img.shape
    vqt, js = eng.encode(img, "fp32", "CPUExecutionProvider", "p")
    assert np.array_equal(np.asarray(js["indices"]), r["idx"])
    assert np.array_equal(eng.decode_file(vqt, "fp32", "CPUExecutionProvider"), r["recon"])
    st = eng.start_edit(img, r["idx"])
    out, box, note = eng.apply_edit(
        st, (0, 3, 0, 3), MODES[0], 2**BITS - 1, 0, None, "fp32", "CPUExecutionProvider"
    )
    assert (st.edited[:4, :4] == 2**BITS - 1).all() and "16 tokens changed" in note
    assert out.shape == img.shape


def test_dataset_stage_tokenizes_a_folder(magvit, tmp_path):
    _, _, bundle = magvit
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(photos()[1:]):
        Image.fromarray(img).save(folder / f"{i}.png")
    out = tmp_path / "shards"
    args = ["tokenize", str(folder), "--out", str(out), "--bundle", str(bundle), "--workers", "1"]
    assert main(args) == EXIT_OK
    rows = [r for s in sorted(out.glob("*.parquet")) for r in pq.read_table(s).to_pylist()]
    tok = load(bundle, providers="cpu")
    assert len(rows) == 3
    for row in rows:
        (expected,) = tok.img_to_idxBl(row["path"])
        assert np.array_equal(row["tokens"], expected[0])
        assert max(row["tokens"]) < 2**BITS


def test_bad_quantizer_in_manifest_is_a_bundle_error(magvit, tmp_path):
    import shutil

    from vqedge.runtime.lookup_free import parse_quantizer

    with pytest.raises(BundleError, match="quantizer"):
        parse_quantizer({"quantizer": {"quantizer": "lfq", "bits": 17}}, BITS, 2**BITS)
    with pytest.raises(BundleError, match="fsq"):
        parse_quantizer({"quantizer": {"quantizer": "fsq", "levels": [8, 5]}}, 4, 1000)
    _, _, bundle = magvit
    copy = tmp_path / "b"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["quantizer"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="'quantizer'"):
        load(copy, providers="cpu", verify=False)


# -- FSQ, vqedge's own: train, export, run --------------------------------------------------


def test_fsq_trains_exports_and_runs_with_vector_quantize_pytorch_indices(photo_folder, tmp_path):
    run, bundle, levels = tmp_path / "run", tmp_path / "bundle", [8, 5, 5, 5]
    train = ["train", str(photo_folder), "--out", str(run), "--steps", "3", "--batch-size", "2"]
    train += ["--crop", "32", "--base-channels", "8", "--channel-mult", "1", "2", "2"]
    train += ["--res-blocks", "1", "--mid-blocks", "1", "--eval-every", "3"]
    train += ["--fsq-levels", *map(str, levels)]
    with torch.enable_grad():  # this module's tests run under no_grad otherwise
        assert main(train) == EXIT_OK
    assert main(["export", str(run), "--out", str(bundle), "--precisions", "fp32"]) == EXIT_OK
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["quantizer"] == {"quantizer": "fsq", "levels": levels}
    assert "codebook" not in manifest
    tok = load(bundle, providers="cpu")
    assert tok.codebook_size == 1000 and tok.codes(np.array([[[999]]])).shape == (1, 4, 1, 1)
    img = photos()[3]
    latent = tok.encode_latent(img)
    ref_codes, ref_idx = RefFSQ(levels)(torch.from_numpy(latent))
    idx = tok.quantize(latent)
    assert np.array_equal(idx, ref_idx.numpy())
    assert np.array_equal(tok.encode(img), idx)
    np.testing.assert_array_equal(tok.codes(idx), ref_codes.numpy())
    assert tok.decode(idx, size=img.shape[:2]).shape == (1, *img.shape)
    var_in = tok.idxBl_to_var_input(tok.img_to_idxBl(img))
    assert np.array_equal(var_in[0], tok.codes(idx)[0].reshape(4, -1).T)
    with pytest.raises(ValueError, match="no token factorization"):
        tok.factorize(idx)
    # the PyTorch model comes back from the bundle alone (no codebook to restore)
    from vqedge.models.checkpoint import model_from_bundle

    model = model_from_bundle(bundle)
    assert isinstance(model, FSQVQVAE)
    x = torch.from_numpy(pad_to_multiple(uint8_to_float(img), 4))
    assert np.array_equal(model.quantize_latent(model.encode(x)).numpy(), idx)


def test_loader_takes_the_ema_weights_where_the_checkpoint_has_them():
    from vqedge.models.open_magvit2 import load_open_magvit2

    _, _, state = open_magvit2_checkpoint(SMALL_DDCONFIG, seed=1)
    # LitEma keeps a copy of every parameter under model_ema., its name without dots
    ema = {f"model_ema.{k.replace('.', '')}": v + 1.0 for k, v in state.items()}
    ema |= {"model_ema.decay": torch.tensor(0.999), "model_ema.num_updates": torch.tensor(5)}
    cfg = config_from_dict({"ddconfig": SMALL_DDCONFIG})
    plain = load_open_magvit2({"state_dict": state}, config=cfg)
    averaged = load_open_magvit2({"state_dict": state | ema}, config=cfg)
    w = "decoder.adaptive.0.gamma.weight"
    assert torch.equal(plain.state_dict()[w], state[w])
    assert torch.equal(averaged.state_dict()[w], state[w] + 1.0)
