"""Where a bundle is written: checks before the work, and an atomic move into place after it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def prepare_out(out: Path, force: bool) -> None:
    """Refuse an existing ``out`` unless ``force``, and a parent that is not a writable folder,
    before any work is done."""
    if out.exists() and not force:
        raise FileExistsError(f"output {out} already exists: pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    for above in (parent, *parent.parents):
        if above.exists():
            if not above.is_dir():
                raise NotADirectoryError(f"cannot write the bundle: {above} is not a folder")
            break
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write the bundle: {parent} is not writable")


def move_into_place(tmp: Path, out: Path) -> None:
    """Put the finished bundle ``tmp`` at ``out`` by renames: a crash leaves the old bundle or
    the new one at ``out``, never half of one."""
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "bundle")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
