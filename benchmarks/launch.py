"""Cold start, one definition for every harness: from process launch to the first result.

The parent reads the wall clock just before it spawns a fresh process; the process reports
the wall clock (``time.time()``, shared by every process on the machine) once its first result
is ready. The difference holds the interpreter's start, every import, the load and the first
call: what a user who runs a command waits for. compare.py (through worker.py) and
verify_cost.py both measure it so.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence

DEFINITION = (
    "from process launch (the parent's clock just before it spawns a fresh process) to the "
    "first result: interpreter start, imports, load and first call"
)


def run_cold(
    cmd: Sequence[str], *, timeout: float, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``cmd`` in a fresh process, its output captured.

    Parameters
    ----------
    cmd : sequence of str
        The command; it reports ``time.time()`` at its first result for `since_launch`.
    timeout : float
        Seconds before ``subprocess.TimeoutExpired`` is raised.
    env : dict, optional
        Its environment (this process's when None).

    Returns
    -------
    (CompletedProcess, float)
        The finished process and the wall clock just before it was spawned.
    """
    t_spawn = time.time()
    proc = subprocess.run(list(cmd), env=env, timeout=timeout, capture_output=True, text=True)
    return proc, t_spawn


def since_launch(t_spawn: float, t_child: float) -> float:
    """Seconds from the launch (`run_cold`'s clock) to a moment the child reported."""
    if t_child < t_spawn:
        raise ValueError(f"the child's time {t_child} precedes its launch {t_spawn}")
    return t_child - t_spawn
