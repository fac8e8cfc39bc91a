"""The targets a comparison checks, each decided against the run-to-run spread.

Every timed figure is a list of round medians (configurations interleaved round by round) and
every cold-start figure a list of fresh processes; a target compares the ranges, not two
single numbers. A target is met when even the least favourable pairing of rounds meets it,
missed when even the most favourable one misses it, and otherwise "within spread": the
difference is smaller than the noise of this run, and the report says so instead of calling it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vqedge.benchmarks.fidelity import in_tier
from vqedge.benchmarks.timing import E2E

# vqedge's cold peak RSS against PyTorch eager fp32's, for any bundle
RSS_RATIO = 0.6
# the shipped default's own bars: speed-up over PyTorch eager fp32, and cold start (seconds,
# and against PyTorch eager fp32's)
SHIPPED_SPEEDUP = 5.0
SHIPPED_COLD_S = 0.4
SHIPPED_COLD_RATIO = 0.2
EAGER = "torch-eager/fp32"
# the stage that vqedge runs on onnxruntime's CPU provider and OpenVINO's runtime in OpenVINO
LOOKUP = "quantizer"
LOOKUP_NOTE = (
    "the lookup (quantizer) runs on onnxruntime's CPU provider in vqedge whatever runs the "
    "other graphs, in OpenVINO in OpenVINO's runtime, in PyTorch in PyTorch"
)


def verdict(lo: float, hi: float, bound: float, at_most: bool = True) -> bool | None:
    """Whether a ratio whose range over rounds is [lo, hi] meets ``<= bound`` (``>=`` when not
    ``at_most``): True, False, or None when the range straddles the bound."""
    if at_most:
        return True if hi <= bound else False if lo > bound else None
    return True if lo >= bound else False if hi < bound else None


def ratio_range(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """a / b at the medians, and its least and greatest over every pairing of rounds."""
    med = _median(a) / _median(b)
    return med, min(a) / max(b), max(a) / min(b)


def _median(v: list[float]) -> float:
    s = sorted(v)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def _case(r: dict[str, Any], batch: int, size: int) -> dict[str, Any] | None:
    cases = [c for c in r.get("cases", []) if "stages" in c]
    return next((c for c in cases if (c["batch"], c["size"]) == (batch, size)), None)


def _row(
    target: str,
    a: list[float],
    b: list[float],
    unit: str,
    bound: float,
    at_most: bool,
    applies: str,
    over: str = "rounds",
) -> dict[str, Any]:
    med, lo, hi = ratio_range(a, b)
    rel = "<=" if at_most else ">="
    return {
        "target": target,
        "measured": f"{_median(a):.2f} vs {_median(b):.2f} {unit} = {med:.2f}x "
        f"({over}: {lo:.2f}-{hi:.2f}x)",
        "required": f"{rel} {bound:.2f}x",
        "ratio": med,
        "ratio_range": [lo, hi],
        "met": verdict(lo, hi, bound, at_most),
        "applies_to": applies,
    }


def _group(r: dict[str, Any]) -> str:
    """Configurations that run the same way bar precision: a stage of one may be composed
    with a stage of another (torch-eager, vqedge-openvino, ...)."""
    return f"{r['family']}:{r.get('providers')}:{r.get('compile')}"


def round_trips(res: dict[str, Any], rounds: Any) -> list[dict[str, Any]]:
    """Every round trip whose encoder holds the tokens tier and whose decoder holds the
    pixels tier: a configuration's own, and, within one group (``_group``), an encoder at
    one precision with a decoder at another, composed round by round from the measured
    stage times (encoder + lookup of the encoder's configuration, decoder of the other's)."""
    out = []
    timed = [n for n in res if rounds(n) is not None]
    for e in [n for n in timed if in_tier(res[n], "encoder")]:
        for d in [n for n in timed if in_tier(res[n], "decoder")]:
            if _group(res[e]) != _group(res[d]):
                continue
            if e == d:
                total, net = rounds(e), rounds(e, "network")
                name = e
            else:
                enc, look, dec = rounds(e, "encoder"), rounds(e, LOOKUP), rounds(d, "decoder")
                total = [a + b + c for a, b, c in zip(enc, look, dec)]
                net = [a + c for a, c in zip(enc, dec)]
                name = f"{e} encoder + {res[d]['precision']} decoder (composed)"
            out.append({"name": name, "encoder": e, "decoder": d, "composed": e != d,
                        "group": _group(res[e]), "family": res[e]["family"],
                        "rounds": total, "network": net})  # fmt: skip
    return out


def headlines(res: dict[str, Any], rounds: Any) -> tuple[list[dict[str, Any]], Any]:
    """The rows in tiers: the fastest vqedge round trip in tiers against each peer's
    (end to end and without the lookup), the fastest vqedge decoder in the pixels tier
    against each peer's; and that round trip (None when none is in tiers)."""

    def fastest(names: list[str], stage: str) -> str | None:
        return min(names, key=lambda n: _median(rounds(n, stage))) if names else None

    timed = [n for n in res if rounds(n) is not None]
    ours = [n for n in timed if res[n]["family"] == "vqedge"]
    peers = [n for n in timed if res[n]["family"] != "vqedge"]
    rows: list[dict[str, Any]] = []
    trips = round_trips(res, rounds)
    mine = [t for t in trips if t["family"] == "vqedge"]
    best = min(mine, key=lambda t: _median(t["rounds"])) if mine else None
    by_group: dict[str, dict[str, Any]] = {}
    for t in trips:
        if t["family"] != "vqedge":
            g = by_group.get(t["group"])
            if g is None or _median(t["rounds"]) < _median(g["rounds"]):
                by_group[t["group"]] = t
    for peer in by_group.values() if best else []:
        composed = " (composed from stage times)" if best["composed"] or peer["composed"] else ""
        for what, key, note in (("round trip", "rounds", LOOKUP_NOTE),
                                ("round trip without the lookup", "network", "")):  # fmt: skip
            row = _row(
                f"{what} in tiers: `{best['name']}` against `{peer['name']}`{composed}",
                best[key],
                peer[key],
                "ms",
                1.0,
                True,
                "any bundle",
            )
            row["headline"] = "round trip"
            row["composed"] = bool(composed)
            if note:
                row["note"] = note
            rows.append(row)
    dec_ours = fastest([n for n in ours if in_tier(res[n], "decoder")], "decoder")
    dec_groups: dict[str, str] = {}
    for n in [n for n in peers if in_tier(res[n], "decoder")]:
        g = dec_groups.get(_group(res[n]))
        if g is None or _median(rounds(n, "decoder")) < _median(rounds(g, "decoder")):
            dec_groups[_group(res[n])] = n
    for peer in dec_groups.values() if dec_ours else []:
        row = _row(
            f"decoder in the pixels tier: `{dec_ours}` against `{peer}`",
            rounds(dec_ours, "decoder"),
            rounds(peer, "decoder"),
            "ms",
            1.0,
            True,
            "any bundle",
        )
        row["headline"] = "decoder"
        rows.append(row)
    return rows, best


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets, checked against this run (batch 1 at the target size, the cold case).

    For any bundle: the fastest vqedge fp32 configuration against every fp32 peer; the
    headlines in tiers (``vqedge.runtime.fidelity``): the fastest vqedge round trip whose
    encoder holds the tokens tier and whose decoder holds the pixels tier (``round_trips``;
    composed from stage times when its stages ran at different precisions) against the
    fastest such round trip of each peer (end to end, and again without the lookup stage,
    which vqedge and the peers place differently), and the fastest vqedge decoder in the
    pixels tier against each peer's; each vqedge configuration's cold peak RSS at most
    RSS_RATIO of PyTorch eager fp32's. For the shipped default also its speed-up over
    PyTorch eager fp32 and its cold start. Each row: target, measured, required, met (True,
    False or None: within spread) and applies_to; a target whose numbers this run lacks has
    no row.
    """
    res = report["results"]
    batch, size = report["target_case"]

    def rounds(name: str, stage: str = E2E) -> list[float] | None:
        c = _case(res.get(name, {}), batch, size)
        if c is None:
            return None
        if stage == "network":
            return c["without_lookup"]["round_medians_ms"]
        return c["stages"][stage]["round_medians_ms"]

    def cold(name: str, key: str) -> list[float] | None:
        return res.get(name, {}).get("cold", {}).get(key)

    def fastest(names: list[str], stage: str = E2E) -> str | None:
        return min(names, key=lambda n: _median(rounds(n, stage))) if names else None

    timed = [n for n in res if rounds(n) is not None]
    ours = [n for n in timed if res[n]["family"] == "vqedge"]
    peers = [n for n in timed if res[n]["family"] != "vqedge"]
    rows: list[dict[str, Any]] = []
    best32 = fastest([n for n in ours if res[n]["precision"] == "fp32"])
    for peer in [n for n in peers if res[n]["precision"] == "fp32"] if best32 else []:
        rows.append(
            _row(
                f"fp32 latency: `{best32}` against `{peer}`",
                rounds(best32),
                rounds(peer),
                "ms",
                1.0,
                True,
                "any bundle",
            )
        )
    tier_rows, best = headlines(res, rounds)
    rows += tier_rows
    torch_rss = cold(EAGER, "runs_peak_rss_mb")
    for n in [n for n in res if res[n]["family"] == "vqedge"]:
        rss = cold(n, "runs_peak_rss_mb")
        if rss and torch_rss:
            rows.append(
                _row(
                    f"cold peak RSS: `{n}` against `{EAGER}`",
                    rss,
                    torch_rss,
                    "MiB",
                    RSS_RATIO,
                    True,
                    "any bundle",
                    over="runs",
                )
            )
    if report.get("shipped_default"):
        rows += _shipped_rows(res, best, rounds, cold)
    return rows


def _shipped_rows(
    res: dict[str, Any],
    best: dict[str, Any] | None,
    rounds: Callable[..., list[float] | None],
    cold: Callable[[str, str], list[float] | None],
) -> list[dict[str, Any]]:
    """The shipped default's own targets: its speed-up over PyTorch and its cold start."""
    rows: list[dict[str, Any]] = []
    if best and rounds(EAGER):
        rows.append(
            _row(
                f"speed-up over PyTorch: `{EAGER}` against `{best['name']}`",
                rounds(EAGER),
                best["rounds"],
                "ms",
                SHIPPED_SPEEDUP,
                False,
                "shipped model",
            )
        )
    torch_cold = cold(EAGER, "runs_total_s")
    for n in [n for n in res if res[n]["family"] == "vqedge"]:
        t = cold(n, "runs_total_s")
        if not t:
            continue
        lo, hi = min(t), max(t)
        rows.append(
            {
                "target": f"cold start: `{n}`",
                "measured": f"{_median(t):.2f} s (runs: {lo:.2f}-{hi:.2f} s)",
                "required": f"<= {SHIPPED_COLD_S:.2f} s",
                "met": verdict(lo, hi, SHIPPED_COLD_S),
                "applies_to": "shipped model",
            }
        )
        if torch_cold:
            rows.append(
                _row(
                    f"cold start: `{n}` against `{EAGER}`",
                    t,
                    torch_cold,
                    "s",
                    SHIPPED_COLD_RATIO,
                    True,
                    "shipped model",
                    over="runs",
                )
            )
    return rows


