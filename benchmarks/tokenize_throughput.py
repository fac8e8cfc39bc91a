"""Throughput and memory of `vqedge tokenize`: local 1 and 2 workers, and Ray, on this machine.

    python -m vqedge.benchmarks.tokenize_throughput [--images 300] [--size 256] [--repeats 2]

Writes ``benchmarks/results/tokenize.json`` and ``tokenize.md``. The images are generated
(smooth shapes + noise, ``vqedge.benchmarks.timing.synthetic_images``) and written once as PNG;
every configuration runs the real command, ``python -m vqedge.commands.main tokenize``, in a
fresh process (its own session, so Ray's processes are counted with it), with the same
shards. Each configuration's shards must hold the same tokens as the first one's.

- images/s: images over the command's own run time (``summary.json``: from listing the
  inputs to the summary, so it includes starting the workers, or Ray, and loading the
  sessions); *steady* divides by the workers' time inside shards instead (start-up left out).
- peak memory: the highest sum, over every process of the run (the command, its workers,
  Ray's daemons and actors), of the resident set (RSS, counts shared pages in each process)
  and of the proportional set (PSS, shares them out), sampled every 0.2 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from vqedge.benchmarks.machine import describe, finish, provenance, provenance_md, versions
from vqedge.benchmarks.timing import synthetic_images
from vqedge.runtime.atomic import write_bytes_atomic

RESULTS = Path(__file__).parent / "results"
# (name, engine, workers, threads per worker)
CONFIGS = [
    ("local, 1 worker x 1 thread", "local", 1, 1),
    ("local, 2 workers x 1 thread", "local", 2, 1),
    ("ray, 2 actors x 1 thread", "ray", 2, 1),
    ("local, 1 worker x 2 threads", "local", 1, 2),
]
SAMPLE_S = 0.2


def _session_pids(sid: int) -> list[int]:
    """Processes of session ``sid`` (the command and everything it started)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        if int(fields[3]) == sid:  # state ppid pgrp session
            pids.append(int(d))
    return pids


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, PSS) of a process in KiB; zeros if it is gone."""
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1])
            elif line.startswith("Pss:"):
                pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def run_one(cmd: list[str]) -> dict:
    """Run ``cmd`` in its own session; wall time and peak RSS / PSS over its processes."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    peak_rss = peak_pss = peak_procs = 0
    while proc.poll() is None:
        pids = _session_pids(proc.pid)
        mem = [_memory_kib(p) for p in pids]
        peak_rss = max(peak_rss, sum(m[0] for m in mem))
        peak_pss = max(peak_pss, sum(m[1] for m in mem))
        peak_procs = max(peak_procs, len(pids))
        time.sleep(SAMPLE_S)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return {
        "wall_s": round(time.perf_counter() - t0, 2),
        "peak_rss_mib": round(peak_rss / 1024),
        "peak_pss_mib": round(peak_pss / 1024),
        "processes": peak_procs,
        "stdout": out.strip().splitlines()[-1],
    }


def tokens_digest(out: Path) -> str:
    h = hashlib.sha256()
    for shard in sorted(out.glob("part-*.parquet")):
        t = pq.read_table(shard, columns=["path", "tokens"])
        for path, tokens in zip(t["path"].to_pylist(), t["tokens"].to_pylist()):
            h.update(path.encode())
            h.update(np.asarray(tokens, np.int32).tobytes())
    return h.hexdigest()


def other_load() -> dict:
    busy = subprocess.run(["pgrep", "-f", "vqedge train"], capture_output=True, text=True)
    return {"loadavg_1_5_15": list(os.getloadavg()), "vqedge_train_running": bool(busy.stdout)}


