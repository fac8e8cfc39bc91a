"""``vqedge decode``: a token file -> an image."""

from __future__ import annotations

import argparse

from vqedge.commands.common import EXIT_OK, CommandError, load_tokenizer, runtime_args, write_image


def run(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args)
    tf = tok.load_tokens(args.tokens, force=args.force)
    images = tf.scales[0].shape[0]
    if images != 1:
        raise CommandError(f"{args.tokens} holds {images} images; decode writes one")
    img = tok.decode_file(tf)
    write_image(args.output, img[0])
    print(f"decoded {args.tokens} to {args.output} ({img.shape[2]}x{img.shape[1]})")
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vqedge decode``."""
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("decode", help="a token file -> image", formatter_class=d)
    p.add_argument("tokens", help="a .vqt token file")
    p.add_argument("-o", "--output", required=True, help="image file to write (PNG)")
    p.add_argument("--force", action="store_true", help="accept tokens of another bundle")
    runtime_args(p)
    p.set_defaults(func=run)
