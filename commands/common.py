"""What every ``vqedge`` command shares: exit codes, the runtime options, extras, errors.

Imports nothing heavy: ``vqedge --help`` parses every command's arguments with this alone.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 3
# `vqedge verify`: a precision does not give the bundle's tokens on this device
EXIT_DOES_NOT_HOLD = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a run stopped by Ctrl-C


class CommandError(Exception):
    """A bad input or usage: ``vqedge`` prints the message as one line and exits with 1."""


class UsageError(CommandError):
    """Bad command-line usage; ``prog`` is the (sub)command whose arguments were wrong."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class MissingExtra(CommandError):
    """An optional dependency is not installed; the message names the extra to install."""


class PartialFailure(Exception):
    """Some inputs of a batch failed (each recorded); the others were written.

    Parameters
    ----------
    failures : sequence of (str, str)
        (input, reason) of every failed input.
    done : int
        Inputs that were processed.
    note : str, optional
        A last line, e.g. where the complete list is.
    """

    def __init__(
        self, failures: Sequence[tuple[str, str]], done: int, note: str | None = None
    ) -> None:
        super().__init__(f"{len(failures)} input(s) failed, {done} done")
        self.failures = list(failures)
        self.done = done
        self.note = note


def require(extra: str, *modules: str) -> None:
    """Raise :class:`MissingExtra` naming ``extra`` when one of ``modules`` is not installed."""
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise MissingExtra(
            f"this command needs {', '.join(missing)}, which the '{extra}' extra installs: "
            f"pip install 'vqedge[{extra}]'"
        )


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def runtime_args(p: argparse.ArgumentParser) -> None:
    """The options every command that loads a bundle shares."""
    p.add_argument("--bundle", default=None, help="bundle folder or shipped name (default)")
    precision_args(p)
    p.add_argument("--providers", default="auto", help="auto, cpu, cuda, openvino, or a name")
    p.add_argument("--threads", type=positive_int, default=None, help="intra-op threads")
    p.add_argument(
        "--no-verify", dest="verify", action="store_false",
        help="do not check the plan on the bundle's check set (a bundle without one loads)",
    )  # fmt: skip
    encoder_tier_arg(p)


def encoder_tier_arg(p: argparse.ArgumentParser) -> None:
    """``--encoder-tier``: the fidelity tier the encoder is held to (vqedge.runtime.fidelity)."""
    from vqedge.runtime import fidelity as f

    p.add_argument(
        "--encoder-tier", choices=f.TIERS, default=f.TOKENS,
        help=f"tokens: at least {f.TOKENS_MIN_AGREEMENT * 100:.0f}%% of fp32's tokens; pixels: "
        "knowingly accept other tokens (the round trip's PSNR within "
        f"{f.PIXELS_ENCODER_MAX_DROP_DB} dB of fp32's)",
    )  # fmt: skip


def precision_args(p: argparse.ArgumentParser) -> None:
    """``--precision``: one for every stage, ``auto``, or ``stage=precision`` (repeatable)."""
    # checked by the runtime (vqedge.runtime.plan), which names the choices
    p.add_argument(
        "--precision", action="append", default=None, metavar="PRECISION",
        help="fp32 (default), fp16, int8, bf16 (OpenVINO) or auto for every stage, or per "
        "stage, repeated: --precision encoder=fp32 --precision decoder=int8",
    )  # fmt: skip


def precision_plan(args: argparse.Namespace) -> Any:
    """What ``load(precision=...)`` takes, from ``--precision``."""
    from vqedge.runtime.plan import parse_cli_precision

    return parse_cli_precision(args.precision)


def load_tokenizer(args: argparse.Namespace) -> Any:
    """The tokenizer of ``args.bundle`` with the runtime options of :func:`runtime_args`."""
    from vqedge.runtime import load

    return load(
        args.bundle,
        providers=args.providers,
        precision=precision_plan(args),
        threads=args.threads,
        verify=args.verify,
        encoder_tier=args.encoder_tier,
    )


def say(command: str, message: str) -> None:
    """A note on stderr, prefixed with the command."""
    import sys

    print(f"vqedge {command}: {message}", file=sys.stderr)


def progress(items: list, desc: str) -> Iterable:
    """tqdm when it is installed and there are several items; the plain list otherwise."""
    if len(items) < 2:
        return items
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, unit="img")


def write_image(path: str | Path, image: Any) -> None:
    """Write a uint8 [H, W, 3] image, its format from the suffix (PNG unless JPEG/WebP/BMP/TIFF
    is named), creating the folder, atomically: a crash never leaves a half-written image."""
    import io

    from PIL import Image

    from vqedge.runtime.atomic import write_bytes_atomic

    path = Path(path)
    formats = {".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF"}
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=formats.get(path.suffix.lower(), "PNG"))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.getvalue())
