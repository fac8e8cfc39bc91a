"""The tokenize job (``vqedge tokenize``): an image dataset -> Parquet shards of tokens.

The inputs are split into shards (``sources.py``); each shard is tokenized and written
atomically by one worker (``shards.py``). Engines: ``local`` (``local.py``), N worker
processes with a session each, and ``ray`` (``ray_engine.py``). Every engine writes the same
shards with the same tokens, so a run stopped under one can be finished under the other. At
the end the folder gets ``summary.json``: counts, failures with their reasons, images per
second.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from vqedge.dataset.sources import DEFAULT_SHARD_SIZE, list_inputs, plan_shards

ENGINES = ("local", "ray")
SUMMARY = "summary.json"


class _Progress:
    """tqdm when it is installed, else a line on stderr at most every 5 s."""

    def __init__(self, total: int, initial: int, enabled: bool) -> None:
        self.bar, self.n, self.total, self.last = None, initial, total, 0.0
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, desc="tokenize", unit="img")
            except ImportError:
                pass

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and (time.monotonic() - self.last > 5 or self.n == self.total):
            self.last = time.monotonic()
            print(f"tokenize: {self.n}/{self.total} images", file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def tokenize_dataset(
    source: str | Path,
    out: str | Path,
    engine: str = "local",
    workers: int | None = None,
    threads: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    address: str | None = None,
    bundle: str | None = None,
    precision: str | dict[str, str] = "fp32",
    providers: str = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Tokenize every image of ``source`` into Parquet shards in ``out``; the run's summary.

    Parameters
    ----------
    source : str or Path
        An image folder (recursive) or a text file listing image paths, one a line.
    out : str or Path
        Output folder: ``part-NNNNN.parquet`` shards and ``summary.json``. Shards already
        there from an earlier run of the same inputs, bundle and precision are kept.
    engine : {"local", "ray"}
    workers : int, optional
        Worker processes (local) or actors (ray). Default: local, one per CPU; ray, the
        cluster's CPUs divided by ``threads``.
    threads : int, optional
        onnxruntime threads per worker. Default: local, the CPUs divided among the workers;
        ray, 1.
    shard_size : int
        Images per shard: the unit of work, of output and of resumption.
    address : str, optional
        Ray cluster to join (``ray`` only); without it a local Ray instance is started.
    precision : str or {"encoder": str, "decoder": str} or "auto"
        The precision plan (``vqedge.runtime.load``). The load is strict: the encoder must
        keep the tokens tier here, or the run is refused before any shard is written.

    Returns
    -------
    dict
        What was done (also written to ``out/summary.json``): shards written and skipped,
        images listed, tokenized and failed, each failure's path and reason, seconds and
        images per second of this run.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    if address and engine != "ray":
        raise ValueError("--address joins a Ray cluster: use it with --engine ray")
    for name, value in (("workers", workers), ("threads", threads)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")
    from vqedge.dataset.local import available_cpus, run_local
    from vqedge.dataset.shards import Settings, ShardTokenizer, load_tokenizer, scan_out_dir

    t0 = time.perf_counter()
    out = Path(out)
    paths = list_inputs(source)
    cpus = available_cpus()
    # Loaded here first: a bad bundle or provider fails now, not in every worker.
    settings = Settings(bundle, precision, providers, threads, str(out))
    tok = load_tokenizer(settings)
    # the plan that runs ("auto" resolved once, here): the workers load it as it is
    precision = tok.plan.to_dict()
    shards = plan_shards(paths, shard_size, f"{tok.bundle_sha256}\n{json.dumps(precision)}")
    done, pending = scan_out_dir(out, shards)
    n = max(1, min(workers or cpus, len(pending)))
    if engine == "local":
        settings = Settings(bundle, precision, providers, threads or max(1, cpus // n), str(out))
    else:
        settings = Settings(bundle, precision, providers, threads or 1, str(out))
    meta = ShardTokenizer(settings, tok).meta
    bar = _Progress(len(paths), sum(d["images"] for d in done), progress)
    try:
        if not pending:  # every shard was finished by an earlier run
            results, pool = [], {"workers": 0, "threads_per_worker": settings.threads}
        elif engine == "local":
            if n > 1:
                tok = None  # the workers load their own
            results = run_local(pending, settings, n, bar.update, tok)
            pool = {"workers": n, "threads_per_worker": settings.threads}
        else:
            from vqedge.dataset.ray_engine import run_ray

            tok = None
            results, pool = run_ray(pending, settings, workers, address, bar.update)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    summary = _summary(source, out, engine, pool, meta, shards, done, results, seconds)
    from vqedge.runtime.atomic import write_bytes_atomic

    write_bytes_atomic(out / SUMMARY, (json.dumps(summary, indent=2) + "\n").encode())
    return summary


def _summary(source, out, engine, pool, meta, shards, done, results, seconds) -> dict[str, Any]:
    infos = sorted([*done, *results], key=lambda i: i["shard"])
    failures = [f for i in infos for f in i["failures"]]
    new_images = sum(r["images"] for r in results)
    keep = ("bundle", "bundle_sha256", "precision", "codebook_size", "token_layout", "preprocess")
    return {
        "input": str(source),
        "out": str(out),
        "engine": engine,
        **pool,
        **{k: meta[k] for k in keep},
        "shards": {"total": len(shards), "written": len(results), "skipped": len(done)},
        "images": {
            "listed": sum(i["images"] for i in infos),
            "tokenized": sum(i["tokenized"] for i in infos),
            "failed": len(failures),
        },
        "this_run": {
            "images": new_images,
            "seconds": round(seconds, 3),
            "images_per_s": round(new_images / seconds, 3) if seconds > 0 else None,
            # time the workers spent in shards, added up (start-up excluded)
            "worker_seconds": round(sum(r["seconds"] for r in results), 3),
        },
        "failures": failures,
    }
