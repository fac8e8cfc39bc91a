"""Export of a multi-scale (VAR) tokenizer: the per-scale gate and the format-2 bundle.

A tiny model with a spread codebook is exported once per module (fp32 and fp16); the runtime
side of multi-scale bundles is tested in test_multiscale.py.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from vqedge.export import ExportValidationError, export_bundle
from vqedge.export.weights import read_external
from vqedge.models.checkpoint import model_from_bundle, save_checkpoint
from vqedge.runtime.manifest import (
    DECODER,
    ENCODER,
    MANIFEST,
    MULTI_SCALE,
    QUANTIZER,
    SCALES,
)

pytestmark = pytest.mark.filterwarnings("ignore:the float32 number:UserWarning")


@pytest.fixture(scope="module")
def manifest(bundle) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


@pytest.mark.slow
def test_gate_refuses_a_wrong_graph_and_writes_nothing(ms_model, tmp_path, monkeypatch):
    """The same gate as the single-scale export: a scales graph off by a little, no bundle."""
    import vqedge.export.pipeline as pipeline

    real = pipeline.export_graph

    def export_then_nudge(module, example, name, path, *args, **kw):
        real(module, example, name, path, *args, **kw)
        if name == SCALES:  # shift the codebook the scales graph decodes with
            m = onnx.load(str(path))
            t = max(m.graph.initializer, key=lambda t: int(np.prod(t.dims)))
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) + 1e-2, t.name))
            onnx.save(m, str(path))

    monkeypatch.setattr(pipeline, "export_graph", export_then_nudge)
    ckpt = save_checkpoint(tmp_path / "ck", 0, ms_model)
    with pytest.raises(ExportValidationError, match="f_hat / var_input differ"):
        export_bundle(ckpt, tmp_path / "out", precisions=("fp32",), log=lambda _m: None)
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


@pytest.mark.slow
def test_bundle_declares_scales_and_size(manifest, ms_config):
    m = manifest
    assert m["kind"] == MULTI_SCALE
    assert m["scales"]["patch_nums"] == list(ms_config.patch_nums)
    assert m["scales"]["offsets"] == list(ms_config.scale_offsets[:-1])
    assert m["scales"]["resolution"] == 32 and "exactly 32x32" in m["input"]["size_policy"]
    for case in m["validation"]["cases"]:
        assert case["index_mismatches_per_scale"] == [0] * len(ms_config.patch_nums)
        assert case["f_hat_max_abs"] < 1e-4 and case["image_max_abs"] < 1e-3


@pytest.mark.slow
def test_bundle_is_flat_and_shares_the_exact_graphs(bundle, manifest):
    assert {p.name for p in bundle.iterdir()} == {
        MANIFEST,
        "check.npz",
        "codebook.npy",
        "weights.fp32.bin",
        "encoder.fp32.onnx",
        "quantizer.fp32.onnx",
        "scales.fp32.onnx",
        "decoder.fp32.onnx",
        "decoder_cpu.fp32.onnx",
        "encoder.fp16.onnx",
        "decoder.fp16.onnx",
    }
    fp16 = manifest["variants"]["fp16"]
    # the scale loop stays fp32 in every variant: the same files
    for g in (QUANTIZER, SCALES):
        assert fp16["graphs"][g]["file"] == f"{g}.fp32.onnx"
    for g in (ENCODER, DECODER):
        assert fp16["graphs"][g]["file"] == f"{g}.fp16.onnx"
    assert fp16["weights"] == ["weights.fp32.bin"]
    prefix = fp16["quality"]["held_out_psnr_per_prefix"]
    assert len(prefix) == 5 and prefix[-1] == fp16["quality"]["held_out_psnr"]


@pytest.mark.slow
def test_scales_and_quantizer_share_stored_tensors(bundle):
    """The resize matrices and codebook both scale graphs use are stored once."""
    q = read_external(bundle / "quantizer.fp32.onnx")
    s = read_external(bundle / "scales.fp32.onnx")
    shared = set(q.values()) & set(s.values())
    assert len(shared) >= 5
    data = (bundle / "weights.fp32.bin").read_bytes()
    spans = {v for path in bundle.glob("*.onnx") for v in read_external(path).values()}
    chunks = [data[o : o + n] for _, o, n in spans]
    assert len(set(chunks)) == len(chunks)


@pytest.mark.slow
def test_model_rebuilt_from_the_bundle_gives_the_same_tokens(bundle, ms_model):
    rebuilt = model_from_bundle(bundle).eval()
    for key, value in ms_model.state_dict().items():
        if "ema_" not in key:
            assert torch.equal(rebuilt.state_dict()[key], value), key
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for a, b in zip(rebuilt.img_to_idxBl(x), ms_model.img_to_idxBl(x)):
            assert torch.equal(a, b)
