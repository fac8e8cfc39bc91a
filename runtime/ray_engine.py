"""``vqedge tokenize --engine ray``: the shards of a plan tokenized by a pool of Ray actors.

Ray Data carries one row per pending shard (its paths and digest); ``map_batches`` runs a pool
of actors, each holding one ``ShardTokenizer`` (one onnxruntime session), that read the
shard's images, tokenize them and write the shard's Parquet file atomically under its own
name; the driver streams back each shard's summary as it finishes. Writing the shards in the
actors (instead of ``Dataset.write_parquet``, whose file names Ray chooses) is what keeps a
run resumable. Ray is imported only here, inside the function (the ``vqedge[ray]`` extra).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from vqedge.runtime.dataset import Shard
from vqedge.runtime.shards import Settings, ShardTokenizer


class RayShardWorker:
    """A Ray Data actor: one tokenizer; each row of a batch is a shard to write."""

    def __init__(self, settings: Settings) -> None:
        self.worker = ShardTokenizer(settings)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for item in batch["shard"]:
            d = json.loads(item)
            r = self.worker.run(Shard(d["index"], tuple(d["paths"]), d["digest"]))
            results.append(json.dumps(r))
        return {"result": np.array(results, dtype=object)}


def actor_plan(cluster_cpus: float, workers: int | None, threads: int, shards: int):
    """(actors, CPUs reserved per actor) for a cluster of ``cluster_cpus`` CPUs.

    One CPU is left unreserved for Ray Data's own tasks: a pool that reserved every CPU
    starved them and the pipeline hung without an error (Ray 2.60, 2 CPUs).
    """
    actors = workers or max(1, int(cluster_cpus // threads))
    actors = max(1, min(actors, shards))
    per_actor = math.floor(max(cluster_cpus - 1, 0) / actors * 100) / 100
    return actors, max(0.01, min(float(threads), per_actor))


def run_ray(
    pending: list[Shard],
    settings: Settings,
    workers: int | None,
    address: str | None,
    progress: Callable[[int], Any],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Tokenize ``pending`` on Ray: (each shard's summary, the pool's size and CPUs).

    Without ``address`` a local Ray instance is started (and stopped at the end) with this
    machine's CPUs; with one, the run joins that cluster, whose nodes need vqedge installed
    and the input and output folders at the same paths.
    """
    import ray
    from ray.data import ActorPoolStrategy, DataContext, from_items

    from vqedge.runtime.tokenize_dataset import available_cpus

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=available_cpus(), include_dashboard=False, **quiet)
    try:
        threads = settings.threads or 1
        cpus = ray.cluster_resources().get("CPU", 1.0)
        actors, actor_cpus = actor_plan(cpus, workers, threads, len(pending))
        # the command shows its own progress bar; Ray Data's bars and INFO lines would garble it
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        DataContext.get_current().enable_progress_bars = False
        rows = [{"shard": json.dumps(asdict(s))} for s in pending]
        ds = from_items(rows).map_batches(
            RayShardWorker,
            fn_constructor_kwargs={"settings": replace(settings, threads=threads)},
            batch_size=1,
            compute=ActorPoolStrategy(size=actors),
            num_cpus=actor_cpus,
        )
        results = []
        for row in ds.iter_rows():  # streams: each shard's summary as soon as it is written
            results.append(json.loads(row["result"]))
            progress(results[-1]["images"])
        pool = {"workers": actors, "threads_per_worker": threads, "cpus_per_actor": actor_cpus}
        return results, {**pool, "cluster_cpus": cpus, "address": address}
    finally:
        if started:
            ray.shutdown()
