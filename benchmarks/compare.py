"""The full comparison: every configuration on the same images, threads and machine, timed
in interleaved rounds.

    python -m vqedge.benchmarks.compare --ov-python .venv-ov/bin/python
    python -m vqedge.benchmarks.compare --bundle .bench-bundles/var256 --checkpoint FILE --quick

Any bundle: vqedge's own (the shipped default unless ``--bundle``) or an imported family's,
single- or multi-scale (a multi-scale bundle runs at its one resolution). PyTorch runs the
bundle's own model (``bundles.torch_model``).

The driver: cold starts in fresh processes (``worker`` in cold mode), one configuration after
another, run after run; then one serving worker per configuration, loaded once, timed round
by round with every configuration in turn; then each one's quality pass and profile. The
jobs around it: ``configs`` (what runs, where), ``fidelity`` (the rule against the bundle's
fp32 output), ``targets`` (decided against the spread), ``report`` (the markdown).
Writes ``OUT/NAME.json`` and ``OUT/NAME.md`` (NAME: ``latest`` unless ``--name``).
"""

from __future__ import annotations

import argparse
import json
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.benchmarks import configs, fidelity, flops, launch, machine
from vqedge.benchmarks.bundles import BundleFacts, facts
from vqedge.benchmarks.report import finite, markdown
from vqedge.benchmarks.targets import targets
from vqedge.benchmarks.timing import E2E, summarize_rounds
from vqedge.runtime.kind import FIXED_SIZE

HERE = Path(__file__).resolve().parent
MODULE = "vqedge.benchmarks.compare"
# run by any interpreter that has vqedge installed (the OpenVINO one included)
WORKER = "vqedge.benchmarks.worker"
# the batch the targets are set at, at 256x256 (a multi-scale bundle: its resolution)
TARGET_BATCH = 1
# the default run and --quick (the smallest run that still fills every column)
DEFAULTS = {"rounds": 5, "iters": 5, "cold_runs": 3}
QUICK = {"rounds": 2, "iters": 2, "cold_runs": 1}
# the bench bundle of an imported family names its random-weights checkpoint so
RANDOM_MARK = "-random-seed"


def write_inputs(path: Path, sizes: list[int], bf: BundleFacts) -> dict[str, Any]:
    """The timing images (the held-out photos resized square to every size) and the quality
    images (the held-out photos at full size; for a multi-scale bundle fitted to its
    resolution, as the runtime's ``encode_image`` does)."""
    from PIL import Image

    from vqedge.models.data import HELD_OUT, held_out_paths
    from vqedge.runtime.images import fit_square
    from vqedge.runtime.inputs import read_image

    photos = [read_image(p) for p in held_out_paths()]
    arrays: dict[str, np.ndarray] = {"quality_count": np.array(len(photos))}
    for i, photo in enumerate(photos):
        arrays[f"quality{i}"] = fit_square(photo, bf.resolution) if bf.offers(FIXED_SIZE) else photo
    for s in sizes:
        arrays[f"size{s}"] = np.stack(
            [np.asarray(Image.fromarray(p).resize((s, s), Image.BICUBIC)) for p in photos]
        )
    np.savez(path, **arrays)
    return {
        "held_out": [f"{pkg}:{rel}" for pkg, rel in HELD_OUT],
        "quality_shapes": [list(arrays[f"quality{i}"].shape) for i in range(len(photos))],
        "quality_inputs": f"the held-out photos fitted to {bf.resolution}x{bf.resolution} "
        "(centre square, Lanczos)"
        if bf.offers(FIXED_SIZE)
        else "the held-out photos at full size",
        "timing_inputs": "the held-out photos resized (bicubic) to size x size, cycled to fill "
        "the batch",
    }


