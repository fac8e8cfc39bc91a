"""The comparison's report as markdown: provenance, targets, timing with its spread, stages,
fidelity, memory and profiles. Reads the report dict that compare.py builds; computes nothing
but formatting."""

from __future__ import annotations

from typing import Any

import numpy as np

from vqedge.benchmarks.configs import CONFIGS
from vqedge.benchmarks.machine import provenance_md
from vqedge.benchmarks.targets import LOOKUP_NOTE, memory_steps, misses
from vqedge.benchmarks.timing import E2E, STAGES


def _f(v: Any, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None: strict JSON has no inf or NaN."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def _met(v: bool | None) -> str:
    return "within spread" if v is None else "yes" if v else "no"


def _spread(s: dict[str, Any]) -> str:
    return f"{s['median_ms']:.2f} ± {s['spread_ms'] / 2:.2f}"


def _rows(report: dict[str, Any]) -> list[tuple[int, int, str, dict[str, Any]]]:
    rows = []
    for name, r in report["results"].items():
        for c in r.get("cases", []):
            rows.append((c["batch"] * c["size"] ** 2, c["batch"], c["size"], name, c))
    order = {c.name: i for i, c in enumerate(CONFIGS)}
    rows.sort(key=lambda t: (t[0], t[1], order.get(t[3], 99)))
    return [(b, s, name, c) for _, b, s, name, c in rows]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    pk = m["peaks"]
    it = report["iterations"]
    tb, ts = report["target_case"]
    lines = [
        "# vqedge benchmark",
        "",
        f"Bundle `{report['bundle_name']}` ({report['bundle_kind']}"
        + (f", {report['family']} imported" if report.get("family") else ", vqedge's own")
        + (", random weights" if report["quality_reference"].get("random_weights") else "")
        + f"), {report['threads']} threads for every configuration, took "
        f"{report['wall_s'] / 60:.1f} min.",
        "",
        *provenance_md(report["provenance"]),
        f"- PyTorch model: {report.get('torch_model') or 'not run'}",
        f"- GFLOP per image at {ts}x{ts} (fp32 graphs): {_f(report.get('gflop_per_image'), '.2f')}",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']} ({m['vendor']} family {m['family']} model {m['model']}), "
        f"{m['physical_cores']} cores / {m['logical_cpus']} logical CPUs"
        f"{', under a hypervisor' if m['hypervisor'] else ''}, {m['memory_gib']} GiB",
        f"- Key flags: {', '.join(m['key_flags']) or 'none'}",
        f"- Frequency: {_f(m['freq_ghz'], '.3f')} GHz ({m['freq_source']})",
        f"- Peaks ({pk['formula']}, {pk['cores']} cores): "
        + ", ".join(
            f"{k} {_f((pk['gflops'] or {}).get(k), '.0f')} G{'OP' if k == 'int8' else 'FLOP'}/s "
            f"({pk['per_cycle_per_core'][k]}/cycle/core: {pk['derivation'][k]})"
            for k in ("fp32", "bf16", "int8")
        ),
        "- Interpreters: "
        + "; ".join(
            f"`{p['python']}`: "
            + ", ".join(f"{k} {v}" for k, v in p.get("versions", {}).items() if v)
            for p in report["interpreters"]
        ),
        "",
        "## How it was timed",
        "",
        f"Every configuration is loaded once in its own process; then {it['rounds']} rounds, "
        "each running every configuration in turn (the order rotates from round to round), "
        f"each case a warm-up pass then {it['iters']} timed passes. A figure is the median of "
        "the round medians, ± half their range (the spread). A target is met only when it "
        "holds for the least favourable pairing of rounds, missed when it fails for the most "
        "favourable one, and otherwise within spread: this run cannot tell.",
        "",
        f"## Targets (batch {tb} at {ts}x{ts}; cold start and RSS against PyTorch eager fp32's)",
        "",
        "Tiers (vqedge.runtime.fidelity): "
        f"{report['quality_reference'].get('rule', 'not measured')}. The headlines are the "
        "fastest round trip whose encoder and decoder both hold their tiers, and the fastest "
        "decoder in the pixels tier, each against every peer at the same "
        "tiers; a round trip whose stages ran at different precisions is composed from the "
        "stage times of two configurations of the same runtime and provider (marked composed). "
        f"Round trips with the lookup depend on where it runs: {LOOKUP_NOTE}; the rows "
        "without the lookup compare encoder + decoder alone.",
        "",
        "| target | measured | required | met | applies to |",
        "| --- | --- | --- | --- | --- |",
        *(
            f"| {t['target']} | {t['measured']} | {t['required']} | {_met(t['met'])} | "
            f"{t['applies_to']} |"
            for t in report.get("targets", [])
        ),
        "",
        *(
            ["Not met:", "", *misses(report), ""]
            if misses(report)
            else ["Every target with numbers in this run is met.", ""]
        ),
        "## End to end (encoder + quantizer + decoder, numpy in and out)",
        "",
        "Median of the round medians ± half their range; p99 over every timed pass (with "
        "fewer than 100 passes it lies between the two slowest); FLOP/s are the model's FLOPs "
        "over the median, against the peak of the configuration's precision.",
        "",
        "| batch | size | configuration | median ms | p99 ms | passes | images/s | GFLOP/s | "
        "% of peak | peak RSS MiB |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = _rows(report)
    for b, s, name, c in rows:
        if "stages" not in c:
            lines.append(f"| {b} | {s} | {name} | error: {c.get('error', '?')[:80]} |||||||")
            continue
        e = c["stages"][E2E]
        frac = e.get("fraction_of_peak")
        lines.append(
            f"| {b} | {s} | {name} | {_spread(e)} | {e['p99_ms']:.2f} | {e['n']} | "
            f"{c['images_per_s']:.1f} | {_f(e.get('gflops_per_s'))} | "
            f"{_f(frac * 100 if frac is not None else None)} | {_f(c.get('peak_rss_mb'), '.0f')} |"
        )
    lines += [
        "",
        "## Per stage (median ms ± half the range of the round medians)",
        "",
        "Every configuration, every stage. vqedge runs the lookup (quantizer) on onnxruntime's "
        "CPU provider whatever the other graphs run on; OpenVINO's own runtime runs it in "
        "OpenVINO. Encoder + decoder is the end to end without the lookup.",
        "",
        "| batch | size | configuration | encoder ms | quantizer ms | decoder ms | "
        "encoder + decoder ms | encoder GFLOP/s | decoder GFLOP/s |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for b, s, name, c in rows:
        if "stages" not in c:
            continue
        st = c["stages"]
        lines.append(
            f"| {b} | {s} | {name} | "
            + " | ".join(_spread(st[g]) for g in STAGES)
            + f" | {_spread(c['without_lookup'])} | {_f(st['encoder'].get('gflops_per_s'))} | "
            f"{_f(st['decoder'].get('gflops_per_s'))} |"
        )
    lines += _cold_and_fidelity(report)
    lines += _memory(report)
    lines += _profiles(report)
    lines += _not_measured(report)
    return "\n".join(lines)


def _cold_and_fidelity(report: dict[str, Any]) -> list[str]:
    q = report["quality_reference"]
    ms = report["bundle_kind"] == "multi-scale"
    cb, cs = report["cold_case"]
    lines = [
        "",
        "## Cold start and fidelity",
        "",
        f"Cold start: a fresh process, from its launch to the first result of batch {cb} at "
        f"{cs}x{cs} (interpreter start, imports, loading, sessions or compilation, first "
        "run); median of the runs, with their range. Fidelity, on "
        f"{report['inputs']['quality_inputs']}: token agreement and PSNR against "
        + (f"`{q['reference']}`, the bundle's fp32 output" if q["reference"] else "no reference")
        + (" (over every scale, then per scale)" if ms else "")
        + "; identical: the same pixels as the reference"
        + (
            f"; PyTorch on other weights than the bundle's against `{q['reference_other_weights']}`"
            if q.get("reference_other_weights")
            else ""
        )
        + ". Encoder tier: tokens (its token agreement); decoder tier: pixels (its decode of the "
        "reference's tokens, PSNR against the reference's decode). PSNR against the photos is "
        "reported apart: it measures the model, not the configuration"
        + (" (random weights: it measures nothing)" if q.get("random_weights") else "")
        + ".",
        "",
        "| configuration | runs on | cold start s | import s | load s | first result s | "
        "cold peak RSS MiB | token agreement | encoder tier | round trip PSNR vs fp32 dB | "
        "decoder PSNR on fp32's tokens dB | decoder tier | PSNR vs photo dB |"
        + (" per scale |" if ms else ""),
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- | ---: |"
        + (" --- |" if ms else ""),
    ]
    for name, r in report["results"].items():
        cs_ = r.get("cold", {})
        qq = r.get("quality", {})
        vs_ref = qq.get("psnr_vs_reference_db")
        vs_ref = "identical" if qq.get("identical_to_reference") else _f(vs_ref, ".2f")
        runs = cs_.get("runs_total_s") or []
        total = _f(float(np.median(runs)) if runs else None, ".2f") + (
            f" ({min(runs):.2f}-{max(runs):.2f})" if len(runs) > 1 else ""
        )
        tiers = qq.get("tiers", {})
        enc_t, dec_t = tiers.get("encoder"), tiers.get("decoder")
        lines.append(
            f"| {name} | {_runs_on(r)} | {total} | "
            f"{_f(cs_.get('import_s'), '.2f')} | {_f(cs_.get('load_s'), '.2f')} | "
            f"{_f(cs_.get('first_result_s'), '.2f')} | {_f(cs_.get('peak_rss_mb'), '.0f')} | "
            f"{_f(qq.get('token_agreement'), '.4f')} | {_holds(enc_t)} | {vs_ref} | "
            f"{_f(qq.get('decoder_psnr_vs_reference_db'), '.2f')} | {_holds(dec_t)} | "
            f"{_f(qq.get('held_out_psnr_db'), '.2f')} |"
            + (
                " " + " ".join(f"{a:.3f}" for a in qq.get("token_agreement_per_scale", [])) + " |"
                if ms
                else ""
            )
        )
    return lines


def _holds(judgement: dict[str, Any] | None) -> str:
    if not judgement:
        return "-"
    return f"{judgement['tier']}: {'holds' if judgement['holds'] else 'below'}"


def _not_measured(report: dict[str, Any]) -> list[str]:
    skipped = report["skipped_configs"]
    errors = {n: r["error"] for n, r in report["results"].items() if "error" in r}
    lines = ["", "## Not measured", ""]
    if report["skipped_cases"]:
        lines.append(
            f"- cases above --max-pixels ({report['max_pixels']} pixels per call): "
            + ", ".join(f"batch {b} x {s}" for b, s in report["skipped_cases"])
        )
    for n, why in {**skipped, **errors}.items():
        lines.append(f"- {n}: {why}")
    if not (report["skipped_cases"] or skipped or errors):
        lines.append("- nothing: every configuration and case ran")
    lines.append("")
    return lines


def _memory(report: dict[str, Any]) -> list[str]:
    rows = {n: r for n, r in report["results"].items() if memory_steps(r)}
    if not rows:
        return []
    steps = [s for s, _, _ in memory_steps(next(iter(rows.values())))]
    lines = [
        "",
        "## Where the memory goes",
        "",
        "Resident memory (MiB) of the cold start's process after each step, with its growth: "
        "import (interpreter and libraries), load (weights, sessions or compilation), then "
        "each stage of the first run; peak is the high-water mark the RSS target reads. At "
        "the end, anon (heap, arenas, weights copied or repacked) and file (mapped files: "
        "libraries, and weights a runtime maps instead of copying; they count in RSS once "
        "touched). Model: the MiB the configuration reads from the bundle (graphs, the "
        "weights they name, the codebook; PyTorch: the fp32 variant's, the same weights).",
        "",
        "| configuration | model | " + " | ".join(steps) + " | peak | anon | file |",
        "| --- |" + " ---: |" * (len(steps) + 4),
    ]
    for name, r in rows.items():
        ms = memory_steps(r)
        end = r["cold"]["memory"][-1]
        cells = [
            f"{rss:.0f}" if step == "import" else f"{rss:.0f} ({delta:+.0f})"
            for step, rss, delta in ms
        ]
        lines.append(
            f"| {name} | {_f(r.get('model_files_mb'), '.0f')} | " + " | ".join(cells) + " | "
            f"{_f(r['cold'].get('peak_rss_mb'), '.0f')} | {_f(end.get('anon'), '.0f')} | "
            f"{_f(end.get('file'), '.0f')} |"
        )
    return lines


def _profiles(report: dict[str, Any], top: int = 6) -> list[str]:
    profiled = {n: r["profile"] for n, r in report["results"].items() if "profile" in r}
    if not profiled:
        return []
    first = next(iter(profiled.values()))
    b, s = first["batch"], first["size"][0]
    lines = [
        "",
        "## Where the time goes",
        "",
        f"Batch {b} at {s}x{s}, median node times per run (warm-up left out): onnxruntime's "
        "profiler for vqedge (a graph OpenVINO takes whole shows as one node), OpenVINO's "
        "performance counters for its own runtime (the kernel column names the precision each "
        "node ran at). Profiling adds time per node: read the shares.",
    ]
    for name, p in profiled.items():
        ops = ", ".join(f"{o['graph']} {o['op_type']} {o['share']:.0%}" for o in p["op_types"][:5])
        lines += [
            "",
            f"**{name}**: {p['total_ms']:.1f} ms of node time per run; by op type: {ops}",
            "",
            "| graph | node | op type | kernel / provider | ms | share |",
            "| --- | --- | --- | --- | ---: | ---: |",
        ]
        for r in p["nodes"][:top]:
            lines.append(
                f"| {r['graph']} | `{r['node']}` | {r['op_type']} | {r['provider']} | "
                f"{r['ms']:.2f} | {r['share']:.1%} |"
            )
    return lines


def _runs_on(r: dict[str, Any]) -> str:
    d = r.get("details", {})
    if "providers_in_use" in d:
        return ", ".join(sorted({p[0] for p in d["providers_in_use"].values()}))
    if "inference_precision" in d:
        return "OpenVINO CPU " + "/".join(sorted(set(d["inference_precision"].values())))
    if "torch" in d:
        return f"torch {d['torch']}"
    return "-"
