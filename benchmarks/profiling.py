"""Where the time goes: onnxruntime's profiler over a tokenizer's sessions, node by node."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.runtime.images import uint8_to_float
from vqedge.runtime.providers import ProviderList

KERNEL = "_kernel_time"


def node_times(trace: str | Path, skip_first: int = 1) -> dict[str, dict[str, Any]]:
    """Median time per run of every node in one onnxruntime profile (a JSON trace).

    Parameters
    ----------
    trace : str or Path
        The file ``InferenceSession.end_profiling()`` wrote.
    skip_first : int
        Runs left out at the start of each node's record (warm-up).

    Returns
    -------
    dict
        node name -> {"op_type", "provider", "ms" (median per run), "runs"}.
    """
    runs: dict[str, list[float]] = defaultdict(list)
    facts: dict[str, tuple[str, str]] = {}
    for ev in json.loads(Path(trace).read_text()):
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith(KERNEL):
            continue
        name = ev["name"][: -len(KERNEL)]
        runs[name].append(ev["dur"] / 1e3)  # microseconds -> ms
        args = ev.get("args", {})
        facts[name] = (args.get("op_name", "?"), args.get("provider", "?"))
    out = {}
    for name, ms in runs.items():
        kept = ms[skip_first:] or ms
        op, provider = facts[name]
        out[name] = {
            "op_type": op,
            "provider": provider,
            "ms": float(np.median(kept)),
            "runs": len(kept),
        }
    return out


def profile_tokenizer(
    bundle: str | Path | None = None,
    precision: str = "fp32",
    providers: str | ProviderList = "auto",
    threads: int | None = None,
    batch: int = 1,
    size: int = 256,
    iters: int = 10,
    top: int = 10,
) -> dict[str, Any]:
    """Run the three stages under onnxruntime's profiler and rank the nodes by time.

    The profiler adds a little time per node, so read the shares, not the absolute
    milliseconds, against ``vqedge bench``. A graph that an execution provider takes whole
    (OpenVINO) shows as one node.

    Returns
    -------
    dict
        "nodes": the ``top`` nodes over all graphs (graph, node, op_type, provider, ms per
        run, share of all node time); "op_types": time and share per graph and op type;
        "total_ms": node time per run; the configuration.
    """
    from vqedge.benchmarks.timing import synthetic_images
    from vqedge.runtime import load
    from vqedge.runtime.session import default_session_options

    with tempfile.TemporaryDirectory(prefix="vqedge-profile-") as tmp:
        opts = default_session_options(threads)
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "vqedge")
        tok = load(bundle, providers=providers, precision=precision, session_options=opts)
        x = uint8_to_float(synthetic_images(batch, size))
        for _ in range(iters + 1):  # the first run is the warm-up, left out below
            tok.decode(tok.quantize(tok.encode_latent(x)), output="float")
        traces = tok.end_profiling()
        per_graph = {graph: node_times(path) for graph, path in traces.items()}
    rows = [
        {"graph": graph, "node": name, **facts}
        for graph, nodes in per_graph.items()
        for name, facts in nodes.items()
    ]
    return {
        "precision": tok.plan.describe(),
        "providers_in_use": tok.info["providers_in_use"],
        "batch": batch,
        "size": [size, size],
        "iters": iters,
        **rank_nodes(rows, top),
    }


def rank_nodes(rows: list[dict[str, Any]], top: int) -> dict[str, Any]:
    """Rank node rows ({"graph", "node", "op_type", "provider", "ms"}) by time.

    Returns
    -------
    dict
        "total_ms": all node time per run; "nodes": the ``top`` rows with their "share" of
        it; "op_types": time and share per graph and op type, largest first.
    """
    total = sum(r["ms"] for r in rows) or 1.0
    by_op: dict[tuple[str, str], float] = defaultdict(float)
    for r in rows:
        r["share"] = r["ms"] / total
        by_op[(r["graph"], r["op_type"])] += r["ms"]
    rows = sorted(rows, key=lambda r: -r["ms"])
    op_types = [
        {"graph": g, "op_type": op, "ms": ms, "share": ms / total}
        for (g, op), ms in sorted(by_op.items(), key=lambda kv: -kv[1])
    ]
    return {"total_ms": total, "nodes": rows[:top], "op_types": op_types}


def format_profile(p: dict[str, Any]) -> str:
    """The hottest nodes and op types of a ``profile_tokenizer`` result, as text."""
    lines = [
        f"hottest nodes ({p['precision']}, batch {p['batch']} x {p['size'][0]}x{p['size'][1]}, "
        f"{p['total_ms']:.1f} ms of node time per run):",
        f"{'graph':<10}{'op type':<22}{'ms':>8}{'share':>8}  node",
    ]
    for r in p["nodes"]:
        lines.append(
            f"{r['graph']:<10}{r['op_type']:<22}{r['ms']:>8.2f}{r['share']:>8.1%}  {r['node']}"
        )
    lines.append("by op type:")
    for r in p["op_types"][:10]:
        lines.append(f"{r['graph']:<10}{r['op_type']:<22}{r['ms']:>8.2f}{r['share']:>8.1%}")
    return "\n".join(lines)
