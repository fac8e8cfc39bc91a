"""A dataset to tokenize: its list of images and their split into shards (the same for every
engine, so a run can be resumed by any engine and every engine writes the same shards)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

# what a shard holds and how it was made; part of every shard's digest
FORMAT = "vqedge-tokens/1"
DEFAULT_SHARD_SIZE = 1000


@dataclass(frozen=True)
class Shard:
    """One output file's worth of images."""

    # position in the plan; the file is part-{index:05d}.parquet
    index: int
    # image paths, absolute, in input order
    paths: tuple[str, ...]
    # sha256 of the format, the bundle, the precision and the paths: a finished shard
    # whose digest differs was made by another run
    digest: str

    @property
    def name(self) -> str:
        return shard_name(self.index)


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def list_inputs(source: str | Path) -> list[str]:
    """Absolute paths of the images to tokenize, in order.

    Parameters
    ----------
    source : str or Path
        An image folder (searched recursively, sorted), or a text file listing one image path
        per line (blank lines and lines starting with ``#`` are ignored; relative paths are
        taken relative to the list file's folder).

    Raises
    ------
    FileNotFoundError
        ``source`` does not exist.
    ValueError
        An empty folder or list, an image or binary file given as the list.
    """
    from vqedge.runtime.inputs import IMAGE_SUFFIXES, find_images  # Pillow: only when used

    p = Path(source)
    if p.is_dir():
        return [os.path.abspath(f) for f in find_images(p)]
    if not p.is_file():
        raise FileNotFoundError(
            f"input not found: {p} (pass an image folder or a text file listing image paths)"
        )
    if p.suffix.lower() in IMAGE_SUFFIXES:
        raise ValueError(f"{p} is an image: pass a folder of images or a text file listing them")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{p} is not a text file listing image paths (not UTF-8 text)") from None
    base = p.parent
    paths = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            paths.append(os.path.abspath(base / Path(line).expanduser()))
    if not paths:
        raise ValueError(f"no image paths listed in {p}")
    return paths


def plan_shards(paths: list[str], shard_size: int, identity: str) -> list[Shard]:
    """Split ``paths`` into consecutive shards of ``shard_size`` images.

    ``identity`` names what makes the tokens (bundle sha256 and precision): it goes into each
    shard's digest, so finished shards are only reused by a run that would write the same.
    """
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    shards = []
    for index, start in enumerate(range(0, len(paths), shard_size)):
        chunk = tuple(paths[start : start + shard_size])
        h = hashlib.sha256(f"{FORMAT}\n{identity}\n".encode())
        h.update("\0".join(chunk).encode())  # NUL: the one byte no path holds
        shards.append(Shard(index, chunk, h.hexdigest()))
    return shards
