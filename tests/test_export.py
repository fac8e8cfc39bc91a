"""The export stage: parity of the ONNX graphs with PyTorch, the gate, the bundle, bad input.

The shipped checkpoint is exported once per module (the slow part, ~1 min on 2 cores) and the
bundle is shared; the failure paths use a tiny untrained model and fp32 only.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from vqedge.export import ExportValidationError, export_bundle
from vqedge.export.graphs import OPSET
from vqedge.export.validate import count_ties, validate_fp32
from vqedge.export.variants import phase_convolutions
from vqedge.models.checkpoint import DEFAULT_PRETRAINED, load_pretrained, save_checkpoint
from vqedge.models.data import held_out_paths
from vqedge.models.vqvae import VQVAE
from vqedge.runtime.cli import main
from vqedge.runtime.config import VQVAEConfig
from vqedge.runtime.images import float_to_uint8, pad_to_multiple, uint8_to_float
from vqedge.runtime.inputs import read_image
from vqedge.runtime.manifest import MANIFEST, SIZE_POLICY, BundleError, read_manifest
from vqedge.runtime.metrics import psnr

# fp16 conversion warns about every tiny weight it rounds
pytestmark = pytest.mark.filterwarnings("ignore:the float32 number:UserWarning")

GRAPHS = ("encoder", "quantizer", "decoder", "tokenizer")
META_KEYS = (
    "vqedge.config",
    "vqedge.downsample_factor",
    "vqedge.codebook_size",
    "vqedge.graph",
    "vqedge.precision",
)


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The shipped checkpoint exported once, in every precision."""
    out = tmp_path_factory.mktemp("export") / "bundle"
    export_bundle(None, out, log=lambda _msg: None)
    return out


@pytest.fixture(scope="module")
def manifest(bundle) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


@pytest.fixture(scope="module")
def torch_model() -> VQVAE:
    return load_pretrained()


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory, tiny_config) -> Path:
    """An untrained tiny VQVAE checkpoint: quick to export, quality irrelevant."""
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("tiny"), 0, VQVAE(tiny_config))


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    """The held-out photos (china, flower, chelsea) as uint8 [H, W, 3]."""
    return [read_image(p) for p in held_out_paths()]


# -- helpers ----------------------------------------------------------------------------------


def _session(path: Path) -> ort.InferenceSession:
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert s.get_providers() == ["CPUExecutionProvider"]
    return s


def _graph_file(bundle: Path, manifest: dict, precision: str, graph: str) -> Path:
    return bundle / manifest["variants"][precision]["graphs"][graph]["file"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> content), and every folder (-> b'/')."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"/")
        for p in sorted(folder.rglob("*"))
    }


def _corrupt_largest_initializer(path: Path) -> str:
    """Change the numbers of the graph's largest float initializer in place; return its name."""
    model = onnx.load(str(path))
    floats = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    init = max(floats, key=lambda t: int(np.prod(t.dims)))
    arr = numpy_helper.to_array(init)
    new = (-arr + 0.05).astype(np.float32)
    assert np.abs(new - arr).max() > 0.01
    init.CopyFrom(numpy_helper.from_array(new, init.name))
    onnx.save(model, str(path))
    return init.name


