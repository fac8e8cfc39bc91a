"""``vqedge verify``: does this device give the tokens the bundle promises?"""

from __future__ import annotations

import argparse

from vqedge.commands.common import EXIT_DOES_NOT_HOLD, EXIT_OK, positive_int


def run(args: argparse.Namespace) -> int:
    import json

    from vqedge.runtime import load
    from vqedge.runtime.manifest import read_manifest
    from vqedge.runtime.session import bundle_path
    from vqedge.runtime.verify import advice

    root = bundle_path(args.bundle_arg or args.bundle)
    manifest = read_manifest(root, verify=False)
    results = []
    for precision in args.precision or list(manifest["variants"]):
        tok = load(
            root, providers=args.providers, precision=precision, threads=args.threads,
            verify=False,
        )  # fmt: skip
        result = tok.verify()  # checked now; the verdict load() caches is replaced
        if result is None:
            raise ValueError(
                f"bundle {root.name} carries no check set: re-export it with this vqedge to add one"
            )
        results.append(result)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(f"bundle {root} ({manifest.get('name')}) on {results[0].device}")
        print(_table([_row(r) for r in results]))
        for r in results:
            if not r.holds:
                print(f"{r.precision}: {r.reason}: {advice(r)}")
    return EXIT_OK if all(r.holds for r in results) else EXIT_DOES_NOT_HOLD


HEADER = ("precision", "provider", "tokens agree", "PSNR vs fp32", "loss vs fp32", "promised", "")


def _row(r) -> tuple[str, ...]:
    promised = "-"
    if r.expected_agreement is not None:
        promised = f"{r.expected_agreement:.1%}, {r.expected_drop_db:+.2f} dB"
    return (
        r.precision,
        r.providers[0].replace("ExecutionProvider", ""),
        f"{r.agreement:.1%}",
        f"{r.psnr_vs_fp32:.1f} dB" if r.psnr_vs_fp32 < 99 else "identical",
        f"{r.psnr_drop_db:+.2f} dB",
        promised,
        "holds" if r.holds else "DOES NOT HOLD",
    )


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in (HEADER, *rows)) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (HEADER, *rows)
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vqedge verify``."""
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "verify",
        help="check a bundle's precisions on this device (exit 4: one does not hold)",
        formatter_class=d,
    )
    p.add_argument("bundle_arg", nargs="?", metavar="BUNDLE", help="bundle (default: shipped)")
    p.add_argument("--bundle", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--precision", action="append", default=None,
        help="a precision to check (repeatable; default: every variant of the bundle)",
    )  # fmt: skip
    p.add_argument("--providers", default="auto", help="auto, cpu, cuda, openvino, or a name")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)
