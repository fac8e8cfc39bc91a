"""Accuracy-driven mixed precision (export/mixed_precision.py) on a tiny exported bundle: the
search's plan measures what it records, and its frontier rises with the float nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vqedge.export.mixed_precision import (
    TokenScorer,
    quantizable_nodes,
    quantizable_units,
    search,
)
from vqedge.export.variants import to_int8
from vqedge.runtime.fidelity import TOKENS_MIN_AGREEMENT


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory, tiny_config) -> Path:
    import torch

    from vqedge.export import export_bundle
    from vqedge.models.checkpoint import save_checkpoint
    from vqedge.models.data import default_train_paths
    from vqedge.models.vqvae import VQVAE

    torch.manual_seed(0)
    model = VQVAE(tiny_config).eval()
    # codes drawn from the model's own latents of photos, as training leaves them: latents sit
    # between codes, so 8-bit arithmetic flips some tokens (a random codebook near zero gives
    # every position the same code, which no precision changes)
    with torch.no_grad():
        x = torch.from_numpy(np.concatenate(_crops(default_train_paths()[:3], 32, seed=2)))
        z = model.encode(x)
        z_NC = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        codes = z_NC[torch.randperm(len(z_NC))[: tiny_config.codebook_size]]
        model.quantize.embedding.weight.copy_(codes)
        if hasattr(model.quantize, "ema_sum"):
            model.quantize.ema_sum.copy_(codes)
    ckpt = save_checkpoint(tmp_path_factory.mktemp("tiny"), 0, model)
    out = tmp_path_factory.mktemp("tb") / "bundle"
    export_bundle(ckpt, out, precisions=("fp32",), log=lambda _m: None)
    return out


def _crops(paths: list[Path], side: int, seed: int) -> list[np.ndarray]:
    from vqedge.runtime.images import uint8_to_float
    from vqedge.runtime.inputs import read_image

    rng = np.random.default_rng(seed)
    out = []
    for p in paths:
        img = read_image(p)
        y, x = rng.integers(0, img.shape[0] - side), rng.integers(0, img.shape[1] - side)
        out.append(uint8_to_float(np.ascontiguousarray(img[y : y + side, x : x + side])))
    return out


def test_search_plan_holds_and_frontier_rises(tiny_bundle, tmp_path):
    from vqedge.models.data import default_train_paths

    photos = default_train_paths()
    calib = _crops(photos[:3], 32, seed=0)
    # scored on other photos than the calibration's
    scorer = TokenScorer(
        tiny_bundle / "quantizer.fp32.onnx",
        _crops(photos[3:7], 48, seed=1),
        tiny_bundle / "encoder.fp32.onnx",
    )
    enc = tiny_bundle / "encoder.fp32.onnx"
    # a random tiny model may hold the tier all-int8: the strictest target walks the search
    # until every token is fp32's
    found = search(enc, "image", calib, scorer, tmp_path / "steps", target=1.0)

    nodes = quantizable_nodes(enc)
    assert found.nodes == nodes and len(nodes) > 4
    assert found.trail[0].float_nodes == []
    units = quantizable_units(enc)
    assert sorted(n for u in units for n in u) == sorted(nodes)
    # each step keeps the previous step's float nodes and adds one unit
    for a, b in zip(found.trail, found.trail[1:]):
        assert b.float_nodes[: len(a.float_nodes)] == a.float_nodes
        assert b.float_nodes[len(a.float_nodes) :] in units
    counts = [len(s.float_nodes) for s in found.frontier]
    agreements = [s.agreement for s in found.frontier]
    assert counts == sorted(set(counts)) and agreements == sorted(set(agreements))

    plan = found.plan
    assert plan is not None and plan.agreement == 1.0 and len(found.trail) > 2
    assert all(s.agreement < 1.0 for s in found.trail[:-1])
    # the export's int8 with the plan's float nodes gives the tokens the search recorded
    again = tmp_path / "again.onnx"
    to_int8(enc, again, "image", calib, float_nodes=plan.float_nodes)
    assert scorer(again)[0] == pytest.approx(plan.agreement, abs=1e-9)
    # and the all-int8 graph is the search's first step
    to_int8(enc, again, "image", calib)
    assert scorer(again)[0] == pytest.approx(found.trail[0].agreement, abs=1e-9)
    # the tier is never loosened
    with pytest.raises(ValueError, match="never looser"):
        search(enc, "image", calib, scorer, tmp_path / "x", target=TOKENS_MIN_AGREEMENT - 0.05)


def test_scorer_reports_each_scale_of_a_multi_scale_bundle():
    """On the shipped multi-scale bundle: agreement per scale, coarse to fine, weighted by
    each scale's positions, is the agreement over every position."""
    from vqedge.models.data import default_train_paths
    from vqedge.runtime.manifest import read_manifest
    from vqedge.runtime.session import bundle_path

    path = bundle_path("vqvae-ms-f8")
    pn = read_manifest(path)["config"]["patch_nums"]
    images = _crops(default_train_paths()[:2], 128, seed=3)
    scorer = TokenScorer(path / "quantizer.fp32.onnx", images, path / "encoder.fp32.onnx", pn)
    assert scorer(path / "encoder.fp32.onnx") == (1.0, [1.0] * len(pn))
    total, per = scorer(path / "encoder.int8.onnx")
    assert len(per) == len(pn) and total < 1.0
    weighted = sum(a * p * p for a, p in zip(per, pn)) / sum(p * p for p in pn)
    assert total == pytest.approx(weighted, abs=1e-12)


def test_units_follow_what_qdq_fuses():
    """Each Relu that only follows a Conv returns to float with it."""
    import onnx

    from vqedge.runtime.session import bundle_path

    enc = bundle_path("vqvae-f4") / "encoder.fp32.onnx"
    units = quantizable_units(enc)
    graph = onnx.load(str(enc), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    for n in graph.node:
        src = producer.get(n.input[0]) if n.input else None
        if n.op_type == "Relu" and src is not None and src.op_type == "Conv":
            assert [src.name, n.name] in units, n.name
    assert [n for u in units for n in u] == quantizable_nodes(enc)
