"""What load()'s on-device check costs: a cold start without it, with the first check, and
with the cached verdict, each in fresh processes, interleaved in rounds.

    python -m vqedge.benchmarks.verify_cost [--rounds 7] [--out benchmarks/results/verify_cost.md]

A cold start is `launch.DEFINITION`: from the launch of a fresh Python process (the parent's
clock) until it has imported the runtime, loaded the bundle and reconstructed one 256x256
image (a multi-scale bundle's: its own size; the first call creates the decoder's session
too).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.benchmarks import launch

MODES = ("no check", "first check", "cached verdict")


def _child(bundle: str, precision: str, mode: str, cache: str) -> dict[str, float]:
    t0 = time.perf_counter()
    import os

    os.environ["VQEDGE_CACHE_DIR"] = cache
    from vqedge.runtime import load

    t1 = time.perf_counter()
    # lenient: a stage whose precision does not hold still costs its check, then runs fp32
    tok = load(
        bundle, providers="cpu", precision=precision, verify=mode != "no check", strict=False
    )
    t2 = time.perf_counter()
    side = tok.config.resolution or 256  # a multi-scale bundle takes its one size
    img = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    tok.reconstruct(img)
    t3 = time.perf_counter()
    t_first = time.time()  # the parent subtracts its launch clock (launch.since_launch)
    v = tok.info["verification"] or {}  # the verdict as JSON carries it
    # the check's own arithmetic, its sessions already open (the first check also creates
    # the sessions a first call would)
    from vqedge.runtime.verify import measure_decoder, measure_encoder, read_check_set

    t4 = time.perf_counter()
    arrays = read_check_set(tok.root, tok.manifest)
    measure_encoder(tok, arrays, round_trip=False)  # as load() checks the tokens tier
    measure_decoder(tok, arrays)
    warm = time.perf_counter() - t4
    return {
        "check_warm_s": warm,
        "import_s": t1 - t0,
        "load_s": t2 - t1,
        "first_call_s": t3 - t2,
        "in_process_s": t3 - t0,
        "t_first": t_first,
        "check_s": 0.0 if v.get("cached") else float(v.get("seconds", 0.0)),
        "cached": bool(v.get("cached")),
    }


def _run(bundle: str, precision: str, mode: str, cache: Path) -> dict[str, float]:
    if mode == "first check":
        for f in (cache / "verdicts").glob("*.json"):
            f.unlink()
    cmd = [sys.executable, "-m", "vqedge.benchmarks.verify_cost", "--child", bundle, precision,
           mode, str(cache)]  # fmt: skip
    proc, t_spawn = launch.run_cold(cmd, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{bundle} {precision} {mode}: exit {proc.returncode}: {proc.stderr}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["cold_start_s"] = launch.since_launch(t_spawn, r["t_first"])
    return r


def measure(bundles: list[str], precisions: list[str], rounds: int) -> list[dict[str, Any]]:
    """Every (bundle, precision, mode) once per round, the modes in turn."""
    rows: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp)
        for _ in range(rounds):
            for bundle in bundles:
                for precision in precisions:
                    for mode in MODES:
                        r = _run(bundle, precision, mode, cache)
                        rows.setdefault((bundle, precision, mode), []).append(r)
    out = []
    for (bundle, precision, mode), runs in rows.items():
        cold = np.array([r["cold_start_s"] for r in runs]) * 1e3
        check = np.array([r["check_s"] for r in runs]) * 1e3
        warm = np.array([r["check_warm_s"] for r in runs]) * 1e3
        out.append(
            {
                "bundle": bundle,
                "precision": precision,
                "mode": mode,
                "cold_start_ms": float(np.median(cold)),
                "cold_start_iqr_ms": float(np.subtract(*np.percentile(cold, [75, 25]))),
                "check_ms": float(np.median(check)),
                "check_warm_ms": float(np.median(warm)),
            }
        )
    return out


def markdown(rows: list[dict[str, Any]], rounds: int, prov: dict[str, Any]) -> str:
    from vqedge.benchmarks.machine import provenance_md

    lines = [
        "# The on-device check's cost",
        "",
        *provenance_md(prov),
        "",
        f"{rounds} rounds, every configuration once per round in a fresh process (the three",
        "modes in turn). Cold start, from process launch (the parent's clock before it",
        "spawns the process): interpreter start, import the runtime, `load()` on the CPU",
        "provider, reconstruct one 256x256 image (vqvae-ms-f8: 128x128). Median and IQR in ms.",
        "",
        "Check ms: what the first check took inside `load()` (it creates the quantizer's and",
        "decoder's sessions, which a first call would otherwise create); warm: the same check",
        "again with those sessions open (its own arithmetic).",
        "",
        "| bundle | precision | mode | cold start ms (IQR) | check ms | warm check ms "
        "| cold start vs no check |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    base = {
        (r["bundle"], r["precision"]): r["cold_start_ms"] for r in rows if r["mode"] == MODES[0]
    }
    for r in rows:
        b = base[(r["bundle"], r["precision"])]
        lines.append(
            f"| {r['bundle']} | {r['precision']} | {r['mode']} | {r['cold_start_ms']:.0f} "
            f"({r['cold_start_iqr_ms']:.0f}) | {r['check_ms']:.1f} | {r['check_warm_ms']:.1f} "
            f"| {r['cold_start_ms'] / b - 1:+.1%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    p.add_argument("--bundles", nargs="+", default=["vqvae-f4", "vqvae-ms-f8"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "int8"])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--out", default=None, help="write the markdown table here")
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return
    from vqedge.benchmarks.machine import finish, provenance

    prov = provenance("vqedge.benchmarks.verify_cost", argv)
    rows = measure(args.bundles, args.precisions, args.rounds)
    text = markdown(rows, args.rounds, finish(prov))
    if args.out:
        from vqedge.runtime.atomic import write_bytes_atomic

        write_bytes_atomic(args.out, text.encode())
    print(text)


if __name__ == "__main__":
    main()
