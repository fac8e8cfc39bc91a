"""The local engine: worker processes, each with its own onnxruntime session.

Workers end when the process that started them dies, even by SIGKILL (Linux: a parent-death
signal; elsewhere a thread watching the parent), so a killed run leaves no worker writing
shards; the temporary files it leaves are deleted by the next run (``shards.scan_out_dir``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from vqedge.dataset.shards import Settings, ShardTokenizer
from vqedge.dataset.sources import Shard

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 1.0

_worker: ShardTokenizer | None = None
_done_queue = None


def available_cpus() -> int:
    """CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def end_with_parent(parent_pid: int) -> None:
    """End this process when ``parent_pid`` dies (call it first thing in a child process)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0:
            if os.getppid() != parent_pid:  # the parent died before the signal was armed
                os._exit(1)
            return

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="vqedge-parent-watch", daemon=True).start()


def _init_worker(settings: Settings, queue, parent_pid: int) -> None:
    end_with_parent(parent_pid)
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
    """Tokenize ``pending`` with ``workers`` processes (one: in this process, with ``tok``).

    Returns
    -------
    list of dict
        Each written shard's summary (``ShardTokenizer.run``), in the order they finished.
    """
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
        workers,
        mp_context=ctx,
        initializer=_init_worker,
        initargs=(settings, done_queue, os.getpid()),
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
