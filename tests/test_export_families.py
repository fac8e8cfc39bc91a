"""Imported single-scale families (diffusers, LlamaGen, taming) exported through the one
pipeline and run by the runtime: tokens equal to the PyTorch module, images within tolerance.

Small configurations with random weights, written by the tests in each project's own file
format (official_layouts.py); diffusers' own VQModel is the reference for its family.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from official_layouts import llamagen_layout, random_tensors, taming_layout
from PIL import Image

from vqedge.commands.main import main
from vqedge.export import export_pretrained
from vqedge.export.families import load_family, taming_config
from vqedge.export.validate import count_ties
from vqedge.models import blocks, llamagen, taming
from vqedge.models.import_checkpoint import CheckpointError
from vqedge.runtime import load
from vqedge.runtime.inputs import ImageTooLarge
from vqedge.runtime.manifest import sha256_file

# every test here exports a bundle (tens of seconds each): not part of the development loop
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:the float32 number:UserWarning"),
]

QUIET = {"log": lambda _msg: None}
# f = 4 everywhere: the smallest factor a bundle's config takes
LLAMAGEN_SMALL = llamagen.LlamaGenConfig(
    ch_mult=(1, 2, 2), codebook_size=64, embed_dim=8, z_channels=32, ch=32, num_res_blocks=1
)
TAMING_DDCONFIG = {
    "double_z": False,
    "z_channels": 32,
    "resolution": 64,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 32,
    "ch_mult": [1, 2, 2],
    "num_res_blocks": 1,
    "attn_resolutions": [16],
    "dropout": 0.0,
}
TAMING_SMALL = taming.TamingConfig(
    backbone=blocks.Backbone(
        ch=32, channels=(32, 64, 64), num_res_blocks=1, z_channels=32, attn_levels=(2,)
    ),
    n_embed=64,
    embed_dim=16,
)


def images(b: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """float32 [b, 3, h, w] in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return (rng.random((b, 3, h, w), dtype=np.float32) * 2 - 1).astype(np.float32)


