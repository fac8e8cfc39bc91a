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
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.dataset.local import available_cpus
from vqedge.dataset.shards import Settings, ShardTokenizer
from vqedge.dataset.sources import Shard

# Ray's token authentication: `ray start --head` turns it on when the head node holds a token
# (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; `ray.init()` writes one)
AUTH_MODE_ENV = "RAY_AUTH_MODE"
DEFAULT_TOKEN_FILE = Path.home() / ".ray" / "auth_token"
JOIN_HELP = (
    "a cluster started with `ray start --head` uses token authentication when its head node "
    f"has a token: set {AUTH_MODE_ENV}=token and RAY_AUTH_TOKEN to the token "
    "(`ray get-auth-token` on the head node prints it), or RAY_AUTH_TOKEN_PATH to a file "
    f"holding it; {AUTH_MODE_ENV}=disabled for a cluster without authentication"
)


def token_source() -> str | None:
    """Where a Ray authentication token is at hand, as Ray looks for it; None if nowhere."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    token_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if token_path and Path(token_path).is_file():
        return token_path
    return str(DEFAULT_TOKEN_FILE) if DEFAULT_TOKEN_FILE.is_file() else None


def enable_token_auth() -> str | None:
    """Use token authentication to join a cluster by address when a token is at hand.

    Ray does so by itself only when it finds a local cluster (``auto``) and for ``ray start``;
    a driver given an explicit address would be refused by a cluster that requires a token.
    An explicit ``RAY_AUTH_MODE`` is left as it is. Returns where the token was found when
    this turned token mode on, else None.
    """
    source = token_source()
    if os.environ.get(AUTH_MODE_ENV) is None and source is not None:
        os.environ[AUTH_MODE_ENV] = "token"
        return source
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def connect(address: str | None) -> tuple[bool, str | None]:
    """Join the cluster at ``address`` or start a local instance.

    Returns
    -------
    (bool, str or None)
        Whether an instance was started here (to stop at the end); where the token came
        from when token authentication was turned on for ``address``.

    Raises
    ------
    ConnectionError
        The cluster cannot be joined; the message says what to set.
    """
    token = enable_token_auth() if address else None  # before Ray reads its configuration
    import ray

    if ray.is_initialized():
        return False, token
    quiet = {"logging_level": logging.WARNING, "log_to_driver": False}
    if not address:
        ray.init(num_cpus=available_cpus(), include_dashboard=False, **quiet)
        return True, None
    try:
        ray.init(address=address, **quiet)
    except Exception as e:  # ConnectionError, AuthenticationError, RuntimeError, ...
        raise ConnectionError(
            f"cannot join the Ray cluster at {address} ({_first_line(e)}); {JOIN_HELP}"
        ) from e
    return True, token


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
    and the input and output folders at the same paths. A cluster that uses token
    authentication is joined with the token found as Ray's own CLI finds it.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started, token = connect(address)
    import ray
    from ray.data import ActorPoolStrategy, DataContext, from_items

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
    except Exception as e:
        if token is None:
            raise
        # a driver in token mode cannot serve the actors of a cluster without authentication
        raise ConnectionError(
            f"the run on the Ray cluster at {address} failed ({_first_line(e)}); token "
            f"authentication was used because {token} holds a token: for a cluster started "
            f"without it, set {AUTH_MODE_ENV}=disabled"
        ) from e
    finally:
        if started:
            ray.shutdown()