def _nothing_hidden_beside(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- parity with PyTorch, at sizes and batch sizes never seen at trace time -------------------
# (the trace inputs are 2x3x128x160; these crops differ from the gate's own validation crops)

PARITY_CASES = {
    "1x3x64x64": lambda ph: ph[1][40:104, 300:364],
    "3x3x72x136": lambda ph: np.stack([p[100:172, 200:336] for p in ph]),
    "1x3x512x384": lambda ph: ph[1][:384, 100:612].transpose(1, 0, 2),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_fp32_graphs_match_pytorch(case, bundle, manifest, torch_model, photos):
    x_np = uint8_to_float(np.ascontiguousarray(PARITY_CASES[case](photos)))
    assert "x".join(map(str, x_np.shape)) == case
    B, _, H, W = x_np.shape
    f = torch_model.downsample_factor
    h, w = H // f, W // f
    x = torch.from_numpy(x_np)
    with torch.no_grad():
        t_latent = torch_model.encode(x)
        _, _, t_idx = torch_model.quantize(t_latent)
        t_img = torch_model.decode_indices(t_idx).numpy()
    s = {g: _session(_graph_file(bundle, manifest, "fp32", g)) for g in GRAPHS}

    (o_latent,) = s["encoder"].run(None, {"image": x_np})
    assert o_latent.shape == (B, torch_model.config.code_dim, h, w)
    assert np.abs(o_latent - t_latent.numpy()).max() <= 1e-4

    (o_idx,) = s["quantizer"].run(None, {"latent": t_latent.numpy()})
    assert o_idx.dtype == np.int64 and o_idx.shape == (B, h, w)
    mismatches, ties = count_ties(torch_model.quantize, t_latent, o_idx, t_idx.numpy())
    assert mismatches == ties  # only float-rounding ties may pick another code
    assert ties <= 0.01 * o_idx.size  # and those are rare, not a blanket excuse

    (o_img,) = s["decoder"].run(None, {"indices": t_idx.numpy()})
    assert o_img.shape == (B, 3, H, W) and o_img.dtype == np.float32
    assert np.abs(o_img - t_img).max() <= 1e-3

    f_idx, f_img = s["tokenizer"].run(None, {"image": x_np})
    mismatches, ties = count_ties(torch_model.quantize, t_latent, f_idx, t_idx.numpy())
    assert mismatches == ties and ties <= 0.01 * f_idx.size
    with torch.no_grad():
        f_ref = torch_model.decode_indices(torch.from_numpy(f_idx)).numpy()
    assert np.abs(f_img - f_ref).max() <= 1e-3
    if mismatches == 0:
        assert np.abs(f_img - t_img).max() <= 1e-3


# -- the gate ---------------------------------------------------------------------------------


def test_gate_fails_on_a_corrupted_graph(bundle, manifest, torch_model, tmp_path):
    image = torch.from_numpy(uint8_to_float(read_image(held_out_paths()[2])[100:164, 200:264]))
    paths = {}
    for g in GRAPHS:
        paths[g] = tmp_path / f"{g}.onnx"
        shutil.copyfile(_graph_file(bundle, manifest, "fp32", g), paths[g])
    passed, results = validate_fp32(torch_model, paths, [image])
    assert passed and results[0]["failures"] == []  # the intact graphs pass on this image

    expected = {
        "encoder": "latent differs",
        "quantizer": "indices differ",
        "decoder": "image differs",
    }
    for graph, failure in expected.items():
        _corrupt_largest_initializer(paths[graph])
        passed, results = validate_fp32(torch_model, paths, [image])
        assert not passed, graph
        assert any(failure in msg for msg in results[0]["failures"]), (graph, results[0])
        shutil.copyfile(_graph_file(bundle, manifest, "fp32", graph), paths[graph])


def _inject_decoder_fault(monkeypatch) -> list[str]:
    """Let export_bundle's export_graph run, then corrupt the decoder file it wrote."""
    import vqedge.export.bundle as bundle_mod

    real = bundle_mod.export_graph
    corrupted: list[str] = []

    def export_then_corrupt(module, example, name, path, **kw):
        real(module, example, name, path, **kw)
        if name == "decoder":
            corrupted.append(_corrupt_largest_initializer(Path(path)))

    monkeypatch.setattr(bundle_mod, "export_graph", export_then_corrupt)
    return corrupted


def test_export_refuses_graphs_that_disagree_and_writes_nothing(tiny_ckpt, tmp_path, monkeypatch):
    corrupted = _inject_decoder_fault(monkeypatch)
    out = tmp_path / "bundle"
    with pytest.raises(ExportValidationError, match="image differs") as err:
        export_bundle(tiny_ckpt, out, precisions=("fp32",), log=lambda _msg: None)
    assert corrupted, "the fault was not injected"
    assert "FAIL" in str(err.value)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind


def test_failed_forced_export_keeps_existing_output(tiny_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    (out / "fp32").mkdir(parents=True)
    (out / MANIFEST).write_text('{"format": "vqedge-bundle", "old": true}\n')
    (out / "fp32" / "encoder.onnx").write_bytes(b"old graph bytes")
    before = _snapshot(out)
    corrupted = _inject_decoder_fault(monkeypatch)
    with pytest.raises(ExportValidationError):
        export_bundle(tiny_ckpt, out, force=True, precisions=("fp32",), log=lambda _msg: None)
    assert corrupted
    assert _snapshot(out) == before
    assert _nothing_hidden_beside(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


# -- the manifest -----------------------------------------------------------------------------


def test_manifest_lists_every_file_with_its_sha256(bundle, manifest):
    on_disk = {str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {MANIFEST}
    assert {"codebook.npy", "fp32/tokenizer.onnx", "int8/decoder.onnx"} <= on_disk
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((bundle / rel).read_bytes()).hexdigest() == digest, rel
    assert read_manifest(bundle, verify=True) == manifest
    # the files the variants name are all listed (and so verified)
    for v in manifest["variants"].values():
        for g in GRAPHS:
            assert v["graphs"][g]["file"] in manifest["files"]


def test_tampered_or_missing_file_is_named(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    graph = copy / "fp32" / "decoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="fp32/decoder.onnx"):
        read_manifest(copy, verify=True)
    read_manifest(copy, verify=False)  # the manifest itself is still readable

    shutil.copyfile(bundle / "fp32" / "decoder.onnx", graph)
    read_manifest(copy, verify=True)
    (copy / "codebook.npy").unlink()
    with pytest.raises(BundleError, match="codebook.npy"):
        read_manifest(copy, verify=True)


def test_every_onnx_file_carries_its_facts(bundle, manifest):
    files = sorted(bundle.rglob("*.onnx"))
    # fp32: 4 graphs; fp16 and int8: encoder, decoder, tokenizer (the fp32 quantizer is
    # shared); fp32 and int8 also the CPU provider's decoder
    assert len(files) == 12
    for path in files:
        model = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in model.metadata_props}
        assert set(META_KEYS) <= set(meta), path
        assert json.loads(meta["vqedge.config"]) == manifest["config"]
        assert meta["vqedge.downsample_factor"] == "4"
        assert meta["vqedge.codebook_size"] == str(manifest["config"]["codebook_size"])
        assert meta["vqedge.graph"] == path.stem
        assert meta["vqedge.precision"] == path.parent.name
        assert model.producer_name == "vqedge"
    assert not list(bundle.rglob("*.data"))  # weights inside the graphs, no side files


def test_manifest_records_export_facts(bundle, manifest, torch_model):
    ex = manifest["export"]
    assert ex["exporter"] == "dynamo"
    assert ex["opset"] == OPSET == 18
    for g in GRAPHS:
        model = onnx.load(str(_graph_file(bundle, manifest, "fp32", g)))
        assert model.ir_version == ex["ir_version"]
        opsets = {o.domain: o.version for o in model.opset_import}
        assert opsets.get("", opsets.get("ai.onnx")) == OPSET
    assert ex["producers"]["torch"] == torch.__version__
    assert ex["producers"]["onnx"] == onnx.__version__
    assert ex["producers"]["onnxruntime"] == ort.__version__
    assert "vqedge" in ex["producers"]
    shipped = DEFAULT_PRETRAINED / "model.safetensors"
    assert ex["checkpoint_sha256"] == hashlib.sha256(shipped.read_bytes()).hexdigest()

    assert manifest["format"] == "vqedge-bundle"
    assert manifest["config"] == torch_model.config.to_dict()
    assert VQVAEConfig.from_dict(manifest["config"]) == torch_model.config
    assert manifest["input"] == {
        "color": "RGB",
        "layout": "NCHW",
        "dtype": "float32",
        "range": [-1.0, 1.0],
        "downsample_factor": 4,
        "codebook_size": torch_model.config.codebook_size,
        "code_dim": torch_model.config.code_dim,
        "size_policy": SIZE_POLICY,
    }
    tok = manifest["variants"]["fp32"]["graphs"]["tokenizer"]
    assert [i["name"] for i in tok["inputs"]] == ["image"]
    assert tok["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert [o["name"] for o in tok["outputs"]] == ["indices", "reconstruction"]
    assert tok["outputs"][0]["dtype"] == "int64"

    codebook = np.load(bundle / manifest["codebook"]["file"])
    assert codebook.shape == tuple(manifest["codebook"]["shape"])
    np.testing.assert_array_equal(codebook, torch_model.quantize.get_codebook().numpy())

    val = manifest["validation"]
    assert val["passed"] is True
    assert val["tolerances"]["latent_atol"] == 1e-4 and val["tolerances"]["image_atol"] == 1e-3
    shapes = [c["shape"] for c in val["cases"]]
    assert [1, 3, 64, 64] in shapes and [3, 3, 72, 136] in shapes and [1, 3, 512, 384] in shapes
    for c in val["cases"]:
        assert c["failures"] == []
        assert c["latent_max_abs"] <= 1e-4 and c["image_max_abs"] <= 1e-3
        assert c["index_mismatches"] == c["index_ties"]


# -- reduced-precision variants ---------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_variants_load_and_give_finite_results(precision, bundle, manifest, photos):
    graphs = manifest["variants"][precision]["graphs"]
    assert graphs["quantizer"]["file"] == "fp32/quantizer.onnx"  # the argmin stays fp32
    enc = onnx.load(str(bundle / graphs["encoder"]["file"]))
    if precision == "fp16":
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in enc.graph.initializer)
    else:
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in enc.graph.node}

    s = {g: _session(bundle / graphs[g]["file"]) for g in GRAPHS}
    img = photos[2]  # chelsea, 300x451: padded to 300x452
    x = pad_to_multiple(uint8_to_float(img), 4)
    (latent,) = s["encoder"].run(None, {"image": x})
    assert latent.dtype == np.float32 and np.isfinite(latent).all()
    (idx,) = s["quantizer"].run(None, {"latent": latent})
    (recon,) = s["decoder"].run(None, {"indices": idx})
    assert recon.shape == x.shape and np.isfinite(recon).all()
    f_idx, f_recon = s["tokenizer"].run(None, {"image": x})
    assert np.isfinite(f_recon).all() and f_recon.shape == x.shape
    assert f_idx.min() >= 0 and f_idx.max() < manifest["config"]["codebook_size"]

    quality = manifest["variants"][precision]["quality"]
    fp32_psnr = manifest["variants"]["fp32"]["quality"]["held_out_psnr"]
    assert quality["held_out_psnr"] >= fp32_psnr - 0.5
    assert quality["size_bytes"] > 0


def test_int8_quality_bar_recomputed(bundle, manifest, photos):
    """The manifest's held-out PSNR figures hold when measured again from the files."""
    measured = {}
    for precision in ("fp32", "int8"):
        s = _session(_graph_file(bundle, manifest, precision, "tokenizer"))
        values = []
        for img in photos:
            x = pad_to_multiple(uint8_to_float(img), 4)
            _, recon = s.run(None, {"image": x})
            assert np.isfinite(recon).all()
            out = float_to_uint8(recon[:, :, : img.shape[0], : img.shape[1]])[0]
            values.append(psnr(out, img))
        measured[precision] = float(np.mean(values))
        reported = manifest["variants"][precision]["quality"]["held_out_psnr"]
        assert measured[precision] == pytest.approx(reported, abs=0.01)
    assert measured["int8"] >= measured["fp32"] - 0.5
    assert 0.0 <= manifest["variants"]["int8"]["quality"]["token_agreement"] <= 1.0


# -- the CPU provider's decoders (ConvTranspose as phase convolutions) ------------------------


@pytest.mark.parametrize("cin,cout,h,w", [(5, 3, 7, 9), (16, 8, 1, 1), (8, 4, 4, 6)])
def test_phase_convolutions_equal_conv_transpose(cin, cout, h, w):
    """The rewrite is the same arithmetic: every output phase's products and sums."""
    torch.manual_seed(cin * 100 + h)
    conv = torch.nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)
    x = torch.randn(2, cin, h, w)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], name="up",
                               kernel_shape=[4, 4], strides=[2, 2], pads=[1, 1, 1, 1])],
        "t",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", cin, "h", "w"])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", cout, "H", "W"])],
        [numpy_helper.from_array(conv.weight.detach().numpy(), "w"),
         numpy_helper.from_array(conv.bias.detach().numpy(), "b")],
    )  # fmt: skip
    plain = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    phased = phase_convolutions(plain)
    onnx.checker.check_model(phased, full_check=True)
    ops = [n.op_type for n in phased.graph.node]
    assert ops.count("Conv") == 4 and "ConvTranspose" not in ops
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # noqa: E731
    y_plain = run(plain).run(None, {"x": x.numpy()})[0]
    y_phased = run(phased).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        ref = conv(x).numpy()
    assert y_phased.shape == y_plain.shape == (2, cout, 2 * h, 2 * w) == ref.shape
    np.testing.assert_allclose(y_plain, ref, atol=1e-5)
    np.testing.assert_allclose(y_phased, ref, atol=1e-5)