def small_diffusers():
    from diffusers import VQModel

    torch.manual_seed(0)
    ref = VQModel(
        block_out_channels=(32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        layers_per_block=1,
        latent_channels=4,
        num_vq_embeddings=64,
        norm_num_groups=16,
    ).eval()
    # codes at the latents' scale: the lookup is exercised, not one code for everything
    with torch.no_grad():
        ref.quantize.embedding.weight.normal_()
    return ref


# -- fixtures: one export per family ---------------------------------------------------------


@pytest.fixture(scope="module")
def diffusers_ref(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dvq") / "tiny-vqmodel"
    ref = small_diffusers()
    ref.save_pretrained(folder)
    return ref, folder


@pytest.fixture(scope="module")
def diffusers_bundle(diffusers_ref, tmp_path_factory):
    _, folder = diffusers_ref
    out = tmp_path_factory.mktemp("dvq_bundle") / "bundle"
    manifest = export_pretrained(folder, "diffusers", out, **QUIET)
    return out, manifest


@pytest.fixture(scope="module")
def llamagen_file(tmp_path_factory):
    c = LLAMAGEN_SMALL
    tensors = random_tensors(llamagen_layout(c.ch, c.ch_mult, 1, c.z_channels, 64, 8), seed=3)
    path = tmp_path_factory.mktemp("lg") / "vq_tiny.pt"
    torch.save({"model": tensors, "optimizer": {}, "steps": 10}, path)
    cfg = tmp_path_factory.mktemp("lg_cfg") / "config.json"
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(c).items()}
    cfg.write_text(json.dumps(fields))
    return path, cfg


@pytest.fixture(scope="module")
def llamagen_bundle(llamagen_file, tmp_path_factory):
    path, cfg = llamagen_file
    out = tmp_path_factory.mktemp("lg_bundle") / "bundle"
    export_pretrained(path, "llamagen", out, config=cfg, precisions=("fp32",), **QUIET)
    return out


@pytest.fixture(scope="module")
def taming_file(tmp_path_factory):
    b = TAMING_SMALL.backbone
    layout = taming_layout(b.ch, (1, 2, 2), 1, b.z_channels, 64, 16)
    tensors = random_tensors(layout, seed=5)
    loss = {"loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4)}
    folder = tmp_path_factory.mktemp("taming")
    torch.save({"state_dict": {**tensors, **loss}, "global_step": 7}, folder / "last.ckpt")
    params = {"embed_dim": 16, "n_embed": 64, "ddconfig": TAMING_DDCONFIG}
    yaml = pytest.importorskip("yaml")
    (folder / "model.yaml").write_text(yaml.safe_dump({"model": {"params": params}}))
    return folder / "last.ckpt", folder / "model.yaml"


# -- diffusers: its own VQModel is the reference ---------------------------------------------


def test_diffusers_bundle_gives_vqmodels_latents_tokens_and_images(diffusers_ref, diffusers_bundle):
    ref, _ = diffusers_ref
    tok = load(diffusers_bundle[0])
    x = images(3, 64, 96, seed=1)  # batch 3 and a size never traced
    with torch.no_grad():
        lat_ref = ref.encode(torch.from_numpy(x)).latents
        _, _, (_, _, idx_ref) = ref.quantize(lat_ref)
        img_ref = ref.decode(lat_ref).sample.clamp(-1, 1).numpy()
    np.testing.assert_allclose(tok.encode_latent(x), lat_ref.numpy(), atol=1e-4)
    idx = tok.encode(x)
    np.testing.assert_array_equal(idx.ravel(), idx_ref.numpy().ravel())
    np.testing.assert_allclose(tok.decode(idx, output="float"), img_ref, atol=1e-3)


def test_manifest_records_source_sizes_and_gflop(diffusers_ref, diffusers_bundle):
    ref, folder = diffusers_ref
    out, m = diffusers_bundle
    weights = folder / "diffusion_pytorch_model.safetensors"
    src = m["source"]
    assert src["family"] == "diffusers"
    assert src["checkpoint"] == "tiny-vqmodel/diffusion_pytorch_model.safetensors"
    assert src["sha256"] == sha256_file(weights)
    assert src["config"]["block_out_channels"] == [32, 64, 64]
    assert m["name"] == "diffusers-tiny-vqmodel"
    assert m["export"]["checkpoint_sha256"] == src["sha256"]
    sizes = m["sizes"]
    assert sizes["parameters"] == sum(p.numel() for p in ref.parameters())
    for name, size in sizes["weight_files"].items():
        assert (out / name).stat().st_size == size
    gflop = sizes["gflop_per_image"]
    assert sizes["gflop_image_size"] == [256, 256]
    assert set(gflop) == {"encoder", "quantizer", "decoder", "total"}
    assert gflop["decoder"] > gflop["quantizer"] > 0
    assert gflop["total"] == pytest.approx(sum(v for k, v in gflop.items() if k != "total"), 1e-3)


def test_int8_is_reported_not_refused_and_fitness_follows_agreement(diffusers_bundle):
    _, m = diffusers_bundle
    assert set(m["variants"]) == {"fp32", "fp16", "int8"}
    for prec, v in m["variants"].items():
        q = v["quality"]
        agree = q["token_agreement"]
        assert q["fit_for_generator_training"] == (agree is None or agree >= 0.99), prec
        assert q["held_out_preprocessing"] == "centre square, Lanczos to 256x256"
    assert m["variants"]["fp32"]["quality"]["fit_for_generator_training"] is True
    # nothing to rewrite for the CPU provider (no ConvTranspose): one decoder form
    assert "cpu_graphs" not in m["variants"]["fp32"]


def test_fp32_graphs_compute_group_norm_from_channel_stats(diffusers_bundle):
    """The fp32 graphs every provider runs hold the rewritten GroupNorm (it passed the gate
    above); fp16 and int8 are made from the graphs as the exporter wrote them."""
    import onnx

    out, m = diffusers_bundle

    def ops(prec: str, graph: str) -> list[str]:
        f = out / m["variants"][prec]["graphs"][graph]["file"]
        return [n.op_type for n in onnx.load(str(f), load_external_data=False).graph.node]

    for graph in ("encoder", "decoder"):
        fp32 = ops("fp32", graph)
        assert "InstanceNormalization" not in fp32 and "ReduceMean" in fp32, graph
        assert "InstanceNormalization" in ops("fp16", graph)
        assert "InstanceNormalization" in ops("int8", graph)
    assert all(not c["failures"] for c in m["validation"]["cases"])


def test_load_time_precisions_run(diffusers_bundle):
    x = images(1, 32, 32, seed=2)
    ref = load(diffusers_bundle[0]).encode(x)
    fp16 = load(diffusers_bundle[0], precision="fp16", verify=False).encode(x)
    assert fp16.shape == ref.shape and fp16.dtype == np.int64


# -- LlamaGen: the dict with its `model` key, the l2 lookup ----------------------------------


def test_llamagen_bundle_tokens_equal_pytorch(llamagen_file, llamagen_bundle):
    path, cfg = llamagen_file
    model = load_family(path, "llamagen", config=cfg)
    tok = load(llamagen_bundle)
    assert tok.config.l2_normalize and tok.codebook_size == 64 and tok.f == 4
    x = images(3, 48, 80, seed=4)
    with torch.no_grad():
        idx_ref = model.quantize_latent(model.encode(torch.from_numpy(x))).numpy()
        img_ref = model.decode_indices(torch.from_numpy(idx_ref)).numpy()
    np.testing.assert_array_equal(tok.encode(x), idx_ref)
    np.testing.assert_allclose(tok.decode(idx_ref, output="float"), img_ref, atol=1e-3)
    np.testing.assert_allclose(
        tok.codebook, model.quantize.get_codebook().numpy(), atol=1e-6
    )  # unit rows: what the decoder receives


# -- taming: the Lightning checkpoint, through the command line ------------------------------


def test_taming_config_from_its_yaml_matches_the_backbone():
    cfg = taming_config({"model": {"params": {"n_embed": 64, "embed_dim": 16,
                                              "ddconfig": TAMING_DDCONFIG}}})  # fmt: skip
    assert cfg == TAMING_SMALL


def test_taming_cli_export_runs_and_matches_pytorch(taming_file, tmp_path, capsys):
    ckpt, yaml_cfg = taming_file
    out = tmp_path / "bundle"
    argv = ["export", str(ckpt), "--from", "taming", "--config", str(yaml_cfg)]
    assert main([*argv, "--out", str(out), "--precisions", "fp32"]) == 0
    model = load_family(ckpt, "taming", config=yaml_cfg)
    tok = load(out)
    x = images(1, 64, 64, seed=6)
    with torch.no_grad():
        idx_ref = model.quantize_latent(model.encode(torch.from_numpy(x))).numpy()
    np.testing.assert_array_equal(tok.encode(x), idx_ref)
    m = json.loads((out / "manifest.json").read_text())
    assert m["source"]["family"] == "taming" and m["source"]["checkpoint"] == "last.ckpt"
    assert m["source"]["sha256"] == sha256_file(ckpt)
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "taming: last.ckpt" in shown
    assert "GFLOP" in shown and "per 256x256 image" in shown
    assert "parameters" in shown and "weights.fp32.bin" in shown
    _benchmark_model_gives_bundle_tokens(out, ckpt)


def _benchmark_model_gives_bundle_tokens(bundle, checkpoint, side: int = 64) -> None:
    """The benchmark harness's PyTorch peer of an imported bundle (its family's loader on
    the source checkpoint) gives the bundle's tokens, and says the weights are the same."""
    from vqedge.benchmarks import bundles

    bf = bundles.facts(bundle)
    model, weights = bundles.torch_model(bf, str(checkpoint))
    assert weights["same_as_bundle"], weights
    encode, quantize, decode = bundles.torch_stages(model, bf)
    x = images(1, side, side, seed=8)
    with torch.no_grad():
        idx = quantize(encode(torch.from_numpy(x)))
        img = decode(idx)
    tok = load(bundle)
    np.testing.assert_array_equal(tok.encode(x), idx.numpy())
    np.testing.assert_allclose(tok.decode(idx.numpy(), output="float"), img.numpy(), atol=1e-3)
    _, seeded = bundles.torch_model(bf)  # no checkpoint: seeded random weights, said so
    assert not seeded["same_as_bundle"] and "seeded random weights" in seeded["what"]


def test_benchmark_peer_of_llamagen_and_diffusers_bundles(
    llamagen_file, llamagen_bundle, diffusers_ref, diffusers_bundle
):
    _benchmark_model_gives_bundle_tokens(llamagen_bundle, llamagen_file[0])
    _benchmark_model_gives_bundle_tokens(diffusers_bundle[0], diffusers_ref[1])


# -- tiling: refused, with the reason --------------------------------------------------------


def test_tiled_calls_are_refused_saying_why(llamagen_bundle):
    tok = load(llamagen_bundle)
    why = "attention sees the whole latent"
    with pytest.raises(ValueError, match=f"tiled encode is refused: .*{why}"):
        tok.encode_tiled(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match=f"tiled decode is refused: .*{why}"):
        tok.decode_tiled(np.zeros((1, 8, 8), np.int64))
    with pytest.raises(ValueError, match=why):
        tok.reconstruct_tiled(np.zeros((64, 64, 3), np.uint8))


def test_attention_bounds_the_default_max_side(llamagen_bundle, tmp_path):
    """Attention's scores grow with side^4: the default max_side keeps them within 1 GiB
    (128 positions a side of the map attention runs on), and larger images are refused
    before anything runs, saying why; the per-file methods run whole up to it."""
    tok = load(llamagen_bundle)
    stride = tok.manifest["input"]["attention_stride"]
    assert stride == tok.f == 4  # this small LlamaGen attends only at its latent
    assert tok.max_side == 128 * stride == 512
    advice = "attention compares every pair of positions of its 1/4 map"
    with pytest.raises(ValueError, match=f"exceeds the limit of 512 pixels: resize it: .*{advice}"):
        tok.encode(np.zeros((520, 40, 3), np.uint8))
    with pytest.raises(ValueError, match=f"above max_side=512 .*{advice}"):
        tok.decode(np.zeros((1, 8, 130), np.int64))
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 1100)).save(path)
    for call in (tok.encode_image, tok.reconstruct_image):
        with pytest.raises(ImageTooLarge, match=f"40x1100.*512 pixels.*{advice}"):
            call(path)
    # above TILE_ABOVE but within max_side, the per-file methods run the image whole
    wide = load(llamagen_bundle, max_side=1100)
    assert "was asked for" in wide.size_advice
    idx, _ = wide.encode_image(np.zeros((8, 1100, 3), np.uint8))
    assert idx.shape == (1, 2, 275)
    assert np.array_equal(idx, wide.encode(np.zeros((8, 1100, 3), np.uint8)))
    idx, _ = tok.encode_image(np.zeros((64, 48, 3), np.uint8))
    assert idx.shape == (1, 16, 12)


