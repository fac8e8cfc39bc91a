"""The export stage: parity of the ONNX graphs with PyTorch, the gate, the format-2 bundle
(each weight stored once per precision), bad input.

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
from vqedge.export.variants import FP32_SUFFIX, phase_convolutions
from vqedge.export.weights import read_external
from vqedge.models.checkpoint import (
    DEFAULT_PRETRAINED,
    EMA_STATS,
    PRETRAINED_DIR,
    load_model,
    load_pretrained,
    model_from_bundle,
    onnx_initializers,
    save_checkpoint,
    shipped_bundle,
)
from vqedge.models.data import held_out_paths
from vqedge.models.vqvae import VQVAE
from vqedge.runtime.config import VQVAEConfig
from vqedge.runtime.images import fit_square, float_to_uint8, pad_to_multiple, uint8_to_float
from vqedge.runtime.inputs import read_image
from vqedge.runtime.manifest import (
    DECODER,
    ENCODER,
    FORMAT_VERSION,
    MANIFEST,
    QUANTIZER,
    SIZE_POLICY,
    BundleError,
    read_manifest,
)
from vqedge.runtime.metrics import psnr

# fp16 conversion warns about every tiny weight it rounds
pytestmark = pytest.mark.filterwarnings("ignore:the float32 number:UserWarning")

GRAPHS = (ENCODER, QUANTIZER, DECODER)
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


def _sessions(bundle: Path, manifest: dict, precision: str) -> dict[str, ort.InferenceSession]:
    return {g: _session(_graph_file(bundle, manifest, precision, g)) for g in GRAPHS}


def _tokenize(s: dict[str, ort.InferenceSession], x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices, reconstruction): the three graphs in turn."""
    (latent,) = s[ENCODER].run(None, {"image": x})
    (idx,) = s[QUANTIZER].run(None, {"latent": latent})
    (recon,) = s[DECODER].run(None, {"indices": idx})
    return idx, recon


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> content), and every folder (-> b'/')."""
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"/")
        for p in sorted(folder.rglob("*"))
    }


def _corrupt_largest_initializer(path: Path) -> str:
    """Change the numbers of the graph's largest float initializer in place (the graph is
    saved with its weights inline); return its name."""
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


def _graph_files(bundle: Path) -> list[Path]:
    return sorted(bundle.glob("*.onnx"))


# -- parity with PyTorch, at sizes and batch sizes never seen at trace time -------------------
# (the trace inputs are 2x3x128x160; these crops differ from the gate's own validation crops)

PARITY_CASES = {
    "1x3x64x64": lambda ph: ph[1][40:104, 300:364],
    "3x3x72x136": lambda ph: np.stack([p[100:172, 200:336] for p in ph]),
    "1x3x512x384": lambda ph: ph[1][:384, 100:612].transpose(1, 0, 2),
}


@pytest.mark.slow
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
    s = _sessions(bundle, manifest, "fp32")

    (o_latent,) = s[ENCODER].run(None, {"image": x_np})
    assert o_latent.shape == (B, torch_model.config.code_dim, h, w)
    assert np.abs(o_latent - t_latent.numpy()).max() <= 1e-4

    (o_idx,) = s[QUANTIZER].run(None, {"latent": t_latent.numpy()})
    assert o_idx.dtype == np.int64 and o_idx.shape == (B, h, w)
    mismatches, ties = count_ties(torch_model.quantize, t_latent, o_idx, t_idx.numpy())
    assert mismatches == ties  # only float-rounding ties may pick another code
    assert ties <= 0.01 * o_idx.size  # and those are rare, not a blanket excuse

    (o_img,) = s[DECODER].run(None, {"indices": t_idx.numpy()})
    assert o_img.shape == (B, 3, H, W) and o_img.dtype == np.float32
    assert np.abs(o_img - t_img).max() <= 1e-3


# -- the gate ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_gate_fails_on_a_corrupted_graph(bundle, manifest, torch_model, tmp_path):
    image = torch.from_numpy(uint8_to_float(read_image(held_out_paths()[2])[100:164, 200:264]))
    paths = {}
    for g in GRAPHS:  # each graph inline (onnx.load reads its external weights)
        paths[g] = tmp_path / f"{g}.onnx"
        onnx.save(onnx.load(str(_graph_file(bundle, manifest, "fp32", g))), str(paths[g]))
    originals = {g: paths[g].read_bytes() for g in GRAPHS}
    passed, results = validate_fp32(torch_model, paths, [image])
    assert passed and results[0]["failures"] == []  # the intact graphs pass on this image

    expected = {
        ENCODER: "latent differs",
        QUANTIZER: "indices differ",
        DECODER: "image differs",
    }
    for graph, failure in expected.items():
        _corrupt_largest_initializer(paths[graph])
        passed, results = validate_fp32(torch_model, paths, [image])
        assert not passed, graph
        assert any(failure in msg for msg in results[0]["failures"]), (graph, results[0])
        paths[graph].write_bytes(originals[graph])


def _inject_decoder_fault(monkeypatch) -> list[str]:
    """Let export_bundle's export_graph run, then corrupt the decoder file it wrote."""
    import vqedge.export.pipeline as pipeline

    real = pipeline.export_graph
    corrupted: list[str] = []

    def export_then_corrupt(module, example, name, path, *args, **kw):
        real(module, example, name, path, *args, **kw)
        if name == DECODER:
            corrupted.append(_corrupt_largest_initializer(Path(path)))

    monkeypatch.setattr(pipeline, "export_graph", export_then_corrupt)
    return corrupted


