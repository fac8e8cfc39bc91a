"""``vqedge tokenize``: an image dataset -> Parquet shards of tokens (local processes or Ray).

Needs the [tokenize] extra (pyarrow); ``--engine ray`` the [ray] extra.
"""

from __future__ import annotations

import argparse

from vqedge.commands.common import (
    EXIT_OK,
    CommandError,
    PartialFailure,
    positive_int,
    precision_plan,
    require,
    runtime_args,
)
from vqedge.dataset.run import ENGINES, SUMMARY  # standard library only: --help stays light
from vqedge.dataset.sources import DEFAULT_SHARD_SIZE

SHOWN_FAILURES = 20


def run(args: argparse.Namespace) -> int:
    if args.address and args.engine != "ray":
        raise CommandError("--address joins a Ray cluster: use it with --engine ray")
    require("tokenize", "pyarrow")
    if args.engine == "ray":
        require("ray", "ray")
    from vqedge.dataset.run import tokenize_dataset

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
            precision=precision_plan(args),
            providers=args.providers,
        )
    except KeyboardInterrupt:
        raise KeyboardInterrupt("the shards written are kept: rerun the command to go on") from None
    im, sh, this = s["images"], s["shards"], s["this_run"]
    print(
        f"tokenized {im['tokenized']}/{im['listed']} images ({im['failed']} failed) into "
        f"{sh['total']} shards in {args.out} ({sh['written']} written, {sh['skipped']} kept); "
        f"this run: {this['images']} images, {this['images_per_s'] or 0:.1f} images/s"
    )
    if s["failures"]:
        shown = [(f["path"], f["reason"]) for f in s["failures"][:SHOWN_FAILURES]]
        more = len(s["failures"]) - len(shown)
        note = f"... {more} more in {args.out}/{SUMMARY}" if more else None
        raise PartialFailure(shown, im["tokenized"], note)
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vqedge tokenize``."""
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
        type=positive_int,
        default=None,
        metavar="N",
        help="processes (local) or actors (ray); None: as many as the CPUs can feed",
    )
    p.add_argument(
        "--shard-size",
        type=positive_int,
        default=DEFAULT_SHARD_SIZE,
        metavar="N",
        help="images per shard: the unit of work, of output and of resuming",
    )
    p.add_argument(
        "--address",
        default=None,
        metavar="HOST:PORT",
        help="Ray cluster to join (with --engine ray); token authentication uses "
        "RAY_AUTH_TOKEN or ~/.ray/auth_token",
    )
    runtime_args(p)
    p.set_defaults(func=run)
