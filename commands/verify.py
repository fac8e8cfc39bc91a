"""``vqedge verify``: does each stage of each precision hold its fidelity tier here?"""

from __future__ import annotations

import argparse

from vqedge.commands.common import EXIT_DOES_NOT_HOLD, EXIT_OK, encoder_tier_arg, positive_int


def run(args: argparse.Namespace) -> int:
    import json

    from vqedge.runtime import load
    from vqedge.runtime.manifest import read_manifest
    from vqedge.runtime.session import bundle_path
    from vqedge.runtime.verify import NO_CHECK_SET, check_entry

    root = bundle_path(args.bundle_arg or args.bundle)
    manifest = read_manifest(root, verify=False)
    if check_entry(manifest) is None:
        print(
            f"bundle {root} not verified: {NO_CHECK_SET}. Re-export it (`vqedge export ...` "
            "writes one), or load it unverified with verify=False / --no-verify"
        )
        return EXIT_DOES_NOT_HOLD
    verdicts = []
    for precision in args.precision or list(manifest["variants"]):
        tok = load(
            root, providers=args.providers, precision=precision, threads=args.threads,
            verify=False,
        )  # fmt: skip
        # checked now; the judgements load() caches are replaced
        verdicts.append(tok.verify(encoder_tier=args.encoder_tier))
    if args.json:
        print(json.dumps([v.to_dict() for v in verdicts], indent=2))
    else:
        print(f"bundle {root} ({manifest.get('name')}) on {verdicts[0].device}")
        print(_table([row for v in verdicts for row in _rows(v)]))
        for v in verdicts:
            if not v.holds:
                print(v.reasons())
    return EXIT_OK if all(v.holds for v in verdicts) else EXIT_DOES_NOT_HOLD


HEADER = ("precision", "stage", "provider", "tier", "figure", "bar", "", "per scale")


def _rows(v) -> list[tuple[str, ...]]:
    rows = []
    for j in v.judgements:
        if j.tier == "tokens":
            figure, bar = f"{j.figure:.2%} of fp32's tokens", f">= {j.bar:.0%}"
        elif j.stage == "encoder":
            figure, bar = f"round trip {j.figure:+.2f} dB vs fp32's", f"<= {j.bar:.2f} dB"
        else:
            figure, bar = f"{j.figure:.1f} dB vs fp32's decode", f">= {j.bar:.0f} dB"
        rows.append(
            (
                j.precision,
                j.stage,
                v.providers[0].replace("ExecutionProvider", "") if v.providers else "?",
                j.tier,
                figure,
                bar,
                "holds" if j.holds else "DOES NOT HOLD",
                " ".join(f"{a:.0%}" for a in j.per_scale),
            )
        )
    return rows


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
        help="judge a bundle's precisions, stage by stage, on this device (exit 4: one does "
        "not hold, or the bundle has no check set)",
        formatter_class=d,
    )
    p.add_argument("bundle_arg", nargs="?", metavar="BUNDLE", help="bundle (default: shipped)")
    p.add_argument("--bundle", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--precision", action="append", default=None,
        help="a precision to check at every stage (repeatable; default: every variant)",
    )  # fmt: skip
    encoder_tier_arg(p)
    p.add_argument("--providers", default="auto", help="auto, cpu, cuda, openvino, or a name")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads")
    p.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    p.set_defaults(func=run)