def write_images(folder: Path, n: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, n, 32):
        batch = synthetic_images(min(32, n - start), size, seed=start)
        for i, img in enumerate(batch):
            Image.fromarray(img).save(folder / f"img{start + i:05d}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=300, help="how many images")
    ap.add_argument("--size", type=int, default=256, help="image side")
    ap.add_argument("--shard-size", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    ap.add_argument("--out", default=str(RESULTS / "tokenize"), help="results, without suffix")
    args = ap.parse_args()
    prov = provenance("vqedge.benchmarks.tokenize_throughput", None)

    started = datetime.now(timezone.utc)
    load_before = other_load()
    runs: dict[str, list[dict]] = {name: [] for name, *_ in CONFIGS}
    digests = set()
    with tempfile.TemporaryDirectory(prefix="vqedge-tok-bench-") as tmp:
        images = Path(tmp) / "images"
        write_images(images, args.images, args.size)
        for rep in range(args.repeats):
            for name, engine, workers, threads in CONFIGS:
                out = Path(tmp) / f"out-{rep}-{engine}-{workers}-{threads}"
                cmd = [sys.executable, "-m", "vqedge.commands.main", "tokenize", str(images)]
                cmd += ["--out", str(out), "--engine", engine, "--workers", str(workers)]
                cmd += ["--threads", str(threads), "--shard-size", str(args.shard_size)]
                r = run_one(cmd)
                s = json.loads((out / "summary.json").read_text())
                run = s["this_run"]
                r["images_per_s"] = round(run["images"] / run["seconds"], 2)
                r["steady_images_per_s"] = round(
                    run["images"] / (run["worker_seconds"] / s["workers"]), 2
                )
                r["run_s"] = run["seconds"]
                digests.add(tokens_digest(out))
                runs[name].append(r)
                print(f"{name}: {r['images_per_s']} images/s, {r['peak_pss_mib']} MiB PSS")
    if len(digests) != 1:
        raise SystemExit(f"the configurations wrote different tokens: {digests}")

    best = {name: max(rs, key=lambda r: r["images_per_s"]) for name, rs in runs.items()}
    one = best[CONFIGS[0][0]]["images_per_s"]
    for b in best.values():
        b["vs_1_worker"] = round(b["images_per_s"] / one, 2)
    machine = describe(threads=2)
    machine.pop("flags")
    vers = versions()
    for pkg in ("ray", "pyarrow"):
        vers[pkg] = metadata.version(pkg)
    result = {
        "tool": "vqedge.benchmarks.tokenize_throughput",
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "images": args.images,
        "size": args.size,
        "shard_size": args.shard_size,
        "repeats": args.repeats,
        "bundle": "vqvae-f4 fp32, CPU provider",
        "same_tokens_in_every_run": True,
        "other_load_before": load_before,
        "other_load_after": other_load(),
        "best": best,
        "runs": runs,
        "machine": machine,
        "versions": vers,
        "provenance": finish(prov),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out.with_suffix(".json"), (json.dumps(result, indent=2) + "\n").encode())
    write_bytes_atomic(out.with_suffix(".md"), report(result).encode())
    print(f"results in {out}.json and {out}.md")


def report(r: dict) -> str:
    m = r["machine"]
    busy = (
        r["other_load_before"]["vqedge_train_running"]
        or r["other_load_after"]["vqedge_train_running"]
    )
    lines = [
        "# vqedge tokenize throughput",
        "",
        f"{r['date']}, {r['images']} generated {r['size']}x{r['size']} PNG images, shards of "
        f"{r['shard_size']}, {r['bundle']}; best of {r['repeats']} runs per configuration, "
        "each a fresh `vqedge tokenize` process. Every run wrote the same tokens.",
        "",
        f"Machine: {m['cpu_model']}, {m['physical_cores']} cores / {m['logical_cpus']} logical "
        f"CPUs, {m['memory_gib']} GiB; onnxruntime {r['versions']['onnxruntime']}, ray "
        f"{r['versions']['ray']}, pyarrow {r['versions']['pyarrow']}, python "
        f"{r['versions']['python']}.",
        "",
        *(provenance_md(r["provenance"]) if "provenance" in r else []),
        "",
        "Load average before / after (1, 5, 15 min): "
        f"{r['other_load_before']['loadavg_1_5_15']} / {r['other_load_after']['loadavg_1_5_15']}"
        + (" -- **another job (vqedge train) was running: figures are low**" if busy else "")
        + ".",
        "",
        "| configuration | images/s | vs 1 worker | steady images/s | run s | wall s "
        "| peak PSS MiB | peak RSS MiB | processes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, b in r["best"].items():
        lines.append(
            f"| {name} | {b['images_per_s']:.1f} | {b['vs_1_worker']:.2f}x | "
            f"{b['steady_images_per_s']:.1f} | {b['run_s']:.1f} | {b['wall_s']:.1f} | "
            f"{b['peak_pss_mib']} | {b['peak_rss_mib']} | {b['processes']} |"
        )
    lines += [
        "",
        "- images/s: images over the command's run time (`summary.json`), which includes "
        "starting the worker processes or the local Ray instance and loading the sessions; "
        "steady: over the workers' time inside shards (start-up left out); wall: the whole "
        "process, interpreter start and imports included.",
        "- peak PSS / RSS: the highest sum over all processes of the run (command, workers, "
        "Ray's daemons and actors), sampled every 0.2 s; RSS counts shared pages once per "
        "process, PSS shares them out.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
