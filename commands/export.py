"""``vqedge export``: a checkpoint -> a validated ONNX bundle (needs the [export] extra)."""

from __future__ import annotations

import argparse

from vqedge.commands.common import EXIT_OK, CommandError, require


def run(args: argparse.Namespace) -> int:
    require("export", "torch", "onnx", "onnxscript", "safetensors")
    from vqedge.export import ExportValidationError, export_bundle

    # unset: the exporter's default, every precision a bundle can hold
    options = {"precisions": tuple(args.precisions)} if args.precisions else {}
    try:
        export_bundle(args.checkpoint, args.out, force=args.force, **options)
    except ExportValidationError as e:
        raise CommandError(f"validation failed, no bundle written to {args.out}: {e}") from e
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vqedge export``."""
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "export", help="export a checkpoint to a validated ONNX bundle", formatter_class=d
    )
    p.add_argument("checkpoint", nargs="?", help="checkpoint or run folder (default: shipped)")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument(
        "--precisions", nargs="+", default=None, help="variants to write (default: fp32 fp16 int8)"
    )
    p.set_defaults(func=run)