# -- bad input: clear errors, nothing written ------------------------------------------------


def test_wrong_family_checkpoint_writes_nothing(llamagen_file, tmp_path):
    path, _ = llamagen_file
    out = tmp_path / "bundle"
    with pytest.raises(CheckpointError, match="taming VQGAN"):
        export_pretrained(path, "taming", out, **QUIET)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_family_preset_and_config_are_refused(llamagen_file, tmp_path):
    path, _ = llamagen_file
    with pytest.raises(ValueError, match="unknown family 'vqgan'"):
        load_family(path, "vqgan")
    with pytest.raises(ValueError, match="preset must be one of"):
        load_family(path, "llamagen", preset="vq32")
    bad = tmp_path / "bad.json"
    bad.write_text('{"ch_mult": [1, 2], "codebook_sise": 5}')
    with pytest.raises(ValueError, match="unknown fields \\['codebook_sise'\\]"):
        load_family(path, "llamagen", config=bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_family(tmp_path / "none.pt", "llamagen")


def test_cli_offers_every_family_the_library_exports(capsys):
    from vqedge.models import registry

    assert registry.names() == ("var", "llamagen", "taming", "diffusers", "open-magvit2")
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "{var,llamagen,taming,diffusers,open-magvit2}" in capsys.readouterr().out


def test_cli_refuses_preset_without_from(tmp_path, capsys):
    assert main(["export", "--preset", "vq16", "--out", str(tmp_path / "b")]) == 1
    assert "--from" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


# -- the released sizes, once each -----------------------------------------------------------


def _full_size_checkpoint(family: str, folder):
    """Random weights at a released size, saved as the family's authors save them."""
    if family == "diffusers":
        from diffusers import VQModel

        torch.manual_seed(0)
        ref = VQModel(
            block_out_channels=(128, 256, 512),
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            layers_per_block=2,
            latent_channels=3,
            num_vq_embeddings=8192,
            vq_embed_dim=3,
        )
        with torch.no_grad():
            ref.quantize.embedding.weight.normal_()
        ref.save_pretrained(folder / "vq-f4")
        return folder / "vq-f4", None
    if family == "llamagen":
        torch.save({"model": random_tensors(llamagen_layout(), 1)}, folder / "vq_ds16_c2i.pt")
        return folder / "vq_ds16_c2i.pt", "vq16"
    sd = random_tensors(taming_layout(), 2)
    sd["loss.discriminator.main.0.weight"] = torch.randn(64, 3, 4, 4)
    torch.save({"state_dict": sd}, folder / "last.ckpt")
    return folder / "last.ckpt", "f16-1024"


@pytest.mark.heavy
@pytest.mark.parametrize("family", ["diffusers", "llamagen", "taming"])
def test_full_size_family_exports_and_runs(family, tmp_path):
    ckpt, preset = _full_size_checkpoint(family, tmp_path)
    out = tmp_path / "bundle"
    m = export_pretrained(ckpt, family, out, preset=preset, precisions=("fp32",), **QUIET)
    model = load_family(ckpt, family, preset)
    assert m["sizes"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert m["sizes"]["parameters"] > 50e6 and m["sizes"]["gflop_per_image"]["total"] > 50
    tok = load(out)
    x = images(1, 256, 256, seed=9)
    with torch.no_grad():
        latent = model.encode(torch.from_numpy(x))
        idx_ref = model.quantize_latent(latent).numpy()
    mismatches, ties = count_ties(model.quantize, latent, tok.encode(x), idx_ref)
    assert mismatches == ties  # identical but for float-rounding ties