@pytest.mark.slow
def test_export_refuses_graphs_that_disagree_and_writes_nothing(tiny_ckpt, tmp_path, monkeypatch):
    corrupted = _inject_decoder_fault(monkeypatch)
    out = tmp_path / "bundle"
    with pytest.raises(ExportValidationError, match="image differs") as err:
        export_bundle(tiny_ckpt, out, precisions=("fp32",), log=lambda _msg: None)
    assert corrupted, "the fault was not injected"
    assert "FAIL" in str(err.value)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind


@pytest.mark.slow
def test_failed_forced_export_keeps_existing_output(tiny_ckpt, tmp_path, monkeypatch):
    out = tmp_path / "bundle"
    out.mkdir(parents=True)
    (out / MANIFEST).write_text('{"format": "vqedge-bundle", "old": true}\n')
    (out / "encoder.fp32.onnx").write_bytes(b"old graph bytes")
    before = _snapshot(out)
    corrupted = _inject_decoder_fault(monkeypatch)
    with pytest.raises(ExportValidationError):
        export_bundle(tiny_ckpt, out, force=True, precisions=("fp32",), log=lambda _msg: None)
    assert corrupted
    assert _snapshot(out) == before
    assert _nothing_hidden_beside(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


# -- format 2: one flat folder, each weight stored once per precision --------------------------


@pytest.mark.slow
def test_bundle_is_one_flat_folder_of_named_files(bundle, manifest):
    on_disk = {p.name for p in bundle.iterdir()}
    assert all(p.is_file() for p in bundle.iterdir())  # no subfolders
    assert on_disk == {
        MANIFEST,
        "check.npz",
        "codebook.npy",
        "weights.fp32.bin",
        "weights.int8.bin",
        "encoder.fp32.onnx",
        "quantizer.fp32.onnx",
        "decoder.fp32.onnx",
        "decoder_cpu.fp32.onnx",
        "encoder.fp16.onnx",
        "decoder.fp16.onnx",
        "encoder.int8.onnx",
        "decoder.int8.onnx",
        "decoder_cpu.int8.onnx",
    }
    assert manifest["format_version"] == FORMAT_VERSION == 2
    assert "tokenizer" not in manifest["variants"]["fp32"]["graphs"]  # no fused graph
    assert manifest["variants"]["fp32"]["weights"] == ["weights.fp32.bin"]
    assert manifest["variants"]["fp16"]["weights"] == ["weights.fp32.bin"]
    # int8 never reads the fp32 weights: an int8 device downloads its own file only
    assert manifest["variants"]["int8"]["weights"] == ["weights.int8.bin"]
    for v in manifest["variants"].values():
        for g in (*v["graphs"].values(), *v.get("cpu_graphs", {}).values()):
            assert set(g["weights"]) <= set(v["weights"]), g["file"]


@pytest.mark.slow
def test_every_variant_lists_the_weight_files_its_graphs_read(bundle, manifest):
    for precision, v in manifest["variants"].items():
        files = [g["file"] for key in ("graphs", "cpu_graphs") for g in v.get(key, {}).values()]
        read = {loc for f in files for loc, _, _ in read_external(bundle / f).values()}
        assert read == set(v["weights"]), precision


@pytest.mark.slow
def test_every_weight_is_stored_once_per_precision(bundle):
    """Within a weights file no two stored regions hold the same bytes; every float tensor
    of more than one number lives in a weights file, but those of the lookup an int8 variant
    shares (kept in its graph file, so that int8 reads no fp32 file)."""
    regions: dict[str, set[tuple[int, int]]] = {}
    for path in _graph_files(bundle):
        model = onnx.load(str(path), load_external_data=False)
        for t in model.graph.initializer:
            numel = int(np.prod(t.dims))
            if path.name == "quantizer.fp32.onnx":
                continue
            if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) and numel > 1:
                assert t.data_location == onnx.TensorProto.EXTERNAL, (path.name, t.name)
        for loc, offset, length in read_external(path).values():
            regions.setdefault(loc, set()).add((offset, length))
    contents: dict[str, list[bytes]] = {}
    for loc, spans in regions.items():
        data = (bundle / loc).read_bytes()
        chunks = [data[o : o + n] for o, n in sorted(spans)]
        contents[loc] = chunks
        assert len(set(chunks)) == len(chunks), f"{loc} stores some bytes twice"
        ends = [o + n for o, n in sorted(spans)]
        starts = [o for o, _ in sorted(spans)]
        assert all(e <= s for e, s in zip(ends, starts[1:])), f"{loc} regions overlap"
        stored = sum(n for _, n in spans)
        assert len(data) - stored < 64 * len(spans)  # only alignment padding besides


