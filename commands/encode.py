"""``vqedge encode``: images -> token files (.vqt), one per image, names kept."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vqedge.commands.common import (
    EXIT_OK,
    CommandError,
    PartialFailure,
    load_tokenizer,
    progress,
    runtime_args,
    say,
)

SUFFIX = ".vqt"


def plan_outputs(inputs: list[str], out: str | Path) -> list[tuple[Path, Path]]:
    """(image, token file) for every image given or found in a folder (recursively).

    Token files keep the images' paths relative to the inputs' common parent (a folder given
    counts as its own parent), so ``a/x.png b/x.png -o out`` writes ``out/a/x.vqt`` and
    ``out/b/x.vqt``. One image with ``-o NAME.vqt`` writes that file.

    Raises
    ------
    CommandError
        An input does not exist, a folder holds no image, ``-o`` names a .vqt file for
        several images, or two images would get the same token file (both are named).
    """
    from vqedge.runtime.inputs import find_images

    found: list[tuple[Path, Path]] = []  # (image, its root)
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += [(f, p) for f in find_images(p)]
        elif p.exists():
            found.append((p, p.parent))
        else:
            raise CommandError(f"input not found: {p}")
    out = Path(out)
    if out.suffix == SUFFIX:
        if len(found) != 1:
            raise CommandError(
                f"-o {out} names one token file, but {len(found)} images were given: "
                "pass an output folder"
            )
        return [(found[0][0], out)]
    common = os.path.commonpath([os.path.abspath(root) for _, root in found])
    targets: dict[Path, Path] = {}
    plan = []
    for image, _ in found:
        rel = Path(os.path.relpath(os.path.abspath(image), common))
        target = out / rel.with_suffix(SUFFIX)
        if target in targets:
            raise CommandError(
                f"{targets[target]} and {image} would both be written to {target}: "
                "rename one or encode them separately"
            )
        targets[target] = image
        plan.append((image, target))
    return plan


def run(args: argparse.Namespace) -> int:
    from vqedge.runtime.inputs import read_image

    plan = plan_outputs(args.images, args.output)
    tok = load_tokenizer(args)
    if tok.preprocessing:
        say("encode", tok.preprocessing)
    failures, total_bytes, total_px = [], 0, 0
    for image, target in progress(plan, "encode"):
        try:
            tokens, used = tok.encode_image(read_image(image))
            target.parent.mkdir(parents=True, exist_ok=True)
            total_bytes += tok.save_tokens(target, tokens, image_size=used.shape[:2])
        except (ValueError, OSError) as e:  # one bad input is recorded; the batch goes on
            failures.append((str(image), str(e)))
            continue
        total_px += used.shape[0] * used.shape[1]
    done = len(plan) - len(failures)
    if done:
        print(
            f"encoded {done} image(s) to {args.output}: "
            f"{8 * total_bytes / total_px:.3f} bits per pixel"
        )
    if failures:
        raise PartialFailure(failures, done)
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vqedge encode``."""
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("encode", help="images -> token files (.vqt)", formatter_class=d)
    p.add_argument("images", nargs="+", help="image files or folders (recursive)")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="folder (the images' relative paths are kept), or a .vqt file for one image",
    )
    runtime_args(p)
    p.set_defaults(func=run)
