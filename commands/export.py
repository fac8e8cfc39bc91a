"""``vqedge export``: a checkpoint -> a validated ONNX bundle (needs the [export] extra).

Without ``--from`` the checkpoint is vqedge's own; with ``--from FAMILY`` it is another
project's, in the file its authors save (for ``diffusers``, a ``save_pretrained`` folder).
"""

from __future__ import annotations

import argparse

from vqedge.commands.common import EXIT_OK, CommandError, require
from vqedge.models import registry


def run(args: argparse.Namespace) -> int:
    require("export", "torch", "onnx", "onnxscript", "safetensors")
    from vqedge.export import ExportValidationError, export_bundle, export_pretrained

    # unset: the exporter's default, every precision a bundle can hold
    options = {"precisions": tuple(args.precisions)} if args.precisions else {}
    try:
        if args.family is None:
            if args.preset or args.config:
                raise CommandError(
                    "--preset and --config describe another project's checkpoint: "
                    f"give its family with --from ({', '.join(registry.names())})"
                )
            export_bundle(args.checkpoint, args.out, force=args.force, **options)
        else:
            if args.checkpoint is None:
                raise CommandError(f"--from {args.family} needs the checkpoint to export")
            export_pretrained(
                args.checkpoint, args.family, args.out, preset=args.preset,
                config=args.config, force=args.force, **options,
            )  # fmt: skip
    except ExportValidationError as e:
        raise CommandError(f"validation failed, no bundle written to {args.out}: {e}") from e
    return EXIT_OK


def _presets_help() -> str:
    fams = registry.FAMILIES.values()
    return ", ".join(f"{f.name} {'|'.join(f.presets)}" for f in fams if f.presets)


def _checkpoints_help() -> str:
    return "; ".join(f"{f.name}: {f.checkpoint}" for f in registry.FAMILIES.values())


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vqedge export``."""
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "export", help="export a checkpoint to a validated ONNX bundle", formatter_class=d
    )
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="checkpoint or run folder (default: shipped); with --from, the family's file "
        "(diffusers: its save_pretrained folder)",
    )
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument(
        "--from",
        dest="family",
        choices=registry.names(),
        default=None,
        help=f"the project the checkpoint comes from ({_checkpoints_help()}) (default: "
        "vqedge's own)",
    )
    p.add_argument(
        "--preset",
        default=None,
        help=f"the family's shape: {_presets_help()} (default: the first; a folder with its "
        "own config file: that file)",
    )
    p.add_argument(
        "--config",
        default=None,
        help="the family's config fields as JSON (taming: also its YAML), overriding --preset",
    )
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument(
        "--precisions", nargs="+", default=None, help="variants to write (default: fp32 fp16 int8)"
    )
    p.set_defaults(func=run)
