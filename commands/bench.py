"""``vqedge bench``: how fast the chosen bundle, provider and precision run on this machine."""

from __future__ import annotations

import argparse

from vqedge.commands.common import EXIT_OK, positive_int, precision_plan, runtime_args


def run(args: argparse.Namespace) -> int:
    import json

    from vqedge.benchmarks.quick import format_report, run_bench

    config = {
        "precision": precision_plan(args),
        "providers": args.providers,
        "threads": args.threads,
        "batch": args.batch,
        "size": args.size,
    }
    result = run_bench(args.bundle, iters=args.iters, **config)
    if args.profile:
        from vqedge.benchmarks.profiling import profile_tokenizer

        result["profile"] = profile_tokenizer(args.bundle, top=args.profile, **config)
    if args.json == "-":
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(format_report(result))
    if args.profile:
        from vqedge.benchmarks.profiling import format_profile

        print(format_profile(result["profile"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"results written to {args.json}")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vqedge bench``."""
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "bench",
        help="time the bundle on this machine (per stage and end to end)",
        formatter_class=d,
    )
    runtime_args(p)
    p.add_argument("--batch", type=positive_int, default=1, help="images per call")
    p.add_argument("--size", type=positive_int, default=256, help="image side in pixels")
    p.add_argument("--iters", type=positive_int, default=20, help="timed iterations")
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="then run under onnxruntime's profiler and list the N hottest nodes and op types",
    )
    p.add_argument("--json", default=None, metavar="PATH", help="also write JSON here (- prints)")
    p.set_defaults(func=run)
