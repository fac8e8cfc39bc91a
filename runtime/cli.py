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
        l2_normalize=args.l2,
        dead_code_threshold=args.dead_threshold,
        patch_nums=tuple(args.patch_nums or ()),
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
        model=model,
    )
    try:
        ev = train(tc, resume=args.resume)
    except KeyboardInterrupt:
        return 130
    if "psnr_per_prefix" in ev:
        print(
            "held-out PSNR per prefix of scales: "
            + " ".join(f"{v:.2f}" for v in ev["psnr_per_prefix"])
        )
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
        "--zoom-out", type=float, default=1.0, help="also crop regions up to this much larger"
    )
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


# -- runtime commands (numpy + onnxruntime only) --------------------------------------------

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3


def runtime_args(p: argparse.ArgumentParser) -> None:
    """The options every runtime command shares."""
    p.add_argument("--bundle", default=None, help="bundle folder or shipped name (default)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16", "int8"])
    p.add_argument("--providers", default="auto", help="auto, cpu, cuda, openvino, or a name")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per session")


def _load(args: argparse.Namespace):
    from vqedge.runtime.tokenizer import Tokenizer

    return Tokenizer.load(
        args.bundle, providers=args.providers, precision=args.precision, threads=args.threads
    )


def _progress(items: list, desc: str):
    """tqdm when it is installed and there are several items; the plain list otherwise."""
    if len(items) < 2:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="img")


def _expand_inputs(inputs: list[str]) -> list[tuple]:
    """(path, name relative to its root) for every file given or found in a folder."""
    from pathlib import Path

    from vqedge.runtime.inputs import find_images

    out = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += [(f, f.relative_to(p)) for f in find_images(p)]
        elif p.exists():
            out.append((p, Path(p.name)))
        else:
            raise FileNotFoundError(f"input not found: {p}")
    return out


def _fit_note(tok, command: str) -> None:
    if tok.resolution is not None:
        R = tok.resolution
        print(
            f"vqedge {command}: images are fitted to {R}x{R} (centre square, Lanczos) for this "
            "multi-scale bundle",
            file=sys.stderr,
        )


