"""The one cache directory: on-device verdicts (``verdicts/``) and onnxruntime's optimized
graphs (``graphs/``), private to the user.

The root is ``load(cache_dir=...)``, else ``$VQEDGE_CACHE_DIR``, else
``$XDG_CACHE_HOME/vqedge``, else ``~/.cache/vqedge``. Folders are made 0o700 and files 0o600
whatever the umask. A folder that another user owns, or that group or others may write, is
not trusted: nothing is read from it or written to it (a verdict is then measured on every
load), and one warning per process names it.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

from vqedge.runtime.atomic import write_bytes_atomic

VERDICTS = "verdicts"
GRAPHS = "graphs"
DIR_MODE = 0o700
FILE_MODE = 0o600

_warned: set[str] = set()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """The cache root: ``cache_dir``, else $VQEDGE_CACHE_DIR, else $XDG_CACHE_HOME/vqedge,
    else ~/.cache/vqedge."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("VQEDGE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vqedge"


def untrusted_reason(path: Path) -> str:
    """Why ``path`` (an existing folder) may hold files another user planted ("" if none)."""
    st = path.stat()
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"it is owned by uid {st.st_uid}, not by you"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"group or others may write it (mode {stat.S_IMODE(st.st_mode):o})"
    return ""


def _make_private(path: Path) -> None:
    """mkdir -p with every folder it creates 0o700 (umask-independent)."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for p in reversed(missing):
        try:
            p.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(p, DIR_MODE)


def private_dir(sub: str, cache_dir: str | Path | None = None) -> Path | None:
    """The cache's ``sub`` folder, made private if missing; None where the root or the folder
    cannot be made or is not trusted (one warning per process names it)."""
    root = cache_root(cache_dir)
    folder = root / sub
    try:
        _make_private(folder)
        why = untrusted_reason(root) or untrusted_reason(folder)
    except OSError as e:
        why = f"it cannot be created or read ({e.strerror})"
    if why:
        key = str(folder)
        if key not in _warned:
            _warned.add(key)
            warnings.warn(
                f"vqedge cache folder {folder} is not used: {why}. Verdicts are measured on "
                "every load and nothing is cached; make it yours and private (chmod 700) or set "
                "VQEDGE_CACHE_DIR / load(cache_dir=...) to one that is",
                RuntimeWarning,
                stacklevel=3,
            )
        return None
    return folder


def write_private(path: Path, data: bytes) -> bool:
    """Write a cache file atomically, 0o600; False where it cannot be written (the cache is
    an optimisation: a failure costs a re-measure later)."""
    try:
        write_bytes_atomic(path, data, mode=FILE_MODE)
    except OSError:
        return False
    return True


__all__ = [
    "GRAPHS",
    "VERDICTS",
    "cache_root",
    "private_dir",
    "untrusted_reason",
    "write_private",
]
