"""The frontier harness's results as markdown and JSON (benchmarks/frontier.py measures)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vqedge.runtime.atomic import write_bytes_atomic
from vqedge.runtime.fidelity import ENCODER_STAGE, TOKENS_MIN_AGREEMENT, judge_tokens

PROVIDERS = ("cpu", "openvino")
# whole-graph rows: label in the worker's jobs -> what the report calls it
WHOLE = {
    "fp32": "fp32",
    "fp16": "fp16 graph",
    "fp32/f16": "fp32 graph, OpenVINO f16 inference precision",
    "fp32/bf16": "fp32 graph, OpenVINO bf16 inference precision",
    "int8-shipped": "int8 (shipped bundle's variant)",
}
GPU_NOTE = (
    "GPU: not run (no GPU was lent to the session that made this file); "
    "`python -m vqedge.benchmarks.gpu` runs the same per-stage plan on CUDA (TF32 off, fp16)."
)


def _cell(row: dict[str, Any] | None, key: str) -> str:
    if row is None:
        return "-"
    if key == "ms":
        return f"{row['ms']:.1f}"
    return f"{row['agreement']:.2%}"


def _tier(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    return "tokens" if judge_tokens(ENCODER_STAGE, "", row["agreement"]).holds else "below"


def reduced(b: dict[str, Any], rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rows that run below fp32: not the trail's all-float step (the fp32 graph), not a
    hint this provider ran at f32 (the tokens of its own fp32 run)."""
    all_float = f"float{len(b['search']['units'])}"
    return {
        k: r
        for k, r in rows.items()
        if k != "fp32" and k != all_float and not (k.startswith("fp32/") and
                                                    r.get("same_as_provider_fp32"))
    }  # fmt: skip


def best_in_tier(rows: dict[str, dict[str, Any]]) -> tuple[str, dict[str, Any]] | None:
    """The fastest encoder whose tokens hold the tokens tier."""
    held = [(k, r) for k, r in rows.items() if r["agreement"] >= TOKENS_MIN_AGREEMENT]
    return min(held, key=lambda kr: kr[1]["ms"]) if held else None


def verdicts(b: dict[str, Any]) -> list[str]:
    """Per provider: the fastest reduced-precision encoder in the tokens tier, against fp32
    on it, and the best agreement any reduced precision reached."""
    lines = []
    for prov in PROVIDERS:
        res = b["providers"].get(prov, {})
        if "rows" not in res:
            lines.append(f"- {prov}: not measured ({res.get('error', 'no result')[:200]})")
            continue
        rows = reduced(b, res["rows"])
        fp32 = res["rows"]["fp32"]["ms"]
        best = best_in_tier(rows)
        if best is None:
            top = max(rows.items(), key=lambda kr: kr[1]["agreement"])
            lines.append(
                f"- {prov}: no encoder below fp32 holds the tokens tier; the closest is "
                f"{top[0]} at {top[1]['agreement']:.2%} of fp32's tokens ({top[1]['ms']:.1f} "
                f"ms; fp32 {fp32:.1f} ms): the fastest faithful encoder here is fp32"
            )
            continue
        label, r = best
        lines.append(
            f"- {prov}: fastest encoder below fp32 in the tokens tier: **{label}**, "
            f"{r['ms']:.1f} ms, {r['agreement']:.2%} of fp32's tokens; fp32 {fp32:.1f} ms ("
            + (f"{fp32 / r['ms']:.2f}x" if r["ms"] < fp32 else "not faster")
            + ", measured once: confirm on a quiet machine)"
        )
    return lines


def _scales(per: list[float]) -> str:
    return " ".join(f"{a:.0%}" for a in per)


