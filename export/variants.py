"""Reduced-precision variants of the exported graphs and the fused one-call graph.

The quantizer graph (the nearest-code lookup) stays fp32 in every variant: reduced
precision there would flip tokens without making anything measurably faster.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import compose

# ConvTranspose(kernel 4, stride 2, pad 1) as four 2x2 convolutions, one per output phase
# (row parity, column parity): output row 2m+r takes input rows m-1, m (r=0: kernel rows 3, 1)
# or m, m+1 (r=1: kernel rows 2, 0); the same for columns.
PHASE_TAPS = {0: (3, 1), 1: (2, 0)}
PHASE_PADS = {0: (1, 0), 1: (0, 1)}  # (before, after) along the axis


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def phase_convolutions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite each ConvTranspose(kernel 4, stride 2, pad 1) as four 2x2 Convs (one per output
    phase), Concat and DepthToSpace(2, DCR): the same products and sums, so equal up to float
    rounding, with the same multiply-adds.

    For onnxruntime's CPU provider, whose ConvTranspose has no int8 kernel (31% of int8
    end-to-end time stayed fp32) and computes through a [Cout * 16, H * W] column buffer
    (32 MiB at 256x256): its Convs have both. OpenVINO runs its own int8 deconvolution faster
    than the four convolutions, so bundles keep both forms (``cpu_graphs``).
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
                w_p = w[:, :, PHASE_TAPS[ry], :][:, :, :, PHASE_TAPS[rx]].transpose(1, 0, 2, 3)
                g.initializer.append(
                    onnx.numpy_helper.from_array(np.ascontiguousarray(w_p), f"{name}_w")
                )
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


def chain(
    parts: list[tuple[str, onnx.ModelProto]],
    links: list[tuple[str, str]],
    outputs: list[str],
    renames: dict[str, str],
    name: str,
) -> onnx.ModelProto:
    """Compose graphs in sequence: each part gets its prefix, ``links`` feed one part's output
    into the next part's input, nodes that no kept output needs are dropped, and the kept
    tensors are renamed."""
    merged = compose.add_prefix(parts[0][1], parts[0][0])
    for (prefix, model), link in zip(parts[1:], links):
        nxt = compose.add_prefix(model, prefix)
        # keep every output for now (merge_models drops linked ones); pruned below
        keep = [o.name for o in merged.graph.output] + [o.name for o in nxt.graph.output]
        merged = compose.merge_models(merged, nxt, io_map=[link], outputs=keep)
    g = merged.graph
    needed, kept = set(outputs), []
    for node in reversed(g.node):  # nodes are topologically sorted
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
    kept.reverse()
    del g.node[:]
    g.node.extend(kept)
    keep_out = [o for o in g.output if o.name in outputs]
    del g.output[:]
    g.output.extend(sorted(keep_out, key=lambda o: outputs.index(o.name)))
    keep_in = [i for i in g.input if i.name in needed]
    del g.input[:]
    g.input.extend(keep_in)
    keep_init = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(keep_init)
    for node in g.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for vi in list(g.input) + list(g.output):
        vi.name = renames.get(vi.name, vi.name)
    g.name = name
    return merged


def fuse(encoder: onnx.ModelProto, quantizer: onnx.ModelProto, decoder: onnx.ModelProto):
    """One graph image -> (indices, reconstruction), composed from the three parts."""
    return chain(
        [("enc/", encoder), ("quant/", quantizer), ("dec/", decoder)],
        [("enc/latent", "quant/latent"), ("quant/indices", "dec/indices")],
        ["quant/indices", "dec/image"],
        {"enc/image": "image", "quant/indices": "indices", "dec/image": "reconstruction"},
        "vqedge_tokenizer",
    )


def fuse_multiscale(
    encoder: onnx.ModelProto,
    quantizer: onnx.ModelProto,
    scales: onnx.ModelProto,
    decoder: onnx.ModelProto,
) -> onnx.ModelProto:
    """Multi-scale: image -> (indices [B, L], reconstruction) through the scales graph."""
    return chain(
        [("enc/", encoder), ("quant/", quantizer), ("scales/", scales), ("dec/", decoder)],
        [
            ("enc/latent", "quant/latent"),
            ("quant/indices", "scales/indices"),
            ("scales/f_hat", "dec/f_hat"),
        ],
        ["quant/indices", "dec/image"],
        {"enc/image": "image", "quant/indices": "indices", "dec/image": "reconstruction"},
        "vqedge_tokenizer",
    )


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """fp16 weights and arithmetic, fp32 inputs and outputs kept."""
    from onnxconverter_common import float16

    return float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)


class _Reader:
    """onnxruntime.quantization CalibrationDataReader over a list of input arrays."""

    def __init__(self, name: str, arrays: list[np.ndarray]) -> None:
        self._it: Iterator[dict[str, np.ndarray]] = iter([{name: a} for a in arrays])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def to_int8(model_path: Path, out_path: Path, input_name: str, calib: list[np.ndarray]) -> None:
    """Static QDQ int8: per-channel int8 weights, uint8 activations, calibrated on ``calib``.

    Convolutions (and the ReLU/Add around them) are quantized; the codebook lookup and the
    final clamp stay float.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prep = Path(tmp) / "prep.onnx"
        quant_pre_process(str(model_path), str(prep), skip_symbolic_shape=True)
        quantize_static(
            str(prep),
            str(out_path),
            _Reader(input_name, calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["Conv", "ConvTranspose", "Relu", "Add"],
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
