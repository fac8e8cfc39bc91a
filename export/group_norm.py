"""GroupNorm from per-channel statistics, as the fp32 graphs compute it.

PyTorch's exporter writes ``GroupNorm(G)`` on x [N, C, H, W] as Reshape(x, [0, G, -1]),
InstanceNormalization (unit scale, zero bias), Reshape back, Mul(gamma), Add(beta). That form
costs on two counts. onnxruntime's CPU InstanceNormalization over groups of millions of
values drifts from PyTorch: VAR's 512 encoder failed the export gate. And the reshape to
[N, G, C/G * H * W] takes the tensor out of the blocked channel layout that OpenVINO keeps
between convolutions, so every GroupNorm cost two layout reorders of a full-size activation.
The same function computed from per-channel means keeps the channel axis where it is::

    m_c = mean_HW(x)                 [N, C, 1, 1]
    m   = group_mean(m_c)            every channel gets its group's mean
    d   = x - m
    v   = group_mean(mean_HW(d * d)) the group's variance (two passes, as GroupNorm)
    y   = d * (gamma / sqrt(v + eps)) + beta

where group_mean averages the C/G channels of each group (equal sizes, so the mean of the
channel means is the group mean). Only [N, C, 1, 1] tensors are reshaped. Its accuracy is what
the export gate checks (docs/export.md); its speed against the exporter's form is what
`python -m vqedge.benchmarks.forms` measures.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _constants(g: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Every constant tensor of the graph by name (initializers and Constant nodes)."""
    out = {t.name: t for t in g.initializer}
    out.update({n.output[0]: n.attribute[0].t for n in g.node if n.op_type == "Constant"})
    return out


def _match(
    norm: onnx.NodeProto, consts: dict[str, onnx.TensorProto], producer, consumers, outputs
) -> dict | None:
    """The exporter's GroupNorm around one InstanceNormalization, or None if it is not one:
    x -> Reshape([0, G, -1]) -> InstanceNormalization(1, 0) -> Reshape -> Mul -> Add, each
    step's output read by the next step only."""

    def value(name: str) -> np.ndarray | None:
        return numpy_helper.to_array(consts[name]) if name in consts else None

    r1 = producer.get(norm.input[0])
    if r1 is None or r1.op_type != "Reshape" or len(consumers.get(r1.output[0], [])) != 1:
        return None
    shape = value(r1.input[1])
    if shape is None or shape.shape != (3,) or shape[0] != 0 or shape[2] != -1:
        return None
    scale, bias = value(norm.input[1]), value(norm.input[2])
    if scale is None or bias is None or not (np.all(scale == 1) and np.all(bias == 0)):
        return None
    chain = [norm]
    for op in ("Reshape", "Mul", "Add"):
        after = consumers.get(chain[-1].output[0], [])
        if len(after) != 1 or after[0].op_type != op:
            return None
        chain.append(after[0])
    _, r2, mul, add = chain
    if any(n.output[0] in outputs for n in (r1, norm, r2, mul)):
        return None
    gamma_name = next((i for i in mul.input if i != r2.output[0]), "")
    beta_name = next((i for i in add.input if i != mul.output[0]), "")
    gamma, beta = value(gamma_name), value(beta_name)
    groups = int(shape[1])
    if gamma is None or beta is None or gamma.ndim != 3 or gamma.shape[1:] != (1, 1):
        return None
    channels = gamma.shape[0]
    if beta.shape != gamma.shape or channels % groups:
        return None
    eps = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
    return {
        "x": r1.input[0], "y": add.output[0], "groups": groups, "channels": channels,
        "eps": eps, "gamma": gamma_name, "beta": beta_name, "nodes": [r1, *chain],
    }  # fmt: skip