def bundle_md(b: dict[str, Any]) -> list[str]:
    s = b["search"]
    v = b["validation"]
    provs = [p for p in PROVIDERS if "rows" in b["providers"].get(p, {})]
    ms = bool(b["scales"])
    out = [
        f"## {b['bundle']} ({b['kind']}, {b['side']}x{b['side']} encoder input)",
        "",
        f"Validation: {v['tiles']} tiles of {v['tile_side']}x{v['tile_side']} from the "
        f"validation photos shrunk to {v['photos_shrunk_to']} px ({v['positions']} token "
        f"positions). Calibration: {b['calibration']['images']} training crops of "
        f"{b['calibration']['side']} px. {len(s['nodes'])} quantizable nodes in "
        f"{len(s['units'])} units; search "
        f"{b['search_seconds']} s.",
        "",
        "### Whole-graph precisions",
        "",
        "| encoder | "
        + " | ".join(f"{p} agreement | {p} ms | {p} tier" for p in provs)
        + " |"
        + (" per scale (cpu) |" if ms else ""),
        "|---|" + "---:|---:|---|" * len(provs) + ("---|" if ms else ""),
    ]
    for label, name in WHOLE.items():
        rows = [b["providers"][p]["rows"].get(label) for p in provs]
        if not any(rows):
            continue
        cells = [f"{_cell(r, 'a')} | {_cell(r, 'ms')} | {_tier(r)}" for r in rows]
        cpu = b["providers"].get("cpu", {}).get("rows", {}).get(label)
        extra = f" {_scales(cpu['per_scale'])} |" if ms and cpu else (" - |" if ms else "")
        out.append(f"| {name} | " + " | ".join(cells) + " |" + extra)
    out += [
        "",
        "### Mixed int8: units returned to float, most helpful first",
        "",
        "Every quantizable node int8 (QDQ, the int8 recipe), then the unit (a Conv with the "
        "Relu/Add QDQ fuses into it) whose return alone raised agreement most goes back to "
        "float, one more per row; * marks the frontier (agreement above every row with fewer "
        "float nodes). The last row with every unit float is the fp32 graph.",
        "",
        "| float units | float nodes | unit returned | "
        + " | ".join(f"{p} agreement | {p} ms" for p in provs)
        + " |"
        + (" per scale (cpu) |" if ms else ""),
        "|---:|---:|---|" + "---:|---:|" * len(provs) + ("---|" if ms else ""),
    ]
    front = set(s["frontier_counts"])
    before: list[str] = []
    for k, step in enumerate(s["trail"]):
        label = f"float{k}"
        rows = [b["providers"][p]["rows"].get(label) for p in provs]
        cells = [f"{_cell(r, 'a')} | {_cell(r, 'ms')}" for r in rows]
        node = ", ".join(step["float_nodes"][len(before) :]) or "(all int8)"
        before = step["float_nodes"]
        mark = "*" if step["float_count"] in front else ""
        extra = f" {_scales(step['per_scale'])} |" if ms else ""
        out.append(
            f"| {k} | {step['float_count']}{mark} | {node} | " + " | ".join(cells) + " |" + extra
        )
    ov = b["providers"].get("openvino", {}).get("rows", {})
    same = [h for h in ("fp32/f16", "fp32/bf16") if ov.get(h, {}).get("same_as_provider_fp32")]
    if same:
        out += [
            "",
            f"OpenVINO's {' and '.join(h.split('/')[1] for h in same)} inference precision "
            "gave the tokens of its f32 run at every position: on a CPU without "
            "AVX512-FP16/BF16 or AMX the CPU plugin runs such a hint at f32.",
        ]
    plan = s["plan"]
    out += [
        "",
        "Search (CPU provider's agreement): "
        + (
            f"{plan['float_count']} float node(s) of {len(s['nodes'])} reach "
            f"{plan['agreement']:.2%}."
            if plan
            else f"no mixed plan reached {TOKENS_MIN_AGREEMENT:.0%} before every node was float."
        ),
        "",
        *verdicts(b),
        "",
    ]
    if ms:
        out += parting(b)
    return out


def parting(b: dict[str, Any]) -> list[str]:
    """Where in a multi-scale residual chain the tokens part from fp32's."""
    rows = b["providers"].get("cpu", {}).get("rows", {})
    lines = ["### Where the tokens part (per scale, coarse to fine, CPU provider)", ""]
    for label in ("int8-shipped", "float0", "fp16"):
        r = rows.get(label)
        if not r:
            continue
        first = next((i for i, a in enumerate(r["per_scale"]) if a < TOKENS_MIN_AGREEMENT), None)
        where = (
            f"first below {TOKENS_MIN_AGREEMENT:.0%} at scale {first + 1} "
            f"({b['scales'][first]}x{b['scales'][first]})"
            if first is not None
            else "every scale holds"
        )
        lines.append(f"- {label}: {_scales(r['per_scale'])}: {where}")
    return [*lines, ""]


def write_report(data: dict[str, Any], out: Path) -> None:
    """``out`` (markdown) and ``out.with_suffix('.json')``, atomically."""
    import json

    from vqedge.benchmarks.machine import provenance_md

    md = [
        "# Encoder precision frontier: token agreement and latency per float node",
        "",
        *provenance_md(data["provenance"]),
        "",
        f"Tokens tier (vqedge.runtime.fidelity): at least {TOKENS_MIN_AGREEMENT:.0%} of token "
        "positions equal to the fp32 encoder's (CPU provider), the lookup at fp32 on the CPU "
        "provider in every row. Latency: median encoder run on one image, default threads, "
        "one run per graph: on a shared machine (load average above) the figures carry its "
        "noise.",
        "",
        GPU_NOTE,
        "",
    ]
    for b in data["bundles"]:
        md += bundle_md(b)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, "\n".join(md).encode())
    write_bytes_atomic(out.with_suffix(".json"), json.dumps(data, indent=1).encode())
