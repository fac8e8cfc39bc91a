"""One shard: tokenize its images and write them as a Parquet file, atomically.

What every engine's worker runs (one onnxruntime session per worker), and how a run finds the
shards an earlier run finished. pyarrow is imported only where a shard is written or read.

A shard ``part-NNNNN.parquet`` has one row per image that was tokenized:

    path           string        absolute path of the image
    height, width  int32         the image's size as read
    token_h/_w     int32         the token map's size (multi-scale: the last scale's)
    tokens         list<int32>   flat indices: each scale's map row-major, scales in order
    bundle_sha256  string        sha256 of the bundle's manifest (as in .vqt files)

and, under the schema metadata key ``vqedge``, a JSON object: the bundle, the precision plan
and its on-device verdict, the token layout (``token_layout``: the bundle kind and, where they
are fixed, the sides of each image's token maps, coarse to fine), the preprocessing (the
tokenizer's sentence, null when images are taken as they are), the images that failed with
their reasons, and the digest that ties the shard to its inputs.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.dataset.sources import FORMAT, Shard
from vqedge.runtime.atomic import write_bytes_atomic
from vqedge.runtime.inputs import read_image

META_KEY = b"vqedge"
# temporary files of shards being written (atomic.write_bytes_atomic's naming)
TMP_GLOB = ".part-*.tmp"
SHARD_GLOB = "part-*.parquet"


# what a verdict records that lasts (not when, how long, or whether it came from the cache)
VERDICT_TRANSIENT = ("cached", "seconds", "text")


@dataclass(frozen=True)
class Settings:
    """What a worker needs to load its tokenizer and write shards (picklable)."""

    # bundle folder or shipped name; None: the shipped default
    bundle: str | None
    # a precision for every stage, or one per stage {"encoder": ..., "decoder": ...}
    precision: str | dict[str, str]
    providers: str
    # intra-op threads of the worker's sessions
    threads: int | None
    # output folder
    out: str


def load_tokenizer(settings: Settings):
    """The tokenizer a worker runs (either kind of bundle)."""
    from vqedge.runtime import load

    return load(
        settings.bundle,
        providers=settings.providers,
        precision=settings.precision,
        threads=settings.threads,
    )


def _verdict(tok) -> dict[str, Any] | None:
    """The verdict's lasting facts (not when or how long it was checked)."""
    if tok.verification is None:
        return None
    return {k: v for k, v in tok.verification.to_dict().items() if k not in VERDICT_TRANSIENT}


def _reason(e: Exception) -> str:
    return str(e) if isinstance(e, (ValueError, OSError)) else f"{type(e).__name__}: {e}"


class ShardTokenizer:
    """Holds one tokenizer; ``run(shard)`` tokenizes a shard's images and writes its file."""

    def __init__(self, settings: Settings, tok=None) -> None:
        self.out = Path(settings.out)
        self.tok = tok if tok is not None else load_tokenizer(settings)
        self.meta = {
            "format": FORMAT,
            "bundle": self.tok.manifest.get("name"),
            "bundle_sha256": self.tok.bundle_sha256,
            "precision": self.tok.plan.to_dict(),
            "codebook_size": self.tok.codebook_size,
            "downsample_factor": self.tok.f,
            "token_layout": self.tok.token_layout,
            "preprocess": self.tok.preprocessing,
            # the on-device check of the plan where the shard was made
            "verification": _verdict(self.tok),
        }

    def tokens_of(self, img: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """uint8 [H, W, 3] -> (flat int32 tokens [L], (h, w) of the last token map)."""
        tokens, _ = self.tok.encode_image(img)  # fitted, tiled or whole, as `vqedge encode`
        hw = self.tok.token_maps(tokens)[-1].shape  # the finest map's
        return tokens.reshape(-1).astype(np.int32), hw

    def run(self, shard: Shard, progress: Callable[[int], Any] | None = None) -> dict[str, Any]:
        """Tokenize ``shard``'s images one at a time and write its file; its summary.

        An image that cannot be read or tokenized is recorded with the reason and skipped.
        """
        t0 = time.perf_counter()
        cols: dict[str, list] = {k: [] for k in ("path", "height", "width", "token_h", "token_w")}
        tokens: list[np.ndarray] = []
        failures = []
        for path in shard.paths:
            try:
                img = read_image(path)
                flat, (th, tw) = self.tokens_of(img)
            except Exception as e:  # any bad image is recorded, and the run goes on
                failures.append({"path": path, "reason": _reason(e)})
            else:
                for k, v in zip(cols, (path, img.shape[0], img.shape[1], th, tw)):
                    cols[k].append(v)
                tokens.append(flat)
            if progress is not None:
                progress(1)
        info = {
            **self.meta,
            "shard": shard.index,
            "digest": shard.digest,
            "images": len(shard.paths),
            "tokenized": len(tokens),
            "failures": failures,
        }
        write_shard(self.out / shard.name, cols, tokens, self.tok.bundle_sha256, info)
        return {**info, "seconds": time.perf_counter() - t0}


def write_shard(
    path: Path, cols: dict[str, list], tokens: list[np.ndarray], sha: str, info: dict
) -> None:
    """Write one shard as Parquet (zstd) under a temporary name, fsync, rename into place."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lengths = np.array([len(t) for t in tokens], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = np.concatenate(tokens) if tokens else np.zeros(0, np.int32)
    i32 = pa.int32()
    schema = pa.schema(
        [
            ("path", pa.string()),
            ("height", i32),
            ("width", i32),
            ("token_h", i32),
            ("token_w", i32),
            ("tokens", pa.list_(i32)),
            ("bundle_sha256", pa.string()),
        ],
        metadata={META_KEY: json.dumps(info).encode()},
    )
    arrays = [
        pa.array(cols["path"], pa.string()),
        *(pa.array(cols[k], i32) for k in ("height", "width", "token_h", "token_w")),
        pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, i32)),
        pa.array([sha] * len(tokens), pa.string()),
    ]
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), sink, compression="zstd")
    write_bytes_atomic(path, sink.getvalue().to_pybytes())


def read_shard_info(path: str | Path) -> dict[str, Any] | None:
    """The ``vqedge`` metadata of a shard file; None when it is not a readable shard."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[META_KEY])
    except (OSError, ValueError, KeyError):  # pyarrow's ArrowInvalid is a ValueError
        return None


def scan_out_dir(out: Path, shards: list[Shard]) -> tuple[list[dict[str, Any]], list[Shard]]:
    """(infos of the shards already finished in ``out``, shards still to do).

    Temporary files left by a killed run are deleted. A finished shard made from other
    inputs, another bundle or another precision is an error, and so is a shard file this
    plan does not make: the folder belongs to another run.
    """
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob(TMP_GLOB):
        tmp.unlink(missing_ok=True)
    planned = {s.name for s in shards}
    stray = sorted(p.name for p in out.glob(SHARD_GLOB) if p.name not in planned)
    if stray:
        raise ValueError(
            f"{out} holds shards this input does not make ({', '.join(stray[:3])}"
            f"{', ...' if len(stray) > 3 else ''}): write to a new --out folder or delete them"
        )
    done, pending = [], []
    for s in shards:
        path = out / s.name
        if not path.exists():
            pending.append(s)
            continue
        info = read_shard_info(path)
        if info is None:
            warnings.warn(f"{path} is not a readable shard: it is made again", stacklevel=2)
            pending.append(s)
        elif info.get("digest") != s.digest:
            raise ValueError(
                f"{path} was made from other images, another bundle or another precision: "
                "write to a new --out folder or delete its shards"
            )
        else:
            done.append(info)
    return done, pending