def _group_mean(t: str, p: str, out: str) -> list[onnx.NodeProto]:
    """[N, C, 1, 1] -> each channel's group mean, [N, C, 1, 1] (constants named ``{p}_*``,
    added by the caller)."""
    make = helper.make_node
    return [
        make("Reshape", [t, f"{p}_grouped"], [f"{out}_g"], name=f"{out}_g"),
        make("ReduceMean", [f"{out}_g", f"{p}_last"], [f"{out}_gm"], name=f"{out}_gm", keepdims=1),
        make("Expand", [f"{out}_gm", f"{p}_per_group"], [f"{out}_ge"], name=f"{out}_ge"),
        make("Reshape", [f"{out}_ge", f"{p}_channels"], [out], name=out),
    ]


def group_norm_from_channel_stats(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite every exported GroupNorm of ``model`` (opset 18 or later) with per-channel
    statistics -> (the rewritten copy, how many were rewritten). The same function up to
    float rounding; weights are the graph's own (gamma and beta are used as they are)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    replaced: dict[int, list[onnx.NodeProto]] = {}  # id of the first node -> its new nodes
    dropped: set[int] = set()
    hw = "chstats_axes_hw"
    consts: dict[str, np.ndarray] = {hw: np.array([2, 3], np.int64)}
    make = helper.make_node
    known = _constants(g)
    outputs = {o.name for o in g.output}
    for k, norm in enumerate(n for n in g.node if n.op_type == "InstanceNormalization"):
        m = _match(norm, known, producer, consumers, outputs)
        if m is None:
            continue
        C, G = m["channels"], m["groups"]
        p = f"chstats_c{C}_g{G}"  # shape constants, shared by every GroupNorm of this shape
        consts[f"{p}_grouped"] = np.array([0, G, C // G], np.int64)
        consts[f"{p}_last"] = np.array([2], np.int64)
        consts[f"{p}_per_group"] = np.array([1, 1, C // G], np.int64)
        consts[f"{p}_channels"] = np.array([0, C, 1, 1], np.int64)
        eps = f"chstats{k}_eps"
        consts[eps] = np.array(m["eps"], np.float32)
        x, q = m["x"], f"chstats{k}"
        nodes = [
            make("ReduceMean", [x, hw], [f"{q}_mc"], name=f"{q}_mc", keepdims=1),
            *_group_mean(f"{q}_mc", p, f"{q}_mean"),
            make("Sub", [x, f"{q}_mean"], [f"{q}_d"], name=f"{q}_d"),
            make("Mul", [f"{q}_d", f"{q}_d"], [f"{q}_d2"], name=f"{q}_d2"),
            make("ReduceMean", [f"{q}_d2", hw], [f"{q}_vc"], name=f"{q}_vc", keepdims=1),
            *_group_mean(f"{q}_vc", p, f"{q}_var"),
            make("Add", [f"{q}_var", eps], [f"{q}_ve"], name=f"{q}_ve"),
            make("Sqrt", [f"{q}_ve"], [f"{q}_sd"], name=f"{q}_sd"),
            make("Reciprocal", [f"{q}_sd"], [f"{q}_rs"], name=f"{q}_rs"),
            make("Mul", [f"{q}_rs", m["gamma"]], [f"{q}_scale"], name=f"{q}_scale"),
            make("Mul", [f"{q}_d", f"{q}_scale"], [f"{q}_n"], name=f"{q}_n"),
            make("Add", [f"{q}_n", m["beta"]], [m["y"]], name=f"{q}_y"),
        ]
        first, *rest = m["nodes"]
        replaced[id(first)] = nodes
        dropped.update(id(n) for n in rest)
    if not replaced:
        return out, 0
    new_nodes = []
    for n in g.node:
        if id(n) in replaced:
            new_nodes.extend(replaced[id(n)])
        elif id(n) not in dropped:
            new_nodes.append(n)
    # what fed only the replaced nodes (the Shape of x for the reshape back) goes too
    outputs = {o.name for o in g.output}
    while True:
        used = {i for n in new_nodes for i in n.input} | outputs
        live = [n for n in new_nodes if any(o in used for o in n.output)]
        if len(live) == len(new_nodes):
            break
        new_nodes = live
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(numpy_helper.from_array(v, name) for name, v in consts.items())
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return out, len(replaced)