@pytest.mark.slow
def test_fp16_graphs_cast_the_fp32_weights(bundle, manifest):
    fp32_regions = {
        r for g in manifest["variants"]["fp32"]["graphs"].values()
        for r in read_external(bundle / g["file"]).values()
    }  # fmt: skip
    for graph in (ENCODER, DECODER):
        path = _graph_file(bundle, manifest, "fp16", graph)
        model = onnx.load(str(path), load_external_data=False)
        stored = list(model.graph.initializer)
        assert len(stored) > 10 and all(t.data_type == onnx.TensorProto.FLOAT for t in stored)
        ext = read_external(path)
        assert {loc for loc, _, _ in ext.values()} == {"weights.fp32.bin"}
        assert set(ext.values()) <= fp32_regions  # the fp32 graph's own tensors
        # each one feeds a Cast to fp16 (folded by onnxruntime), nothing else
        casts = {
            n.input[0]: n.output[0]
            for n in model.graph.node
            if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT16
        }
        for t in stored:
            assert t.name.endswith(FP32_SUFFIX) and t.name in casts, t.name
            assert not any(t.name in n.input for n in model.graph.node if n.op_type != "Cast")


@pytest.mark.slow
def test_cpu_decoder_derives_its_kernels_from_the_decoder(bundle, manifest):
    """The fp32 CPU-provider decoder stores no tensor the fp32 decoder does not."""
    plain = set(read_external(_graph_file(bundle, manifest, "fp32", DECODER)).values())
    cpu = bundle / manifest["variants"]["fp32"]["cpu_graphs"][DECODER]["file"]
    assert set(read_external(cpu).values()) <= plain


@pytest.mark.slow
def test_sizes_are_recorded_and_within_target(bundle, manifest, torch_model):
    sizes = manifest["sizes"]
    assert sizes["parameters"] == sum(p.numel() for p in torch_model.parameters())
    assert sizes["weight_bytes"] == {
        "fp32": 4 * sizes["parameters"],
        "fp16": 2 * sizes["parameters"],
        "int8": sizes["parameters"],
    }
    on_disk = sum(p.stat().st_size for p in bundle.iterdir() if p.name != MANIFEST)
    assert sizes["bundle_bytes"] == on_disk
    for name, n in sizes["weight_files"].items():
        assert (bundle / name).stat().st_size == n
    assert on_disk <= 1.15 * sum(sizes["weight_bytes"].values())


# -- the manifest -----------------------------------------------------------------------------


@pytest.mark.slow
def test_manifest_lists_every_file_with_its_sha256(bundle, manifest):
    on_disk = {p.name for p in bundle.iterdir()}
    assert set(manifest["files"]) == on_disk - {MANIFEST}
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((bundle / rel).read_bytes()).hexdigest() == digest, rel
    assert read_manifest(bundle, verify=True) == manifest
    # the files the variants name are all listed (and so verified)
    for v in manifest["variants"].values():
        for g in GRAPHS:
            assert v["graphs"][g]["file"] in manifest["files"]
        assert set(v["weights"]) <= set(manifest["files"])


