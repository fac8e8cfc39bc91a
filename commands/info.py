"""``vqedge info``: what a bundle holds and what runs it on this machine."""

from __future__ import annotations

import argparse

from vqedge.commands.common import EXIT_OK, load_tokenizer, runtime_args

LABEL_WIDTH = 12


def run(args: argparse.Namespace) -> int:
    import json

    import onnxruntime as ort

    from vqedge.runtime import list_bundles
    from vqedge.runtime.providers import installed_runtimes, runtime_clash

    args.bundle = args.bundle_arg or args.bundle
    tok = load_tokenizer(args)
    if args.json:
        print(json.dumps(tok.info, indent=2))
        return EXIT_OK
    rows = [
        *tok.describe(),
        ("shipped", ", ".join(list_bundles()) or "none"),
        ("onnxruntime", ", ".join(installed_runtimes())),
        ("available", ", ".join(ort.get_available_providers())),
    ]
    clash = runtime_clash()
    if clash:
        rows.append(("WARNING", clash))
    print("\n".join(f"{label:<{LABEL_WIDTH}}{value}" for label, value in rows))
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vqedge info``."""
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("info", help="bundle facts and execution providers", formatter_class=d)
    p.add_argument("bundle_arg", nargs="?", metavar="BUNDLE", help="bundle (default: shipped)")
    p.add_argument("--json", action="store_true", help="print the info as JSON")
    runtime_args(p)
    p.set_defaults(func=run)