def _cmd_encode(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vqedge.runtime.inputs import read_image

    files = _expand_inputs(args.images)
    out = Path(args.output)
    single_file = len(files) == 1 and out.suffix == ".vqt"
    tok = _load(args)
    _fit_note(tok, "encode")
    failures, total_bytes, total_px = [], 0, 0
    for path, rel in _progress(files, "encode"):
        try:
            idx, img = tok.encode_image(read_image(path))
        except ValueError as e:
            failures.append(f"{path}: {e}")
            continue
        target = out if single_file else out / rel.with_suffix(".vqt")
        target.parent.mkdir(parents=True, exist_ok=True)
        total_bytes += tok.save_tokens(target, idx, image_size=img.shape[:2])
        total_px += img.shape[0] * img.shape[1]
    for f in failures:
        print(f"vqedge encode: skipped {f}", file=sys.stderr)
    done = len(files) - len(failures)
    if done:
        print(f"encoded {done} image(s) to {out}: {8 * total_bytes / total_px:.3f} bits per pixel")
    if failures:
        return EXIT_PARTIAL if done else EXIT_ERROR
    return EXIT_OK


def _cmd_decode(args: argparse.Namespace) -> int:
    from PIL import Image

    from vqedge.runtime.tiling import TILE_ABOVE

    tok = _load(args)
    tf = tok.load_tokens(args.tokens, force=args.force)
    idx = tf.scales if tok.patch_nums else tf.indices
    if tf.scales[0].shape[0] != 1:
        raise ValueError(f"{args.tokens} holds {tf.scales[0].shape[0]} images; decode writes one")
    size = tuple(tf.image_size) if tf.image_size else None
    big = not tok.patch_nums and max(idx.shape[1:]) * tok.f > TILE_ABOVE
    img = tok.decode_tiled(idx, size=size) if big else tok.decode(idx, size=size)
    Image.fromarray(img[0]).save(args.output)
    print(f"decoded {args.tokens} to {args.output} ({img.shape[2]}x{img.shape[1]})")
    return EXIT_OK


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    from PIL import Image

    from vqedge.runtime.inputs import read_image
    from vqedge.runtime.metrics import psnr
    from vqedge.runtime.tiling import TILE_ABOVE

    tok = _load(args)
    _fit_note(tok, "reconstruct")
    idx, img = tok.encode_image(read_image(args.image))
    big = tok.resolution is None and max(img.shape[:2]) > TILE_ABOVE
    dec = tok.decode_tiled if big else tok.decode
    recon = dec(idx, size=img.shape[:2])[0]
    Image.fromarray(recon).save(args.output)
    bpp = tok.config.bits_per_token * idx.size / (img.shape[0] * img.shape[1])
    shape = (
        f"{idx.shape[1]} tokens over {len(tok.patch_nums)} scales"
        if tok.patch_nums
        else f"{idx.shape[1]}x{idx.shape[2]} tokens"
    )
    print(
        f"{args.image} -> {args.output}: PSNR {psnr(recon, img):.2f} dB, "
        f"{bpp:.3f} bits per pixel ({shape}, K={tok.codebook_size}, "
        f"{tok.precision} on {tok.info['providers_in_use']['encoder'][0]})"
    )
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    import json

    import onnxruntime as ort

    from vqedge.runtime.providers import installed_runtimes, runtime_clash
    from vqedge.runtime.tokenizer import list_bundles

    args.bundle = args.bundle_arg or args.bundle
    tok = _load(args)
    m = tok.manifest
    info = tok.info
    lines = [
        f"bundle      {info['bundle']} ({info['name']}, {info['kind']})",
        f"model       f={tok.f}, K={tok.codebook_size}, code dim {tok.config.code_dim}, "
        f"{tok.config.bits_per_pixel:.3f} bits per pixel",
        f"input       {m['input']['color']} {m['input']['layout']} {m['input']['dtype']} in "
        f"{m['input']['range']}, sizes: {m['input']['size_policy']}",
        f"export      {m['export']['exporter']} exporter, opset {m['export']['opset']}, "
        f"IR {m['export']['ir_version']}, torch {m['export']['producers']['torch']}",
        "variants    "
        + ", ".join(
            f"{p} ({v['quality']['size_bytes'] / 1e6:.1f} MB, "
            f"{v['quality']['held_out_psnr']:.2f} dB)"
            for p, v in m["variants"].items()
        ),
        *(
            [
                f"scales      {list(tok.patch_nums)} ({tok.config.scale_offsets[-1]} tokens), "
                f"images exactly {tok.resolution}x{tok.resolution}"
            ]
            if tok.patch_nums
            else []
        ),
        f"shipped     {', '.join(list_bundles()) or 'none'}",
        f"onnxruntime {', '.join(installed_runtimes())}",
        f"available   {', '.join(ort.get_available_providers())}",
        f"in use      {info['precision']} on {', '.join(info['providers_in_use']['encoder'])}",
        "graphs      " + ", ".join(tok.graph_file(g) for g in ("encoder", "quantizer", "decoder")),
    ]
    clash = runtime_clash()
    if clash:
        lines.append(f"WARNING     {clash}")
    print(json.dumps(info, indent=2) if args.json else "\n".join(lines))
    return EXIT_OK


def _add_runtime(sub: argparse._SubParsersAction) -> None:
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("encode", help="images -> token files (.vqt)", formatter_class=d)
    p.add_argument("images", nargs="+", help="image files or folders (recursive)")
    p.add_argument("-o", "--output", required=True, help="folder, or a .vqt file for one image")
    runtime_args(p)
    p.set_defaults(func=_cmd_encode)

    p = sub.add_parser("decode", help="a token file -> image", formatter_class=d)
    p.add_argument("tokens", help="a .vqt token file")
    p.add_argument("-o", "--output", required=True, help="image file to write (PNG)")
    p.add_argument("--force", action="store_true", help="accept tokens of another bundle")
    runtime_args(p)
    p.set_defaults(func=_cmd_decode)

    p = sub.add_parser("reconstruct", help="image -> tokens -> image; PSNR", formatter_class=d)
    p.add_argument("image", help="an image file")
    p.add_argument("-o", "--output", required=True, help="image file to write (PNG)")
    runtime_args(p)
    p.set_defaults(func=_cmd_reconstruct)

    p = sub.add_parser("info", help="bundle facts and execution providers", formatter_class=d)
    p.add_argument("bundle_arg", nargs="?", metavar="BUNDLE", help="bundle (default: shipped)")
    p.add_argument("--json", action="store_true", help="print the info as JSON")
    runtime_args(p)
    p.set_defaults(func=_cmd_info)


def _add_bench(sub: argparse._SubParsersAction) -> None:
    from vqedge.runtime.bench import add_parser

    add_parser(sub)


def _add_tokenize(sub: argparse._SubParsersAction) -> None:
    from vqedge.runtime.tokenize_dataset import add_parser

    add_parser(sub)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    from vqedge.demo.cli import add_parser

    add_parser(sub)


# Each stage adds its subcommands here as it lands.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_train,
    _add_export,
    _add_runtime,
    _add_bench,
    _add_tokenize,
    _add_demo,
]


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
    from vqedge.runtime.providers import ProviderError

    try:
        return args.func(args)
    except (ValueError, OSError, ProviderError) as e:
        print(f"vqedge {args.command}: error: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