@pytest.mark.slow
def test_tampered_or_missing_file_is_named(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    weights = copy / "weights.fp32.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one weight
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"weights\.fp32\.bin"):
        read_manifest(copy, verify=True)
    read_manifest(copy, verify=False)  # the manifest itself is still readable

    shutil.copyfile(bundle / "weights.fp32.bin", weights)
    read_manifest(copy, verify=True)
    (copy / "codebook.npy").unlink()
    with pytest.raises(BundleError, match="codebook.npy"):
        read_manifest(copy, verify=True)


@pytest.mark.slow
def test_every_onnx_file_carries_its_facts(bundle, manifest):
    files = _graph_files(bundle)
    # fp32: encoder, quantizer, decoder and the CPU provider's decoder; fp16: encoder and
    # decoder (the fp32 quantizer is shared); int8: those and the CPU provider's decoder
    assert len(files) == 9
    for path in files:
        model = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in model.metadata_props}
        assert set(META_KEYS) <= set(meta), path
        assert json.loads(meta["vqedge.config"]) == manifest["config"]
        assert meta["vqedge.downsample_factor"] == "4"
        assert meta["vqedge.codebook_size"] == str(manifest["config"]["codebook_size"])
        assert meta["vqedge.format_version"] == "2"
        graph, precision, _ = path.name.split(".")
        assert meta["vqedge.graph"] == graph and meta["vqedge.precision"] == precision
        assert model.producer_name == "vqedge"
        # no exporter stack traces (this machine's paths) ride along
        assert not any(n.metadata_props for n in model.graph.node), path.name


@pytest.mark.slow
def test_manifest_records_export_facts(bundle, manifest, torch_model):
    ex = manifest["export"]
    assert ex["exporter"] == "dynamo"
    assert ex["opset"] == OPSET == 18
    for g in GRAPHS:
        model = onnx.load(str(_graph_file(bundle, manifest, "fp32", g)), load_external_data=False)
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
    assert manifest["kind"] == "single-scale"
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
    graphs = manifest["variants"]["fp32"]["graphs"]
    assert [i["name"] for i in graphs[ENCODER]["inputs"]] == ["image"]
    assert graphs[ENCODER]["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert [o["name"] for o in graphs[QUANTIZER]["outputs"]] == ["indices"]
    assert graphs[QUANTIZER]["outputs"][0]["dtype"] == "int64"
    assert [o["name"] for o in graphs[DECODER]["outputs"]] == ["image"]

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


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_variants_load_and_give_finite_results(precision, bundle, manifest, photos):
    graphs = manifest["variants"][precision]["graphs"]
    assert graphs[QUANTIZER]["file"] == "quantizer.fp32.onnx"  # the argmin stays fp32
    enc = onnx.load(str(bundle / graphs[ENCODER]["file"]), load_external_data=False)
    if precision == "fp16":
        assert any(
            n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT16
            for n in enc.graph.node
        )
    else:
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in enc.graph.node}

    s = _sessions(bundle, manifest, precision)
    img = photos[2]  # chelsea, 300x451: padded to 300x452
    x = pad_to_multiple(uint8_to_float(img), 4)
    idx, recon = _tokenize(s, x)
    assert recon.shape == x.shape and np.isfinite(recon).all()
    assert idx.min() >= 0 and idx.max() < manifest["config"]["codebook_size"]

    quality = manifest["variants"][precision]["quality"]
    fp32_psnr = manifest["variants"]["fp32"]["quality"]["held_out_psnr"]
    assert quality["held_out_psnr"] >= fp32_psnr - 0.5
    assert 0 < quality["size_bytes"] < manifest["sizes"]["bundle_bytes"]


@pytest.mark.slow
def test_int8_quality_bar_recomputed(bundle, manifest, photos):
    """The manifest's held-out PSNR figures hold when measured again from the files."""
    measured = {}
    for precision in ("fp32", "int8"):
        s = _sessions(bundle, manifest, precision)
        values = []
        for img in photos:
            x = pad_to_multiple(uint8_to_float(img), 4)
            _, recon = _tokenize(s, x)
            assert np.isfinite(recon).all()
            out = float_to_uint8(recon[:, :, : img.shape[0], : img.shape[1]])[0]
            values.append(psnr(out, img))
        measured[precision] = float(np.mean(values))
        reported = manifest["variants"][precision]["quality"]["held_out_psnr"]
        assert measured[precision] == pytest.approx(reported, abs=0.01)
    assert measured["int8"] >= measured["fp32"] - 0.5
    assert 0.0 <= manifest["variants"]["int8"]["quality"]["token_agreement"] <= 1.0


