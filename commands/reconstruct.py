"""``vqedge reconstruct``: image -> tokens -> image, with the PSNR and bits per pixel."""

from __future__ import annotations

import argparse

from vqedge.commands.common import EXIT_OK, load_tokenizer, runtime_args, say, write_image


def run(args: argparse.Namespace) -> int:
    from vqedge.runtime.inputs import read_image
    from vqedge.runtime.metrics import psnr

    tok = load_tokenizer(args)
    if tok.preprocessing:
        say("reconstruct", tok.preprocessing)
    recon, tokens, used = tok.reconstruct_image(read_image(args.image))
    write_image(args.output, recon[0])
    bpp = tok.config.bits_per_token * tokens.size / (used.shape[0] * used.shape[1])
    provider = tok.info["providers_in_use"]["encoder"][0]
    print(
        f"{args.image} -> {args.output}: PSNR {psnr(recon[0], used):.2f} dB, "
        f"{bpp:.3f} bits per pixel ({tok.describe_tokens(tokens)}, K={tok.codebook_size}, "
        f"{tok.plan} on {provider})"
    )
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vqedge reconstruct``."""
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("reconstruct", help="image -> tokens -> image; PSNR", formatter_class=d)
    p.add_argument("image", help="an image file")
    p.add_argument("-o", "--output", required=True, help="image file to write (PNG)")
    runtime_args(p)
    p.set_defaults(func=run)
