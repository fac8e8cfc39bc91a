"""GroupNorm from per-channel statistics (the fp32 graphs' form): the same function as the
exporter's GroupNorm, with no reshape of a full-size activation."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from vqedge.export.graphs import export_graph
from vqedge.export.group_norm import group_norm_from_channel_stats


class Block(nn.Module):
    """conv -> GroupNorm + SiLU -> conv -> GroupNorm, as the imported families' blocks."""

    def __init__(self, norm: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.conv1, self.norm1 = nn.Conv2d(3, 32, 3, padding=1), norm
        self.conv2, self.norm2 = nn.Conv2d(32, 64, 3, padding=1), second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.silu(self.norm1(self.conv1(x)))
        return self.norm2(self.conv2(h))


def _exported(module: nn.Module, path) -> onnx.ModelProto:
    torch.manual_seed(0)
    for p in module.parameters():  # gamma and beta away from 1 and 0: they must be applied
        p.data.normal_(0.5, 0.5)
    x = torch.randn(1, 3, 16, 16)
    dims = {"x": ["batch", None, "h", "w"], "y": ["batch", None, "h", "w"]}
    export_graph(module, x, "block", path, (["x"], ["y"]), dims)
    return onnx.load(str(path))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    module = Block(nn.GroupNorm(8, 32, eps=1e-6), nn.GroupNorm(32, 64, eps=1e-6)).eval()
    return _exported(module, tmp_path_factory.mktemp("gn") / "block.onnx")


def test_same_function_without_instance_norm(block):
    rewritten, count = group_norm_from_channel_stats(block)
    assert count == 2
    onnx.checker.check_model(rewritten, full_check=True)
    ops = [n.op_type for n in rewritten.graph.node]
    assert "InstanceNormalization" not in ops and ops.count("ReduceMean") == 8
    # only [N, C, 1, 1] statistics are reshaped: never the activation itself
    shapes = {t.name: onnx.numpy_helper.to_array(t) for t in rewritten.graph.initializer}
    for n in rewritten.graph.node:
        if n.op_type == "Reshape":
            assert tuple(shapes[n.input[1]][-2:]) != (1, -1), n.name
    rng = np.random.default_rng(1)
    # a batch and sizes never traced, with a channel offset that a one-pass variance loses
    for shape in ((1, 3, 16, 16), (3, 3, 24, 40)):
        x = (rng.standard_normal(shape) * 3 + 20).astype(np.float32)
        want, got = _run(block, x), _run(rewritten, x)
        np.testing.assert_allclose(got, want, atol=2e-5 * max(1.0, np.abs(want).max()))
    # the graph's own weights (less the InstanceNorm's unit scale and zero bias): none added
    big = lambda m: {t.name for t in m.graph.initializer if np.prod(t.dims) > 8}  # noqa: E731
    assert big(rewritten) <= big(block)


def test_other_graphs_are_left_as_they_are(tmp_path, block):
    rewritten, _ = group_norm_from_channel_stats(block)
    assert group_norm_from_channel_stats(rewritten)[1] == 0  # nothing left to rewrite
    # InstanceNorm with its own scale and bias is not an exported GroupNorm
    module = Block(nn.InstanceNorm2d(32, affine=True), nn.Identity()).eval()
    inorm = _exported(module, tmp_path / "inorm.onnx")
    same, count = group_norm_from_channel_stats(inorm)
    assert count == 0 and same.graph == inorm.graph