def test_cpu_decoders_match_plain_ones_and_hold_quality(bundle, manifest, photos):
    """fp32 and int8 carry a CPU-provider decoder without ConvTranspose; fp32's gives the
    plain decoder's images, int8's the manifest's quality, measured again from the files."""
    fp32_psnr = manifest["variants"]["fp32"]["quality"]["held_out_psnr"]
    idx = [
        _session(_graph_file(bundle, manifest, "fp32", "tokenizer")).run(
            None, {"image": pad_to_multiple(uint8_to_float(img), 4)}
        )[0]
        for img in photos
    ]
    for precision in ("fp32", "int8"):
        v = manifest["variants"][precision]
        cpu = bundle / v["cpu_graphs"]["decoder"]["file"]
        assert "ConvTranspose" not in {n.op_type for n in onnx.load(str(cpu)).graph.node}
        s_cpu = _session(cpu)
        s_plain = _session(_graph_file(bundle, manifest, precision, "decoder"))
        values = []
        for img, i in zip(photos, idx):
            rec = s_cpu.run(None, {"indices": i})[0]
            if precision == "fp32":
                assert np.abs(rec - s_plain.run(None, {"indices": i})[0]).max() <= 1e-4
            out = float_to_uint8(rec[:, :, : img.shape[0], : img.shape[1]])[0]
            values.append(psnr(out, img))
        assert np.mean(values) == pytest.approx(v["quality"]["cpu"]["held_out_psnr"], abs=0.01)
        assert np.mean(values) >= fp32_psnr - 0.5


