"""The ``vqedge`` command. Parsing imports nothing heavy; each subcommand imports its stage."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import metadata


def _version() -> str:
    try:
        return metadata.version("vqedge")
    except metadata.PackageNotFoundError:
        return "unknown"


def _require(extra: str, *modules: str) -> None:
    """Exit with the extra to install when an optional dependency is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        sys.exit(
            f"vqedge: this command needs {', '.join(missing)}, which the '{extra}' extra "
            f"installs: pip install 'vqedge[{extra}]'"
        )


def _cmd_train(args: argparse.Namespace) -> int:
    _require("train", "torch", "safetensors", "tqdm", "skimage", "sklearn")
    from vqedge.models.train import TrainConfig, train
    from vqedge.runtime.config import VQVAEConfig

    model = VQVAEConfig(
        base_channels=args.base_channels,
        channel_mult=tuple(args.channel_mult),
        num_res_blocks=args.res_blocks,
        num_mid_blocks=args.mid_blocks,
        codebook_size=args.codebook_size,
        code_dim=args.code_dim,
        ema=not args.no_ema,
    )
    tc = TrainConfig(
        data=args.data,
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        lr=args.lr,
        l1_weight=args.l1,
        seed=args.seed,
        eval_every=args.eval_every,
        ckpt_every=args.ckpt_every,
        threads=args.threads,
        stop_at=args.stop_at,
        model=model,
    )
    try:
        ev = train(tc, resume=args.resume)
    except KeyboardInterrupt:
        return 130
    print(
        f"held-out PSNR {ev['psnr']:.2f} dB, codes used {ev['codes_used']}/"
        f"{model.codebook_size}, perplexity {ev['perplexity']:.1f}; checkpoints in {args.out}"
    )
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("train", help="train a VQ-VAE tokenizer", formatter_class=d)
    p.add_argument("data", nargs="?", help="image folder (default: the bundled photos)")
    p.add_argument("--out", default="runs/vqvae", help="run folder for checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--crop", type=int, default=64, help="side of the random crops")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--l1", type=float, default=0.0, help="weight of an extra L1 loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--stop-at", type=int, default=None, help="pause after this step")
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--channel-mult", type=int, nargs="+", default=[1, 2, 4], help="sets f")
    p.add_argument("--res-blocks", type=int, default=1, help="residual blocks per level")
    p.add_argument("--mid-blocks", type=int, default=2, help="residual blocks at the latent")
    p.add_argument("--codebook-size", type=int, default=1024, help="K")
    p.add_argument("--code-dim", type=int, default=16, help="C")
    p.add_argument("--no-ema", action="store_true", help="learn the codebook by gradients")
    p.set_defaults(func=_cmd_train)


def _cmd_export(args: argparse.Namespace) -> int:
    _require("export", "torch", "onnx", "onnxscript", "safetensors")
    from vqedge.export import ExportValidationError, export_bundle

    try:
        export_bundle(
            args.checkpoint, args.out, force=args.force, precisions=tuple(args.precisions)
        )
    except ExportValidationError as e:
        print(f"vqedge export: validation failed, no bundle written\n{e}", file=sys.stderr)
        return 1
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "export", help="export a checkpoint to a validated ONNX bundle", formatter_class=d
    )
    p.add_argument("checkpoint", nargs="?", help="checkpoint or run folder (default: shipped)")
    p.add_argument("--out", required=True, help="bundle folder to create")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")
    p.add_argument(
        "--precisions", nargs="+", default=["fp32", "fp16", "int8"], help="variants to write"
    )
    p.set_defaults(func=_cmd_export)


# Each stage adds its subcommands here as it lands.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_train, _add_export]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqedge", description="VQ image tokenizer: PyTorch training, ONNX export, runtime."
    )
    parser.add_argument("--version", action="version", version=f"vqedge {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, OSError) as e:
        print(f"vqedge {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