def misses(report: dict[str, Any]) -> list[str]:
    """One line per target missed or within spread, with where the configuration's time or
    memory goes (its profile, or its cold start's steps)."""
    lines = []
    res = report["results"]
    for t in report.get("targets", []):
        if t["met"]:
            continue
        names = [n for n in res if f"`{n}`" in t["target"] and n.startswith("vqedge")]
        why = ""
        prof = res.get(names[0], {}).get("profile") if names else None
        steps = memory_steps(res.get(names[0], {})) if names else []
        if t["target"].startswith("cold peak RSS") and steps:
            grew = ", ".join(
                f"{step} {rss:.0f}" if step == "import" else f"{step} {delta:+.0f}"
                for step, rss, delta in steps
            )
            files = res[names[0]].get("model_files_mb")
            why = f"; RSS after each step: {grew} MiB" + (
                f" (model {files:.0f} MiB)" if files else ""
            )
        elif prof:
            top = ", ".join(
                f"{o['graph']} {o['op_type']} {o['share']:.0%}" for o in prof["op_types"][:3]
            )
            why = f"; `{names[0]}` spends its node time in {top}"
        state = "within spread" if t["met"] is None else "missed"
        lines.append(f"- {state}: {t['target']}: {t['measured']} (required {t['required']}){why}")
    return lines


def memory_steps(r: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(step, RSS MiB after it, growth over the step before) of a configuration's cold start."""
    out, last = [], 0.0
    for m in r.get("cold", {}).get("memory", []):
        if "rss" in m:
            out.append((m["step"], m["rss"], m["rss"] - last))
            last = m["rss"]
    return out