# -- bad input: clear errors, nothing written -------------------------------------------------


def test_missing_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        export_bundle(tmp_path / "nope", tmp_path / "runs" / "bundle", precisions=("fp32",))
    assert list(tmp_path.iterdir()) == []


def test_corrupt_checkpoint(tiny_ckpt, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    (ckpt / "model.safetensors").write_bytes(b"this is not a safetensors file" * 10)
    with pytest.raises(ValueError, match=r"model\.safetensors are corrupt"):
        export_bundle(ckpt, tmp_path / "bundle", precisions=("fp32",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_config_that_does_not_match_weights(tiny_ckpt, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["codebook_size"] = 64
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match its config.json"):
        export_bundle(ckpt, tmp_path / "bundle", precisions=("fp32",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_existing_output_needs_force(tiny_ckpt, tmp_path):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="--force"):
        export_bundle(tiny_ckpt, out, precisions=("fp32",))
    assert _snapshot(out) == {"keep.txt": b"mine"}
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_output_in_unwritable_location(tiny_ckpt, tmp_path):
    # tests run as root, which writes through read-only modes: use a parent that is a file
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for out in (blocker / "bundle", blocker / "sub" / "bundle"):
        with pytest.raises(OSError, match="cannot write the bundle: .*a-file is not a folder"):
            export_bundle(tiny_ckpt, out, precisions=("fp32",))
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]
    assert blocker.read_text() == "x"


def test_unsupported_opset_and_precision(tiny_ckpt, tmp_path):
    with pytest.raises(ValueError, match="unsupported opset 17"):
        export_bundle(tiny_ckpt, tmp_path / "bundle", opset=17)
    with pytest.raises(ValueError, match="unknown precisions"):
        export_bundle(tiny_ckpt, tmp_path / "bundle", precisions=("fp32", "int4"))
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_errors_readably(tiny_ckpt, bundle, tmp_path, capsys):
    before = _snapshot(bundle)
    rc = main(["export", str(tiny_ckpt), "--out", str(bundle), "--precisions", "fp32"])
    err = capsys.readouterr().err
    assert rc != 0
    assert "vqedge export: error:" in err and "already exists" in err and "--force" in err
    assert "Traceback" not in err
    assert _snapshot(bundle) == before

    rc = main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and "no checkpoint at" in err
    assert not (tmp_path / "out").exists()


def test_reexport_agrees_with_the_shipped_bundle(bundle, manifest, torch_model, photos):
    """The bundle shipped with the runtime is the shipped checkpoint's, within parity."""
    from vqedge.runtime.tokenizer import bundle_path

    shipped = bundle_path(None)
    shipped_manifest = read_manifest(shipped)
    assert (
        shipped_manifest["export"]["checkpoint_sha256"] == manifest["export"]["checkpoint_sha256"]
    )
    # the same config; keys added since the bundle shipped take their defaults
    same = VQVAEConfig.from_dict(shipped_manifest["config"])
    assert same == VQVAEConfig.from_dict(manifest["config"])
    fresh, ship = (
        {g: _session(_graph_file(b, m, "fp32", g)) for g in ("tokenizer", "decoder")}
        for b, m in ((bundle, manifest), (shipped, shipped_manifest))
    )
    for img in photos:
        x = pad_to_multiple(uint8_to_float(img), 4)
        idx_a = fresh["tokenizer"].run(None, {"image": x})[0]
        idx_b = ship["tokenizer"].run(None, {"image": x})[0]
        with torch.no_grad():
            latent = torch_model.encode(torch.from_numpy(x))
        mismatches, ties = count_ties(torch_model.quantize, latent, idx_a, idx_b)
        assert mismatches == ties
        img_a = fresh["decoder"].run(None, {"indices": idx_a})[0]
        img_b = ship["decoder"].run(None, {"indices": idx_a})[0]
        assert np.abs(img_a - img_b).max() <= 1e-3
    for precision, v in manifest["variants"].items():
        reported = shipped_manifest["variants"][precision]["quality"]["held_out_psnr"]
        assert abs(v["quality"]["held_out_psnr"] - reported) < 0.05, precision