# -- the CPU provider's decoders (ConvTranspose as phase convolutions) ------------------------


@pytest.mark.parametrize("derived", [False, True])
@pytest.mark.parametrize("cin,cout,h,w", [(5, 3, 7, 9), (16, 8, 1, 1), (8, 4, 4, 6)])
def test_phase_convolutions_equal_conv_transpose(cin, cout, h, w, derived):
    """The rewrite is the same arithmetic: every output phase's products and sums, with the
    kernels stored or computed in the graph from the ConvTranspose weight."""
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
    phased = phase_convolutions(plain, derived=derived)
    onnx.checker.check_model(phased, full_check=True)
    ops = [n.op_type for n in phased.graph.node]
    assert ops.count("Conv") == 4 and "ConvTranspose" not in ops
    floats = [t for t in phased.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    assert (sorted(t.name for t in floats) == ["b", "w"]) == derived
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])  # noqa: E731
    y_plain = run(plain).run(None, {"x": x.numpy()})[0]
    y_phased = run(phased).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        ref = conv(x).numpy()
    assert y_phased.shape == y_plain.shape == (2, cout, 2 * h, 2 * w) == ref.shape
    np.testing.assert_allclose(y_plain, ref, atol=1e-5)
    np.testing.assert_allclose(y_phased, ref, atol=1e-5)


@pytest.mark.slow
def test_cpu_decoders_match_plain_ones_and_hold_quality(bundle, manifest, photos):
    """fp32 and int8 carry a CPU-provider decoder without ConvTranspose; fp32's gives the
    plain decoder's images, int8's the manifest's quality, measured again from the files."""
    fp32_psnr = manifest["variants"]["fp32"]["quality"]["held_out_psnr"]
    for precision in ("fp32", "int8"):
        v = manifest["variants"][precision]
        s = _sessions(bundle, manifest, precision)
        idx = [_tokenize(s, pad_to_multiple(uint8_to_float(img), 4))[0] for img in photos]
        cpu = bundle / v["cpu_graphs"][DECODER]["file"]
        ops = {n.op_type for n in onnx.load(str(cpu), load_external_data=False).graph.node}
        assert "ConvTranspose" not in ops
        s_cpu = _session(cpu)
        values = []
        for img, i in zip(photos, idx):
            rec = s_cpu.run(None, {"indices": i})[0]
            if precision == "fp32":
                assert np.abs(rec - s[DECODER].run(None, {"indices": i})[0]).max() <= 1e-4
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


def test_unsupported_precision(tiny_ckpt, tmp_path):
    with pytest.raises(ValueError, match="unknown precisions"):
        export_bundle(tiny_ckpt, tmp_path / "bundle", precisions=("fp32", "int4"))
    assert list(tmp_path.iterdir()) == []


def test_no_recipe_for_an_unknown_model_class():
    from vqedge.export.pipeline import recipe_for

    with pytest.raises(ValueError, match="no export recipe for Linear"):
        recipe_for(torch.nn.Linear(2, 2))


