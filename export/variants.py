"""Reduced-precision variants of the exported graphs and the fused one-call graph.

The quantizer graph (an argmin over distances) stays fp32 in every variant: reduced
precision there would flip tokens without making anything measurably faster.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import compose


def fuse(encoder: onnx.ModelProto, quantizer: onnx.ModelProto, decoder: onnx.ModelProto):
    """One graph image -> (indices, reconstruction), composed from the three parts."""
    enc_q = compose.merge_models(
        compose.add_prefix(encoder, "enc/"),
        compose.add_prefix(quantizer, "quant/"),
        io_map=[("enc/latent", "quant/latent")],
    )
    fused = compose.merge_models(
        enc_q,
        compose.add_prefix(decoder, "dec/"),
        io_map=[("quant/indices", "dec/indices")],
        outputs=["quant/indices", "dec/image"],
    )
    renames = {"enc/image": "image", "quant/indices": "indices", "dec/image": "reconstruction"}
    for node in fused.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for vi in list(fused.graph.input) + list(fused.graph.output):
        vi.name = renames.get(vi.name, vi.name)
    fused.graph.name = "vqedge_tokenizer"
    return fused


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
