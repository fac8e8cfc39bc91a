"""``vqedge tokenize``: a whole image dataset -> Parquet shards of tokens, resumable.

The inputs are split into shards (``dataset.py``); each shard is tokenized and written
atomically by one worker (``shards.py``). Engines: ``local``, N worker processes with a
session each, and ``ray`` (``ray_engine.py``). Every engine writes the same shards with the
same tokens, so a run stopped under one can be finished under the other. At the end the
folder gets ``summary.json``: counts, failures with their reasons, images per second.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vqedge.runtime.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, _require, runtime_args
from vqedge.runtime.dataset import DEFAULT_SHARD_SIZE, Shard, list_inputs, plan_shards

if TYPE_CHECKING:  # imported where used: `vqedge --help` loads neither numpy nor Pillow
    from vqedge.runtime.shards import Settings, ShardTokenizer

ENGINES = ("local", "ray")
SUMMARY = "summary.json"


def available_cpus() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


# -- the local engine: one process per worker, each with its own session ----------------------

_worker: ShardTokenizer | None = None
_done_queue = None


def _init_worker(settings: Settings, queue) -> None:
    from vqedge.runtime.shards import ShardTokenizer

    global _worker, _done_queue
    _worker, _done_queue = ShardTokenizer(settings), queue


def _run_in_worker(shard: Shard) -> dict[str, Any]:
    return _worker.run(shard, progress=_done_queue.put)


def run_local(
    pending: list[Shard],
    settings: Settings,
    workers: int,
    progress: Callable[[int], Any],
    tok=None,
) -> list[dict[str, Any]]:
    """Tokenize ``pending`` with ``workers`` processes (one: in this process, with ``tok``)."""
    from vqedge.runtime.shards import ShardTokenizer

    if workers == 1:
        worker = ShardTokenizer(settings, tok)
        return [worker.run(s, progress) for s in pending]
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")  # no onnxruntime threads inherited through fork
    done_queue = ctx.Queue()
    results = []

    def drain() -> None:
        try:
            while True:
                progress(done_queue.get_nowait())
        except queue_mod.Empty:
            pass

    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(settings, done_queue)
    ) as pool:
        futures = {pool.submit(_run_in_worker, s) for s in pending}
        try:
            while futures:
                finished, futures = wait(futures, timeout=0.25, return_when=FIRST_COMPLETED)
                drain()
                results += [f.result() for f in finished]
        except BrokenProcessPool:
            raise ChildProcessError(  # an OSError: the CLI reports it and exits with 1
                "a worker process died (out of memory?); the shards it finished are kept: "
                "rerun the same command to go on"
            ) from None
        except BaseException:
            for f in futures:
                f.cancel()
            raise
    drain()
    return results


# -- the run ------------------------------------------------------------------------------


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
    precision: str = "fp32",
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
    from vqedge.runtime.manifest import MANIFEST, sha256_file
    from vqedge.runtime.shards import Settings, ShardTokenizer, load_tokenizer, scan_out_dir
    from vqedge.runtime.tokenizer import bundle_path

    t0 = time.perf_counter()
    out = Path(out)
    paths = list_inputs(source)
    sha = sha256_file(bundle_path(bundle) / MANIFEST)
    shards = plan_shards(paths, shard_size, f"{sha}\n{precision}")
    done, pending = scan_out_dir(out, shards)
    cpus = available_cpus()
    n = max(1, min(workers or cpus, len(pending)))
    if engine == "local":
        settings = Settings(bundle, precision, providers, threads or max(1, cpus // n), str(out))
    else:
        settings = Settings(bundle, precision, providers, threads or 1, str(out))
    # Loaded here first: a bad bundle or provider fails now, not in every worker.
    tok = load_tokenizer(settings)
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
            from vqedge.runtime.ray_engine import run_ray

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
    keep = ("bundle", "bundle_sha256", "precision", "codebook_size", "patch_nums", "preprocess")
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


# -- the command ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _cmd_tokenize(args: argparse.Namespace) -> int:
    _require("tokenize", "pyarrow")
    if args.engine == "ray":
        _require("ray", "ray")
    if args.address and args.engine != "ray":
        print("vqedge tokenize: error: --address needs --engine ray", file=sys.stderr)
        return EXIT_USAGE
    if args.threads is not None and args.threads < 1:
        print(
            f"vqedge tokenize: error: --threads must be at least 1, got {args.threads}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        s = tokenize_dataset(
            args.input,
            args.out,
            engine=args.engine,
            workers=args.workers,
            threads=args.threads,
            shard_size=args.shard_size,
            address=args.address,
            bundle=args.bundle,
            precision=args.precision,
            providers=args.providers,
        )
    except KeyboardInterrupt:
        print("vqedge tokenize: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    for f in s["failures"][:20]:
        print(f"vqedge tokenize: failed {f['path']}: {f['reason']}", file=sys.stderr)
    if len(s["failures"]) > 20:
        print(f"vqedge tokenize: ... {len(s['failures']) - 20} more in {SUMMARY}", file=sys.stderr)
    im, sh, run = s["images"], s["shards"], s["this_run"]
    print(
        f"tokenized {im['tokenized']}/{im['listed']} images ({im['failed']} failed) into "
        f"{sh['total']} shards in {args.out} ({sh['written']} written, {sh['skipped']} kept); "
        f"this run: {run['images']} images, {run['images_per_s'] or 0:.1f} images/s"
    )
    if im["failed"]:
        return EXIT_PARTIAL if im["tokenized"] else EXIT_ERROR
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the ``tokenize`` subcommand."""
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "tokenize",
        help="an image dataset -> Parquet shards of tokens (local processes or Ray)",
        formatter_class=d,
    )
    p.add_argument("input", help="image folder (recursive) or a text file of image paths")
    p.add_argument("--out", required=True, help="output folder for the shards and summary.json")
    p.add_argument("--engine", choices=ENGINES, default="local", help="where the workers run")
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=None,
        metavar="N",
        help="processes (local) or actors (ray); None: as many as the CPUs can feed",
    )
    p.add_argument(
        "--shard-size",
        type=_positive_int,
        default=DEFAULT_SHARD_SIZE,
        metavar="N",
        help="images per shard: the unit of work, of output and of resuming",
    )
    p.add_argument("--address", default=None, help="Ray cluster to join (with --engine ray)")
    runtime_args(p)
    p.set_defaults(func=_cmd_tokenize)
