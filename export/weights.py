"""Shared external weights: each tensor of a bundle stored once per precision.

Every weight of a graph moves into an ONNX external-data file beside it
(``weights.fp32.bin``, ``weights.int8.bin``), found by content: a tensor whose bytes are
already stored (the decoder's weights in the CPU-provider decoder, the fp32 tensors an fp16
graph casts, the codebook in several graphs) points at the stored bytes. An fp16 graph reads
the fp32 file for the tensors it casts; an int8 graph keeps its own copy of the few float
tensors it shares with fp32 (biases, norms), so that an int8 variant never downloads the
fp32 weights (an edge device, a browser). The fp32 graphs an int8 variant shares (the
nearest-code lookup) keep their small tensors inside the graph file for the same reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# offsets of stored tensors are multiples of this, so every tensor starts aligned for SIMD
ALIGN = 64
# the precisions whose graphs read the fp32 weights file for a tensor stored there (fp16
# graphs cast fp32 tensors at load); any other keeps its own copy
READS_FP32 = ("fp32", "fp16")


def weights_file(precision: str) -> str:
    return f"weights.{precision}.bin"


class WeightStore:
    """One external-data file, appended to; identical bytes are stored once."""

    def __init__(self, folder: Path, precision: str) -> None:
        self.name = weights_file(precision)
        self.path = folder / self.name
        self._offsets: dict[bytes, int] = {}
        self._size = 0
        self._fh = None

    def __contains__(self, data: bytes) -> bool:
        return data in self._offsets

    def add(self, data: bytes) -> int:
        """The offset of ``data`` in the file, appending it if not stored yet."""
        if data in self._offsets:
            return self._offsets[data]
        if self._fh is None:
            self._fh = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        pad = -self._size % ALIGN
        self._fh.write(b"\0" * pad)
        offset = self._size + pad
        self._fh.write(data)
        self._size = offset + len(data)
        self._offsets[data] = offset
        return offset

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


def is_weight(t: onnx.TensorProto) -> bool:
    """A tensor that goes to the weights file: anything but scalars and int64 shape data."""
    return t.data_type != onnx.TensorProto.INT64 and int(np.prod(t.dims)) > 1


def externalize(
    model: onnx.ModelProto, stores: dict[str, WeightStore], precision: str
) -> list[str]:
    """Move every weight of ``model`` (a graph of ``precision``) into the stores, in place.

    A tensor already in the fp32 store points there (for ``READS_FP32`` precisions); any
    other goes to the store of ``precision``. Returns the names of the files the graph now
    reads.
    """
    used = set()
    shape_data = _shape_inputs(model.graph)
    for t in model.graph.initializer:
        if not is_weight(t) or t.name in shape_data:
            continue
        data = np.ascontiguousarray(numpy_helper.to_array(t)).tobytes()
        fp32 = stores.get("fp32")
        shared = fp32 is not None and precision in READS_FP32 and data in fp32
        store = fp32 if shared else stores[precision]
        offset = store.add(data)
        ext = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=list(t.dims))
        ext.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", store.name), ("offset", offset), ("length", len(data))):
            ext.external_data.add(key=key, value=str(value))
        t.CopyFrom(ext)
        used.add(store.name)
    return sorted(used)


def _shape_inputs(graph: onnx.GraphProto) -> set[str]:
    """Tensors that say a shape (Resize's roi / scales / sizes): they stay in the graph,
    where shape inference reads them."""
    return {name for n in graph.node if n.op_type == "Resize" for name in n.input[1:] if name}


def read_external(path: Path) -> dict[str, tuple[str, int, int]]:
    """Each external tensor of a graph file: name -> (file, offset, length)."""
    model = onnx.load(str(path), load_external_data=False)
    out = {}
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in t.external_data}
            out[t.name] = (info["location"], int(info["offset"]), int(info["length"]))
    return out
