"""``vqedge train``: train a VQ-VAE tokenizer (needs the [train] extra)."""

from __future__ import annotations

import argparse

from vqedge.commands.common import EXIT_OK, require


def run(args: argparse.Namespace) -> int:
    require("train", "torch", "safetensors", "tqdm", "skimage", "sklearn")
    from vqedge.models.train import TrainConfig, train
    from vqedge.runtime.config import VQVAEConfig

    if args.resume and args.init_from:
        raise ValueError(
            "--resume continues a run and --init-from starts a new one from other weights: "
            "give one of them"
        )

    model = VQVAEConfig(
        base_channels=args.base_channels,
        channel_mult=tuple(args.channel_mult),
        num_res_blocks=args.res_blocks,
        num_mid_blocks=args.mid_blocks,
        codebook_size=args.codebook_size,
        code_dim=args.code_dim,
        ema=not args.no_ema,
        l2_normalize=args.l2,
        dead_code_threshold=args.dead_threshold,
        patch_nums=tuple(args.patch_nums or ()),
        fsq_levels=tuple(args.fsq_levels or ()),
    )
    tc = TrainConfig(
        data=args.data,
        out=args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        crop=args.crop,
        max_zoom_out=args.zoom_out,
        lr=args.lr,
        l1_weight=args.l1,
        seed=args.seed,
        eval_every=args.eval_every,
        ckpt_every=args.ckpt_every,
        threads=args.threads,
        stop_at=args.stop_at,
        device=args.device,
        workers=args.workers,
        work_side=args.work_side or None,
        init_from=args.init_from,
        model=model,
    )
    ev = train(tc, resume=args.resume)
    if "psnr_per_prefix" in ev:
        print(
            "held-out PSNR per prefix of scales: "
            + " ".join(f"{v:.2f}" for v in ev["psnr_per_prefix"])
        )
    print(
        f"held-out PSNR {ev['psnr']:.2f} dB, codes used {ev['codes_used']}/"
        f"{model.codebook_size}, perplexity {ev['perplexity']:.1f}; checkpoints in {args.out}"
    )
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vqedge train``."""
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("train", help="train a VQ-VAE tokenizer", formatter_class=d)
    p.add_argument(
        "data",
        nargs="?",
        help="image folder (default: the training collection: scikit-image's photos and the "
        "Debian packages plasma-workspace-wallpapers and mate-backgrounds, `make train-data`)",
    )
    p.add_argument("--out", default="runs/vqvae", help="run folder for checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest")
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CKPT",
        help="start from these weights (a checkpoint, run folder or shipped model name such "
        "as vqvae-f4; its architecture replaces the flags below) with a fresh schedule",
    )
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=None, help="default: 16 on CPU, 64 on GPU")
    p.add_argument("--crop", type=int, default=64, help="side of the random crops")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--l1", type=float, default=0.0, help="weight of an extra L1 loss")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--stop-at", type=int, default=None, help="pause after this step")
    p.add_argument("--device", default="cpu", help="cpu, or cuda (bf16 autocast)")
    p.add_argument("--workers", type=int, default=None, help="batch-building processes")
    p.add_argument(
        "--work-side", type=int, default=1024, help="shrink images to this longer side (0: no)"
    )
    p.add_argument("--base-channels", type=int, default=32)
    p.add_argument("--channel-mult", type=int, nargs="+", default=[1, 2, 4], help="sets f")
    p.add_argument("--res-blocks", type=int, default=1, help="residual blocks per level")
    p.add_argument("--mid-blocks", type=int, default=2, help="residual blocks at the latent")
    p.add_argument("--codebook-size", type=int, default=1024, help="K")
    p.add_argument("--code-dim", type=int, default=16, help="C")
    p.add_argument("--no-ema", action="store_true", help="learn the codebook by gradients")
    p.add_argument("--l2", action="store_true", help="cosine lookup (unit latents and codes)")
    p.add_argument("--dead-threshold", type=float, default=1.0, help="restart codes below")
    p.add_argument(
        "--patch-nums",
        type=int,
        nargs="+",
        default=None,
        help="VAR scales (multi-scale tokenizer), e.g. 1 2 3 4 5 6 8 10 13 16; "
        "the crop must then be the last one x f",
    )
    p.add_argument(
        "--fsq-levels",
        type=int,
        nargs="+",
        default=None,
        help="finite scalar quantization instead of a codebook: levels per latent channel, "
        "e.g. 8 5 5 5 (sets --code-dim to their count and K to their product)",
    )
    p.add_argument(
        "--zoom-out", type=float, default=1.0, help="also crop regions up to this much larger"
    )
    p.set_defaults(func=run)
