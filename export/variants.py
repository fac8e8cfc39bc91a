"""Reduced-precision variants of the exported graphs, and the CPU provider's decoder form.

The quantizer graph (the nearest-code lookup) stays fp32 in every variant: reduced
precision there would flip tokens without making anything measurably faster.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx

# ConvTranspose(kernel 4, stride 2, pad 1) as four 2x2 convolutions, one per output phase
# (row parity, column parity): output row 2m+r takes input rows m-1, m (r=0: kernel rows 3, 1)
# or m, m+1 (r=1: kernel rows 2, 0); the same for columns.
PHASE_TAPS = {0: (3, 1), 1: (2, 0)}
PHASE_PADS = {0: (1, 0), 1: (0, 1)}  # (before, after) along the axis
# an fp16 graph's fp32 weight is stored under its name plus this; the Cast gives the name
FP32_SUFFIX = "__fp32"
# how the int8 variant is made (``to_int8``), recorded in its manifest entry
INT8_RECIPE = {
    "format": "QDQ",
    "weights": "int8, per channel, symmetric, 7-bit range (reduce_range)",
    "activations": "uint8, per tensor, asymmetric",
    "calibration": "MinMax",
}
# the int8 recipes benchmarks/int8_recipe.py compares on the CPU it runs on; "u8s8rr" is the
# shipped one (INT8_RECIPE): uint8 activations, 7-bit weights
INT8_RECIPES = {
    "u8s8rr": {"reduce_range": True, "activations": "uint8"},
    "u8s8": {"reduce_range": False, "activations": "uint8"},
    "s8s8": {"reduce_range": False, "activations": "int8"},
}


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _phase_kernel(
    weight: str, rows: tuple[int, int], cols: tuple[int, int], name: str, g: onnx.GraphProto
) -> list[onnx.NodeProto]:
    """Nodes computing ``{name}_w`` = weight[:, :, rows][:, :, :, cols] transposed to
    [Cout, Cin, 2, 2] from the ConvTranspose weight [Cin, Cout, 4, 4]."""
    for axis, taps in (("rows", rows), ("cols", cols)):
        g.initializer.append(
            onnx.numpy_helper.from_array(np.array(taps, np.int64), f"{name}_{axis}")
        )
    make = onnx.helper.make_node
    return [
        make("Gather", [weight, f"{name}_rows"], [f"{name}_wr"], name=f"{name}_wr", axis=2),
        make("Gather", [f"{name}_wr", f"{name}_cols"], [f"{name}_wrc"], name=f"{name}_wrc", axis=3),
        make("Transpose", [f"{name}_wrc"], [f"{name}_w"], name=f"{name}_wt", perm=[1, 0, 2, 3]),
    ]


def phase_convolutions(model: onnx.ModelProto, derived: bool = False) -> onnx.ModelProto:
    """Rewrite each ConvTranspose(kernel 4, stride 2, pad 1) as four 2x2 Convs (one per output
    phase), Concat and DepthToSpace(2, DCR): the same products and sums, so equal up to float
    rounding, with the same multiply-adds.

    For onnxruntime's CPU provider, whose ConvTranspose has no int8 kernel (31% of int8
    end-to-end time stayed fp32) and computes through a [Cout * 16, H * W] column buffer
    (32 MiB at 256x256): its Convs have both. OpenVINO runs its own int8 deconvolution faster
    than the four convolutions, so bundles keep both forms (``cpu_graphs``).

    With ``derived``, each phase's 2x2 kernel is computed in the graph from the original
    ConvTranspose weight (Gather, Gather, Transpose: folded by onnxruntime at session
    creation), so the rewritten graph stores no weight the plain decoder does not. Without
    it the kernels are initializers, which static int8 quantization needs.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    init = {t.name: t for t in g.initializer}
    nodes = []
    for node in g.node:
        a = _attrs(node)
        if not (
            node.op_type == "ConvTranspose"
            and a.get("kernel_shape") == [4, 4]
            and a.get("strides") == [2, 2]
            and a.get("pads", [0, 0, 0, 0]) == [1, 1, 1, 1]
            and a.get("group", 1) == 1
            and a.get("dilations", [1, 1]) == [1, 1]
            and not any(a.get("output_padding", [0, 0]))
            and node.input[1] in init
            and (len(node.input) < 3 or not node.input[2] or node.input[2] in init)
        ):
            nodes.append(node)
            continue
        w = onnx.numpy_helper.to_array(init[node.input[1]])  # [Cin, Cout, 4, 4]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        phases = []
        for ry in (0, 1):
            for rx in (0, 1):
                name = f"{node.name}_phase{ry}{rx}"
                if derived:
                    nodes += _phase_kernel(node.input[1], PHASE_TAPS[ry], PHASE_TAPS[rx], name, g)
                else:
                    w_p = w[:, :, PHASE_TAPS[ry], :][:, :, :, PHASE_TAPS[rx]]
                    w_p = np.ascontiguousarray(w_p.transpose(1, 0, 2, 3))
                    g.initializer.append(onnx.numpy_helper.from_array(w_p, f"{name}_w"))
                pads = [PHASE_PADS[ry][0], PHASE_PADS[rx][0], PHASE_PADS[ry][1], PHASE_PADS[rx][1]]
                inputs = [node.input[0], f"{name}_w"] + ([bias] if bias else [])
                nodes.append(
                    onnx.helper.make_node(
                        "Conv", inputs, [name], name=name, kernel_shape=[2, 2], pads=pads
                    )
                )
                phases.append(name)
        cat = f"{node.name}_phases"
        nodes.append(onnx.helper.make_node("Concat", phases, [cat], name=cat, axis=1))
        nodes.append(
            onnx.helper.make_node(
                "DepthToSpace", [cat], list(node.output), name=f"{node.name}_d2s", blocksize=2,
                mode="DCR",
            )
        )  # fmt: skip
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return out


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 arithmetic, fp32 inputs and outputs kept, and fp32 weights cast at load.

    Every weight the conversion turned to fp16 is stored as the fp32 graph's tensor (same
    bytes, so a bundle stores it once) followed by a Cast to fp16, which onnxruntime folds
    into an fp16 constant when it creates the session.
    """
    from onnxconverter_common import float16

    half = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    fp32 = {t.name: t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    g = half.graph
    kept, casts = [], []
    for t in g.initializer:
        src = fp32.get(t.name)
        if t.data_type != onnx.TensorProto.FLOAT16 or src is None:
            kept.append(t)
            continue
        stored = onnx.TensorProto()
        stored.CopyFrom(src)
        stored.name = f"{t.name}{FP32_SUFFIX}"
        kept.append(stored)
        casts.append(
            onnx.helper.make_node(
                "Cast", [stored.name], [t.name], name=f"{t.name}_cast", to=onnx.TensorProto.FLOAT16
            )
        )
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = casts + list(g.node)  # the casts need nothing, so first keeps the order valid
    del g.node[:]
    g.node.extend(nodes)
    return half


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over a list of input arrays."""

    def __init__(self, name: str, arrays: list[np.ndarray]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter([{name: a} for a in arrays])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


# the op types the int8 recipe quantizes (the lookup and the final clamp stay float)
QUANTIZED_OPS = ("Conv", "ConvTranspose", "Relu", "Add")


def to_int8(
    model_path: Path,
    out_path: Path,
    input_name: str,
    calib: list[np.ndarray],
    recipe: str = "u8s8rr",
    float_nodes: Sequence[str] = (),
) -> None:
    """Static QDQ int8: per-channel 7-bit weights, uint8 activations, calibrated on ``calib``
    (another of ``INT8_RECIPES`` where ``recipe`` names one: the benchmark's candidates).

    Convolutions (and the ReLU/Add around them) are quantized, except the nodes named in
    ``float_nodes`` (an accuracy-driven mixed plan, export/mixed_precision.py); the codebook
    lookup and the final clamp stay float. Weights keep 7 bits (``reduce_range``) because x86
    CPUs without VNNI (AVX2 only: AMD Zen 1-3, Intel before Cascade Lake) multiply uint8 by
    int8 with VPMADDUBSW, which sums pairs of products in int16 and saturates at 8-bit
    weights; 7-bit weights keep every pair sum in range, on those CPUs and on VNNI/AMX ones
    alike, so one int8 variant gives the same tokens everywhere
    (benchmarks/results/int8_recipe.md).
    """
    with tempfile.TemporaryDirectory() as tmp:
        prep = prepare_for_int8(model_path, Path(tmp))
        quantize_prepared(prep, out_path, input_name, calib, float_nodes, recipe)


def prepare_for_int8(model_path: Path, tmp: Path) -> Path:
    """onnxruntime's pre-processing for quantization (shape inference, folding), once per
    graph: ``tmp / "prep.onnx"``. A graph whose weights are in a bundle's shared weights file
    is first saved with them inline (the pre-processing copies the graph file alone)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    inline, prep = tmp / "inline.onnx", tmp / "prep.onnx"
    onnx.save(onnx.load(str(model_path)), str(inline))
    quant_pre_process(str(inline), str(prep), skip_symbolic_shape=True)
    return prep


def quantize_prepared(
    prep: Path,
    out_path: Path,
    input_name: str,
    calib: list[np.ndarray],
    float_nodes: Sequence[str] = (),
    recipe: str = "u8s8rr",
) -> None:
    """``to_int8`` of a graph ``prepare_for_int8`` made."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    r = INT8_RECIPES[recipe]
    signed = r["activations"] == "int8"
    quantize_static(
        str(prep),
        str(out_path),
        _Reader(input_name, calib),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=r["reduce_range"],
        activation_type=QuantType.QInt8 if signed else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(QUANTIZED_OPS),
        nodes_to_exclude=list(float_nodes),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": signed, "WeightSymmetric": True},
    )
