"""``vqedge export``: a checkpoint -> a validated ONNX bundle (needs the [export] extra).

Without ``--from`` the checkpoint is vqedge's own; with ``--from FAMILY`` it is another
project's, in the file its authors save (for ``diffusers``, a ``save_pretrained`` folder).
"""

from __future__ import annotations

import argparse

from vqedge.commands.common import EXIT_OK, CommandError, require

# the families `--from` takes (vqedge.export.families.FAMILIES, named here so that
# `vqedge --help` needs no torch)
FAMILIES = ("var", "llamagen", "taming", "diffusers")


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
                    f"give its family with --from ({', '.join(FAMILIES)})"
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
        choices=FAMILIES,
        default=None,
        help="the project the checkpoint comes from (default: vqedge's own)",
    )
    p.add_argument(
        "--preset",
        default=None,
        help="the family's shape: var 256|512, llamagen vq16|vq8, taming f16-1024|f16-16384, "
        "diffusers vq-f4|vq-f8 (default: the first; diffusers: the folder's config.json)",
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