class Worker:
    """A serving worker process: one configuration, loaded once, answering requests."""

    def __init__(self, python: str, spec: dict[str, Any], env: dict[str, str], log: Path):
        spec_path = log.with_suffix(".spec.json")
        spec_path.write_text(json.dumps({**spec, "mode": "serve"}))
        self.log = log
        self.proc = subprocess.Popen(
            [python, "-m", WORKER, str(spec_path)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("w"),
            text=True,
        )

    def read(self, timeout: float) -> dict[str, Any]:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            why = "no answer" if ready else f"timed out after {timeout:.0f} s"
            return {"error": f"worker: {why}: {self.log.read_text()[-3000:]}"}
        return json.loads(line)

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        if self.proc.poll() is not None:
            return {"error": f"worker exited: {self.log.read_text()[-3000:]}"}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def cold_start(
    python: str, spec: dict[str, Any], env: dict[str, str], out: Path, timeout: float
) -> dict[str, Any]:
    """One fresh process's cold start (`launch.DEFINITION`), less the input preparation."""
    spec_path = out.with_suffix(".spec.json")
    spec_path.write_text(json.dumps({**spec, "mode": "cold", "out": str(out)}))
    try:
        proc, t_spawn = launch.run_cold([python, "-m", WORKER, str(spec_path)], env=env,
                                        timeout=timeout)  # fmt: skip
    except subprocess.TimeoutExpired:
        return {"error": f"cold start timed out after {timeout:.0f} s"}
    if not out.is_file():
        return {"error": f"worker exited {proc.returncode}: {proc.stderr[-3000:]}"}
    cold = json.loads(out.read_text())
    out.unlink()
    if "error" not in cold:
        # launch.DEFINITION, less the driver's input preparation (not a user's wait)
        cold["total_s"] = launch.since_launch(t_spawn, cold["t_first"]) - cold["input_prep_s"]
    return cold


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The cold start whose total is the median, with every run's total and peak RSS."""
    if any("error" in c for c in runs):
        return next(c for c in runs if "error" in c)
    ordered = sorted(runs, key=lambda c: c["total_s"])
    return {
        **ordered[len(ordered) // 2],
        "runs_total_s": [c["total_s"] for c in runs],
        "runs_peak_rss_mb": [c["peak_rss_mb"] for c in runs],
    }


def case_summary(batch: int, size: int, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """A case's statistics over its rounds; encoder + decoder per pass as ``without_lookup``."""
    times = [r["times"] for r in rounds]
    network = [{"x": [e + d for e, d in zip(t["encoder"], t["decoder"])]} for t in times]
    stages = summarize_rounds(times)
    return {
        "batch": batch,
        "size": size,
        "rounds": len(rounds),
        "stages": stages,
        "without_lookup": summarize_rounds(network)["x"],
        "images_per_s": batch / (stages[E2E]["median_ms"] / 1e3),
        "peak_rss_mb": max(r["peak_rss_mb"] or 0 for r in rounds) or None,
    }


def add_flops(results: dict[str, Any], bundle: Path, peaks: dict[str, Any]) -> None:
    """FLOPs per stage of every case, achieved GFLOP/s and the fraction of the peak."""
    cache: dict[tuple[int, int], dict[str, int]] = {}
    gflops_peak = peaks.get("gflops") or {}
    for r in results.values():
        for case in r.get("cases", []):
            if "stages" not in case:
                continue
            key = (case["batch"], case["size"])
            if key not in cache:
                cache[key] = flops.stage_flops(bundle, case["batch"], case["size"], case["size"])
            case["flops"] = cache[key]
            for name, s in case["stages"].items():
                g = cache[key][name] / (s["median_ms"] / 1e3) / 1e9
                s["gflops_per_s"] = g
                peak = gflops_peak.get(r["precision"])
                s["fraction_of_peak"] = g / peak if peak else None


def model_files_mb(manifest: dict[str, Any], precision: str) -> float | None:
    """MiB a configuration at ``precision`` reads from the bundle: its variant's graphs, the
    stored tensors they name and the codebook (the manifest's ``size_bytes``; bf16 runs the
    fp32 variant, and PyTorch holds the same weights at fp32)."""
    variant = precision if precision in ("fp16", "int8") else "fp32"
    v = manifest["variants"].get(variant)
    return v["quality"]["size_bytes"] / 2**20 if v is not None else None


def bundle_facts(bf: BundleFacts, results: dict[str, Any], checkpoint: str | None) -> dict:
    """What the report says of the bundle and of the PyTorch model it was compared with."""
    from vqedge.runtime.session import bundle_path

    torch_runs = [r for n, r in results.items() if n.startswith("torch") and "details" in r]
    size = bf.target_size
    return {
        "bundle": str(bf.path),
        "bundle_name": bf.manifest.get("name"),
        "bundle_kind": bf.kind,
        "bundle_config": bf.manifest.get("config"),
        "shipped_default": bf.path == bundle_path(None).resolve(),
        "family": bf.family,
        "source": bf.source or None,
        "checkpoint": checkpoint,
        "checkpoint_sha256": bf.manifest.get("export", {}).get("checkpoint_sha256"),
        "torch_model": (
            f"{torch_runs[0]['details']['model']} with {torch_runs[0]['details']['weights']}"
            if torch_runs
            else None
        ),
        "gflop_per_image": flops.stage_flops(bf.path, 1, size, size)[E2E] / 1e9,
    }


def _parser() -> argparse.ArgumentParser:
    d = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=d)
    p.add_argument(
        "--bundle", default=None, help="bundle folder or shipped name (default: shipped)"
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="the PyTorch model's weights (vqedge's own: a checkpoint; an imported family: its "
        "source checkpoint; without it a family's architecture gets seeded random weights)",
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="the bundle's weights are random: fidelity is judged on tokens alone (implied "
        f"when its source checkpoint's name holds {RANDOM_MARK!r})",
    )
    p.add_argument("--threads", type=int, default=None, help="default: the physical cores")
    p.add_argument(
        "--batches", type=int, nargs="+", default=None, help="default: 1 8 32 (multi-scale: 1)"
    )
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        help="default: 64 256 512 (multi-scale: its resolution, the only size it takes)",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=8 * 256 * 256,
        help="skip cases with more pixels per call (batch x size^2); 0: no limit",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"batch 1 at the target size, {QUICK['rounds']} rounds of {QUICK['iters']} passes, "
        "one cold start per configuration: a smoke run, numbers indicative only",
    )
    p.add_argument("--configs", nargs="+", default=None, help="names or families to run")
    p.add_argument("--ov-python", nargs="+", default=[], help="other interpreters to use")
    p.add_argument("--rounds", type=int, default=None, help=f"timing rounds ({DEFAULTS['rounds']})")
    p.add_argument(
        "--iters",
        type=int,
        default=None,
        help=f"timed passes per case and round ({DEFAULTS['iters']})",
    )
    p.add_argument(
        "--cold-case", default=None, help="BATCHxSIZE of the cold start (1x256; 1xresolution)"
    )
    p.add_argument("--no-cold", action="store_true", help="skip the cold starts")
    p.add_argument(
        "--cold-runs",
        type=int,
        default=None,
        help=f"cold starts per configuration ({DEFAULTS['cold_runs']}; torch.compile: 1)",
    )
    p.add_argument("--no-quality", action="store_true", help="skip the quality pass")
    p.add_argument("--no-profile", action="store_true", help="skip the per-node profiles")
    p.add_argument(
        "--profile-case", default=None, help="BATCHxSIZE of the profiles (as --cold-case)"
    )
    p.add_argument("--freq-ghz", type=float, default=None, help="override the frequency")
    p.add_argument("--timeout", type=float, default=900, help="per worker request, seconds")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for the results")
    p.add_argument("--name", default="latest", help="results file name, without suffix")
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    prov = machine.provenance(MODULE, argv)  # before anything is written
    t_begin = time.time()
    bf = facts(args.bundle)
    size = bf.target_size
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batches is None:
        args.batches = [1] if args.quick or bf.offers(FIXED_SIZE) else [1, 8, 32]
    if args.sizes is None:
        args.sizes = [size] if args.quick or bf.offers(FIXED_SIZE) else [64, 256, 512]
    if bf.offers(FIXED_SIZE) and set(args.sizes) != {size}:
        p.error(f"bundle {bf.name} takes {size}x{size} images only, got --sizes {args.sizes}")
    mach = machine.describe(args.threads, args.freq_ghz)
    threads = args.threads or mach["physical_cores"]
    cold_b, cold_s = (int(v) for v in (args.cold_case or f"1x{size}").lower().split("x"))
    prof_b, prof_s = (int(v) for v in (args.profile_case or f"1x{size}").lower().split("x"))
    for what, s_ in (("--cold-case", cold_s), ("--profile-case", prof_s)):
        if bf.offers(FIXED_SIZE) and s_ != size:
            p.error(f"bundle {bf.name} takes {size}x{size} images only: {what} must be 1x{size}")
    cases, skipped_cases = [], []
    for b in args.batches:
        for s in args.sizes:
            over = args.max_pixels and b * s * s > args.max_pixels
            (skipped_cases if over else cases).append((b, s))
    cases.sort(key=lambda c: (c[0] * c[1] ** 2, c[0]))
    chosen = configs.select(args.configs)
    if not chosen:
        known = [c.name for c in configs.CONFIGS]
        p.error(f"no configuration matches {args.configs}; known: {known}")
    random_weights = args.random_weights or RANDOM_MARK in str(bf.source.get("checkpoint", ""))

    workdir = Path(tempfile.mkdtemp(prefix="vqedge-bench-"))
    env = configs.worker_env(threads, workdir)
    interpreters = [configs.probe(py, env) for py in [sys.executable, *args.ov_python]]
    inputs = workdir / "inputs.npz"
    input_info = write_inputs(inputs, sorted({s for _, s in cases} | {cold_s}), bf)
    common = {"threads": threads, "bundle": str(bf.path), "checkpoint": args.checkpoint,
              "inputs": str(inputs), "cold_case": [cold_b, cold_s]}  # fmt: skip
    results, skipped = run(
        args, chosen, interpreters, env, workdir, common, cases, (prof_b, prof_s)
    )
    for r in results.values():
        r["model_files_mb"] = model_files_mb(bf.manifest, r["precision"])
    add_flops(results, bf.path, mach["peaks"])
    quality_ref = fidelity.add_quality(results, inputs, bf, random_weights)
    report = {
        "provenance": prov,
        **bundle_facts(bf, results, args.checkpoint),
        "target_case": [TARGET_BATCH, size],
        "quick": args.quick,
        "threads": threads,
        "cases": cases,
        "skipped_cases": skipped_cases,
        "max_pixels": args.max_pixels,
        "cold_case": [cold_b, cold_s],
        "iterations": {"rounds": args.rounds, "iters": args.iters, "warmup_per_round": 1},
        "inputs": input_info,
        "machine": mach,
        "interpreters": interpreters,
        "quality_reference": quality_ref,
        "skipped_configs": skipped,
        "results": results,
    }
    report["targets"] = targets(report)
    report["wall_s"] = time.time() - t_begin
    machine.finish(prov)
    for r in results.values():  # the npz files live in the temporary folder
        r.pop("quality_file", None)
        r.pop("decoded_file", None)
    shutil.rmtree(workdir, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(finite(report), indent=1, default=str, allow_nan=False)
    (out / f"{args.name}.json").write_text(text + "\n")
    (out / f"{args.name}.md").write_text(markdown(report))
    print(f"wrote {out / args.name}.json and .md in {report['wall_s']:.0f} s")
    return 1 if any("error" in r for r in results.values()) else 0


def run(
    args: argparse.Namespace,
    chosen: list[configs.Config],
    interpreters: list[dict[str, Any]],
    env: dict[str, str],
    workdir: Path,
    common: dict[str, Any],
    cases: list[tuple[int, int]],
    profile_case: tuple[int, int],
) -> tuple[dict[str, Any], dict[str, str]]:
    """Cold starts, then the interleaved rounds, then quality and profiles: the results per
    configuration (with the interpreter each ran on) and the skipped ones with why."""
    results: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    runnable: list[tuple[configs.Config, str, dict[str, Any]]] = []
    flags = machine.describe()["flags"]
    for cfg in chosen:
        why = configs.not_native(cfg, flags)
        if why:
            skipped[cfg.name] = why
            print(f"skip {cfg.name}: {why}", flush=True)
            continue
        python = next((i["python"] for i in interpreters if i.get(cfg.needs)), None)
        if python is None:
            skipped[cfg.name] = (
                f"no interpreter offers {cfg.needs} (give one with --ov-python; see "
                "benchmarks/README.md)"
            )
            print(f"skip {cfg.name}: {skipped[cfg.name]}", flush=True)
            continue
        spec = {
            **common,
            "config": cfg.name,
            "family": cfg.family,
            "precision": cfg.precision,
            "compile": cfg.compile,
            "providers": cfg.providers,
        }
        results[cfg.name] = {**asdict(cfg), "python": python}
        runnable.append((cfg, python, spec))
    tag = {cfg.name: cfg.name.replace("/", "-") for cfg, _, _ in runnable}
    if not args.no_cold:  # run after run, every configuration in turn
        runs: dict[str, list[dict[str, Any]]] = {cfg.name: [] for cfg, _, _ in runnable}
        for k in range(args.cold_runs):
            for cfg, python, spec in runnable:
                if k and cfg.compile:  # torch.compile: half a minute each, one is enough
                    continue
                out = workdir / f"{tag[cfg.name]}-cold.json"
                runs[cfg.name].append(cold_start(python, spec, env, out, args.timeout))
        for name, rs in runs.items():
            results[name]["cold"] = median_run(rs)
            print(f"{name}: cold start {results[name]['cold'].get('total_s', '-')}", flush=True)
    workers: dict[str, Worker] = {}
    for cfg, python, spec in runnable:  # loaded one at a time: loads do not overlap
        w = Worker(python, spec, env, workdir / f"{tag[cfg.name]}.log")
        ready = w.read(args.timeout)
        if "error" in ready:
            results[cfg.name].update(ready)
            continue
        results[cfg.name]["load_s"] = ready["load_s"]
        workers[cfg.name] = w
    timed: dict[str, dict[tuple[int, int], list[dict[str, Any]]]] = {n: {} for n in workers}
    names = list(workers)
    for k in range(args.rounds):
        order = names[k % len(names) :] + names[: k % len(names)] if names else []
        for name in order:
            for b, s in cases:
                if name not in workers:
                    break
                ans = workers[name].ask(
                    {"op": "time", "batch": b, "size": s, "iters": args.iters}, args.timeout
                )
                if "error" in ans:
                    results[name].update(error=ans["error"], traceback=ans.get("traceback"))
                    workers.pop(name).close()
                    break
                timed[name].setdefault((b, s), []).append(ans)
        print(f"round {k + 1}/{args.rounds} done", flush=True)
    for name, per_case in timed.items():
        results[name]["cases"] = [case_summary(b, s, rs) for (b, s), rs in per_case.items()]
    if not args.no_quality:
        quality_pass(workers, results, workdir, tag, args.timeout)
    for name, w in workers.items():
        if not args.no_profile and results[name]["family"] != "torch":
            b, s = profile_case
            ans = w.ask({"op": "profile", "batch": b, "size": s}, args.timeout)
            results[name]["profile" if "error" not in ans else "profile_error"] = (
                ans.get("profile") or ans["error"]
            )
        ans = w.ask({"op": "finish"}, args.timeout)
        results[name]["details"] = ans.get("details", {})
        w.close()
    return results, skipped


def quality_pass(
    workers: dict[str, Worker],
    results: dict[str, Any],
    workdir: Path,
    tag: dict[str, str],
    timeout: float,
) -> None:
    """Each configuration's tokens and decode of the quality images, then its decoder on the
    references' tokens (the pixels tier judges a decoder on fp32's tokens)."""
    for name, w in workers.items():
        out = workdir / f"{tag[name]}-quality.npz"
        ans = w.ask({"op": "quality", "out": str(out)}, timeout)
        if "error" in ans:
            results[name]["quality_error"] = ans["error"]
        else:
            results[name]["quality_file"] = str(out)
    refs = [n for n in configs.REFERENCES if results.get(n, {}).get("quality_file")]
    for name, w in workers.items() if refs else ():
        out = workdir / f"{tag[name]}-decoded.npz"
        files = [results[r]["quality_file"] for r in refs]
        ans = w.ask({"op": "decode", "refs": files, "out": str(out)}, timeout)
        if "error" in ans:
            results[name]["decode_error"] = ans["error"]
        else:
            results[name]["decoded_file"] = str(out)
            results[name]["decoded_references"] = refs


if __name__ == "__main__":
    sys.exit(main())
