"""Accuracy-driven mixed precision for an encoder: the fewest nodes kept float for its int8
tokens to hold the tokens tier (``vqedge.runtime.fidelity``).

The search follows NNCF's accuracy control: quantize every node the int8 recipe quantizes
(``variants.to_int8``), rank the nodes once by how much returning each one alone to float
raises token agreement with fp32, then return them to float in that order, one more at each
step, measuring agreement (and, through ``timer``, the encoder's latency) each time. The
trail of steps is kept whole; its frontier is the steps that beat every step with fewer float
nodes, so agreement on the frontier rises with the number of float nodes. Agreement is always
measured through the fp32 nearest-code lookup, on images that calibrate nothing.

numpy, onnx and onnxruntime only: the export calls it, and so does the benchmark harness.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from vqedge.export.variants import QUANTIZED_OPS, prepare_for_int8, quantize_prepared
from vqedge.runtime.fidelity import ENCODER_STAGE, TOKENS_MIN_AGREEMENT, judge_tokens

# the frontier's agreement figures: the share of positions equal to fp32's tokens
Scorer = Callable[[Path], tuple[float, list[float]]]
# encoder latency in ms of a graph file, per provider ("cpu", "openvino", ...)
Timer = Callable[[Path], dict[str, float]]


@dataclass
class Step:
    """One point of the search: these nodes float, every other quantizable node int8."""

    float_nodes: list[str]
    agreement: float
    per_scale: list[float] = field(default_factory=list)
    encoder_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "float_count": len(self.float_nodes),
            "float_nodes": list(self.float_nodes),
            "agreement": self.agreement,
            "per_scale": list(self.per_scale),
            "encoder_ms": dict(self.encoder_ms),
            "tier": judge_tokens(ENCODER_STAGE, "mixed", self.agreement, self.per_scale).holds,
        }


@dataclass
class Search:
    """The whole search: every quantizable node, each one's gain when returned alone, the
    trail of steps, and the plan (the first frontier step in the tokens tier, or None)."""

    nodes: list[str]
    units: list[list[str]]
    single_gain: dict[str, float]
    trail: list[Step]
    target: float = TOKENS_MIN_AGREEMENT

    @property
    def frontier(self) -> list[Step]:
        """The steps whose agreement beats every step with fewer float nodes."""
        best, out = -1.0, []
        for s in self.trail:
            if s.agreement > best:
                out.append(s)
                best = s.agreement
        return out

    @property
    def plan(self) -> Step | None:
        return next((s for s in self.frontier if s.agreement >= self.target), None)

    def to_dict(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "nodes": list(self.nodes),
            "units": [list(u) for u in self.units],
            "single_gain": dict(self.single_gain),
            "trail": [s.to_dict() for s in self.trail],
            "frontier_counts": [len(s.float_nodes) for s in self.frontier],
            "target": self.target,
            "plan": plan.to_dict() if plan else None,
        }


def quantizable_nodes(model_path: Path) -> list[str]:
    """The names of the nodes the int8 recipe quantizes, in graph order."""
    model = onnx.load(str(model_path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS]


def quantizable_units(model_path: Path) -> list[list[str]]:
    """The quantizable nodes grouped as the QDQ format fuses them: a Relu or Add whose first
    input is the only use of a quantizable node's output joins that node's unit (Conv ->
    Relu, Conv -> Add -> Relu), so a unit returns to float whole. Returning a Conv's Relu
    alone would only move the 8-bit rounding before the Relu."""
    model = onnx.load(str(model_path), load_external_data=False)
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    unit_of: dict[str, list[str]] = {}  # output tensor -> the unit its producer is in
    units: list[list[str]] = []
    for n in model.graph.node:
        if n.op_type not in QUANTIZED_OPS:
            continue
        src = n.input[0] if n.input else ""
        if n.op_type in ("Relu", "Add") and src in unit_of and uses.get(src) == 1:
            unit = unit_of[src]
            unit.append(n.name)
        else:
            unit = [n.name]
            units.append(unit)
        for o in n.output:
            unit_of[o] = unit
    return units


class TokenScorer:
    """Token agreement of an encoder graph with fp32's tokens, through the fp32 lookup.

    Parameters
    ----------
    quantizer : Path
        The bundle's fp32 quantizer graph (latent -> indices).
    images : list of ndarray
        [1, 3, H, W] float inputs in the encoder's range; none used for calibration.
    reference : Path
        The fp32 encoder: its tokens are what agreement counts.
    patch_nums : sequence of int
        A multi-scale bundle's scales (tokens per scale: pn * pn, coarse to fine); empty for
        a single-scale bundle.
    """

    def __init__(
        self,
        quantizer: Path,
        images: list[np.ndarray],
        reference: Path,
        patch_nums: Sequence[int] = (),
    ) -> None:
        self.images = images
        self.patch_nums = list(patch_nums)
        self._lookup = _session(quantizer)
        self.reference = [self._tokens(_session(reference), x) for x in images]

    def _tokens(self, enc: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
        latent = enc.run(None, {enc.get_inputs()[0].name: x})[0]
        return self._lookup.run(None, {self._lookup.get_inputs()[0].name: latent})[0]

    def __call__(self, encoder: Path) -> tuple[float, list[float]]:
        """(agreement over every position, agreement per scale or [])."""
        sess = _session(encoder)
        equal = [self._tokens(sess, x) == ref for x, ref in zip(self.images, self.reference)]
        total = float(np.mean(np.concatenate([e.reshape(-1) for e in equal])))
        per = []
        if self.patch_nums:
            flat = np.concatenate([e.reshape(e.shape[0], -1) for e in equal])  # [N, L]
            start = 0
            for pn in self.patch_nums:
                per.append(float(flat[:, start : start + pn * pn].mean()))
                start += pn * pn
        return total, per


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def search(
    model_path: Path,
    input_name: str,
    calib: list[np.ndarray],
    scorer: Scorer,
    work: Path,
    timer: Timer | None = None,
    log: Callable[[str], None] = lambda s: None,
    max_float: int | None = None,
    target: float = TOKENS_MIN_AGREEMENT,
) -> Search:
    """Rank the encoder's quantizable units (``quantizable_units``) and return them to float
    one by one until its tokens hold the tokens tier (or every unit is float, or
    ``max_float`` units are).

    Parameters
    ----------
    model_path : Path
        The fp32 encoder graph.
    input_name : str
        Its input's name.
    calib : list of ndarray
        Calibration inputs (training images), as ``to_int8`` takes them.
    scorer : callable
        Path of an encoder graph -> (agreement with fp32's tokens, per scale).
    work : Path
        A folder for the graphs of each step: step ``k`` (``k`` units float) is
        ``work / f"float{k}.onnx"``.
    timer : callable, optional
        Path -> {provider: encoder ms}; each step of the trail is timed when given.
    log : callable
        Progress lines.
    max_float : int, optional
        Stop after this many units are float even if the tier is not reached.
    target : float
        The agreement to reach: the tokens tier's, or a stricter one (never a looser one).

    Returns
    -------
    Search
    """
    if target < TOKENS_MIN_AGREEMENT:
        raise ValueError(
            f"target agreement {target} is below the tokens tier's {TOKENS_MIN_AGREEMENT}: "
            "the search may be stricter than the tier, never looser"
        )
    work.mkdir(parents=True, exist_ok=True)
    nodes = quantizable_nodes(model_path)
    units = quantizable_units(model_path)
    limit = len(units) if max_float is None else min(max_float, len(units))
    with tempfile.TemporaryDirectory() as tmp:
        prep = prepare_for_int8(model_path, Path(tmp))

        def step(excluded: list[str], out: Path) -> Step:
            quantize_prepared(prep, out, input_name, calib, excluded)
            agreement, per = scorer(out)
            return Step(list(excluded), agreement, per, timer(out) if timer else {})

        base = step([], work / "float0.onnx")
        log(f"all {len(nodes)} nodes ({len(units)} units) int8: agreement {base.agreement:.4f}")
        gain = {}
        probe = Path(tmp) / "probe.onnx"
        if base.agreement < target and limit:
            for u in units:
                quantize_prepared(prep, probe, input_name, calib, u)
                gain[u[0]] = scorer(probe)[0] - base.agreement
            log("single-unit gains: " + ", ".join(f"{n} {g:+.4f}" for n, g in gain.items()))
        # most gain first; equal gains: the later unit first (nearer the lookup)
        order = sorted(range(len(units)), key=lambda i: (-gain.get(units[i][0], 0.0), -i))
        trail = [base]
        while trail[-1].agreement < target and len(trail) <= limit:
            k = len(trail)
            excluded = [n for i in order[:k] for n in units[i]]
            trail.append(step(excluded, work / f"float{k}.onnx"))
            log(f"{k} units float: agreement {trail[-1].agreement:.4f} {trail[-1].encoder_ms}")
    return Search(nodes, units, gain, trail, target)


__all__ = [
    "Scorer",
    "Search",
    "Step",
    "Timer",
    "TokenScorer",
    "quantizable_nodes",
    "quantizable_units",
    "search",
]