@pytest.mark.slow
def test_cli_reports_errors_readably(tiny_ckpt, bundle, tmp_path, capsys):
    from vqedge.commands.main import main

    before = _snapshot(bundle)
    rc = main(["export", str(tiny_ckpt), "--out", str(bundle), "--precisions", "fp32"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "vqedge export: error:" in err and "already exists" in err and "--force" in err
    assert "Traceback" not in err
    assert _snapshot(bundle) == before

    rc = main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and "no checkpoint at" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_reexport_agrees_with_the_shipped_bundle(bundle, manifest, torch_model, photos):
    """The bundle shipped with the runtime is the shipped checkpoint's, within parity."""
    shipped = shipped_bundle("vqvae-f4")
    shipped_manifest = read_manifest(shipped)
    assert (
        shipped_manifest["export"]["checkpoint_sha256"] == manifest["export"]["checkpoint_sha256"]
    )
    # the same config; keys added since the bundle shipped take their defaults
    same = VQVAEConfig.from_dict(shipped_manifest["config"])
    assert same == VQVAEConfig.from_dict(manifest["config"])
    fresh, ship = (
        _sessions(b, m, "fp32") for b, m in ((bundle, manifest), (shipped, shipped_manifest))
    )
    for img in photos:
        x = pad_to_multiple(uint8_to_float(img), 4)
        idx_a = _tokenize(fresh, x)[0]
        idx_b = _tokenize(ship, x)[0]
        with torch.no_grad():
            latent = torch_model.encode(torch.from_numpy(x))
        mismatches, ties = count_ties(torch_model.quantize, latent, idx_a, idx_b)
        assert mismatches == ties
        img_a = fresh[DECODER].run(None, {"indices": idx_a})[0]
        img_b = ship[DECODER].run(None, {"indices": idx_a})[0]
        assert np.abs(img_a - img_b).max() <= 1e-3
    for precision, v in manifest["variants"].items():
        reported = shipped_manifest["variants"][precision]["quality"]["held_out_psnr"]
        assert abs(v["quality"]["held_out_psnr"] - reported) < 0.05, precision


# -- PyTorch weights rebuilt from the shipped bundles (the wheel has no torch checkpoints) ----


def _tokens(model: torch.nn.Module, photos: list[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        if model.config.is_multiscale:
            R = model.config.resolution
            x = torch.from_numpy(uint8_to_float(np.stack([fit_square(p, R) for p in photos])))
            return [i.numpy() for i in model.img_to_idxBl(x)]
        xs = [torch.from_numpy(pad_to_multiple(uint8_to_float(p), 4)) for p in photos]
        return [model.quantize(model.encode(x))[2].numpy() for x in xs]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vqvae-f4", "vqvae-ms-f8"])
def test_model_rebuilt_from_shipped_bundle_equals_checkpoint(name, photos):
    ref = load_model(PRETRAINED_DIR / name)[0].eval()
    rebuilt = model_from_bundle(shipped_bundle(name))
    a, b = ref.state_dict(), rebuilt.state_dict()
    assert a.keys() == b.keys()
    skipped = []
    for key in a:
        leaf = key.rsplit(".", 1)[-1]
        if leaf in EMA_STATS or key.endswith("embedding.weight"):
            skipped.append(key)
            continue
        assert torch.equal(a[key], b[key]), key  # bit for bit
    assert len(skipped) == 3  # the codebook and its two EMA statistics
    # the codebook the decoder receives; unit rows lose their norm in a bundle
    cb_ref, cb = ref.quantize.get_codebook(), rebuilt.quantize.get_codebook()
    torch.testing.assert_close(cb, cb_ref, atol=1e-6, rtol=0)
    if not ref.config.l2_normalize:
        assert torch.equal(cb, cb_ref)
    for t_ref, t_new in zip(_tokens(ref, photos), _tokens(rebuilt.eval(), photos)):
        np.testing.assert_array_equal(t_new, t_ref)


@pytest.mark.slow
def test_load_pretrained_without_safetensors_rebuilds_from_the_bundle(tmp_path, photos):
    shipped = tmp_path / "vqvae-ms-f8"  # a shipped model's folder as the wheel installs it
    shipped.mkdir()
    shutil.copyfile(PRETRAINED_DIR / "vqvae-ms-f8" / "config.json", shipped / "config.json")
    model = load_pretrained(shipped)
    assert not model.training
    ref = load_pretrained("vqvae-ms-f8")  # by name: the source tree's checkpoint
    for a, b in zip(_tokens(model, photos), _tokens(ref, photos)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_pretrained(tmp_path / "not-shipped")  # no bundle of that name: no fallback


def test_onnx_initializers_reads_inline_and_external_tensors(tmp_path):
    """The torch side's own protobuf reader gives what onnx gives."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Conv", ["x", "w", "b"], ["y"])],
        "t",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 5, 5])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4, 4, 4])],
        [numpy_helper.from_array(w, "conv.weight"), numpy_helper.from_array(b, "conv.bias"),
         numpy_helper.from_array(np.array([1, 2], np.int64), "shape")],
    )  # fmt: skip
    model = onnx.helper.make_model(graph)
    onnx.save(model, str(tmp_path / "inline.onnx"))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True,
              all_tensors_to_one_file=True, location="w.bin", size_threshold=0)  # fmt: skip
    for name in ("inline.onnx", "ext.onnx"):
        got = onnx_initializers(tmp_path / name)
        assert sorted(got) == ["conv.bias", "conv.weight"], name
        np.testing.assert_array_equal(got["conv.weight"], w)
        np.testing.assert_array_equal(got["conv.bias"], b)
