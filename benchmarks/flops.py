"""The model's FLOPs, counted from the bundle's fp32 ONNX graphs at a given input size.

One count serves every configuration (PyTorch and onnxruntime alike): the arithmetic of the
model, not of a particular kernel. A multiply-add is 2 FLOPs. Counted: Conv, ConvTranspose,
MatMul and Gemm (over 99.9% of the work of a conv VQ-VAE); elementwise ops (ReLU, Add, the
quantizer's norms and ArgMin) and the codebook Gather are not.

Graphs are read as bundle format 2 writes them: weights in external data files beside the
graph. Only their shapes are needed, so the weights stay on disk; the few small tensors that
shape inference reads as values (Resize scales, Reshape shapes) are loaded.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import onnx
from onnx import external_data_helper, shape_inference

from vqedge.runtime.kind import NEXT_SCALE

COUNTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# external tensors up to this many elements are loaded: shape inference may read them
SHAPE_DATA_MAX = 64
# the input of each stage graph, and the shape it takes for a batch of B images H x W (f)
STAGE_INPUT = {
    "encoder": lambda B, H, W, f, C: [B, 3, H, W],
    "quantizer": lambda B, H, W, f, C: [B, C, H // f, W // f],
    "decoder": lambda B, H, W, f, C: [B, H // f, W // f],
}


def _shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = [d.dim_value for d in dims]
    for init in model.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return a.i
    return default


def graph_flops(path: str | Path, input_shape: list[int]) -> int:
    """FLOPs of one run of an ONNX graph with its (single) input at ``input_shape``.

    Raises
    ------
    ValueError
        When shape inference leaves a counted op's shapes unknown.
    """
    model = onnx.load(str(path), load_external_data=False)
    base = str(Path(path).parent)
    for t in model.graph.initializer:
        # small external tensors may be shape data that inference reads by value
        if external_data_helper.uses_external_data(t) and math.prod(t.dims) <= SHAPE_DATA_MAX:
            external_data_helper.load_external_data_for_tensor(t, base)
            t.data_location = onnx.TensorProto.DEFAULT
            del t.external_data[:]
    inp = model.graph.input[0]
    for d, v in zip(inp.type.tensor_type.shape.dim, input_shape):
        d.Clear()
        d.dim_value = int(v)
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = _shapes(model)
    total = 0
    for node in model.graph.node:
        if node.op_type not in COUNTED:
            continue
        try:
            x, w, y = shapes[node.input[0]], shapes[node.input[1]], shapes[node.output[0]]
        except KeyError as e:
            raise ValueError(f"{Path(path).name}: no inferred shape for {node.name}: {e}") from e
        group = _attr(node, "group", 1)
        if node.op_type == "Conv":  # w [Cout, Cin/g, kh, kw]; y [N, Cout, Ho, Wo]
            total += 2 * math.prod(y) * math.prod(w[1:])
        elif node.op_type == "ConvTranspose":  # w [Cin, Cout/g, kh, kw]; every input pixel
            total += 2 * math.prod(x) * math.prod(w[1:]) // max(group, 1) * group
        else:  # MatMul / Gemm: [..., M, K] @ [K, N]
            k = x[-1]
            total += 2 * math.prod(y) * k
    return total


def stage_flops(bundle: str | Path, batch: int, height: int, width: int) -> dict[str, int]:
    """FLOPs per stage (encoder, quantizer, decoder) and end to end, from the fp32 graphs.

    A multi-scale bundle takes only its resolution; its decoder stage is its scales graph
    (tokens -> f_hat) and its decoder graph (f_hat -> image), as the runtime's ``decode``.

    Raises
    ------
    ValueError
        A multi-scale bundle asked for another size.
    """
    from vqedge.benchmarks.bundles import facts

    root = Path(bundle)
    manifest = json.loads((root / "manifest.json").read_text())
    bf = facts(root)
    f = manifest["input"]["downsample_factor"]
    C = manifest["input"]["code_dim"]
    graphs = manifest["variants"]["fp32"]["graphs"]
    out: dict[str, int] = {}
    if bf.offers(NEXT_SCALE):
        s, L = bf.scales[-1], bf.num_tokens
        if (height, width) != (s * f, s * f):
            raise ValueError(
                f"bundle {root.name} is multi-scale at {s * f}x{s * f} only, got {height}x{width}"
            )
        shapes = {
            "encoder": [batch, 3, height, width],
            "quantizer": [batch, C, s, s],
            "scales": [batch, L],
            "decoder": [batch, C, s, s],
        }
        counts = {g: graph_flops(root / graphs[g]["file"], shp) for g, shp in shapes.items()}
        out = {
            "encoder": counts["encoder"],
            "quantizer": counts["quantizer"],
            "decoder": counts["scales"] + counts["decoder"],
        }
    else:
        for stage, shape in STAGE_INPUT.items():
            out[stage] = graph_flops(
                root / graphs[stage]["file"], shape(batch, height, width, f, C)
            )
    out["end_to_end"] = sum(out.values())
    return out


if __name__ == "__main__":
    import sys

    from vqedge.benchmarks.bundles import facts
    from vqedge.runtime.session import bundle_path

    b = bundle_path(sys.argv[1] if len(sys.argv) > 1 else None)
    res = facts(b).resolution or 0
    for s in (res,) if res else (64, 256, 512):
        fl = stage_flops(b, 1, s, s)
        print(s, {k: f"{v / 1e9:.3f} GFLOP" for k, v in fl.items()})
