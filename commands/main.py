"""The ``vqedge`` command: one subcommand per module of this package, errors handled here.

Parsing imports nothing heavy (``vqedge --help`` and ``--version`` load neither torch nor
onnxruntime); each subcommand imports its stage when it runs. Every error is one line naming
what is wrong, with exit status 1 (bad usage or input) or 3 (some inputs of a batch failed,
each listed); ``vqedge --debug COMMAND ...`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module, metadata

from vqedge.commands.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    CommandError,
    PartialFailure,
    UsageError,
)

# one module per command, in the order `vqedge --help` lists them
COMMANDS = (
    "train",
    "export",
    "encode",
    "decode",
    "reconstruct",
    "info",
    "verify",
    "bench",
    "tokenize",
    "demo",
)


class _Parser(argparse.ArgumentParser):
    """Usage errors raise instead of exiting, so :func:`main` reports them like any other."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(self.prog, f"{message} (see {self.prog} --help)")


def _version() -> str:
    try:
        return metadata.version("vqedge")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    """The ``vqedge`` parser with every subcommand registered (nothing heavy imported)."""
    parser = _Parser(
        prog="vqedge", description="VQ image tokenizer: PyTorch training, ONNX export, runtime."
    )
    parser.add_argument("--version", action="version", version=f"vqedge {_version()}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        import_module(f"vqedge.commands.{name}").add_parser(sub)
    return parser


def _describe(e: BaseException) -> str:
    """One line: the message, with the file an OSError names."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
        if not isinstance(e, (CommandError, ValueError, OSError, RuntimeError)):
            text = f"{type(e).__name__}: {text}"
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def _library_errors() -> tuple[type[BaseException], ...]:
    """Errors of bad input or environment that the library raises (ProviderError included)."""
    errors: tuple[type[BaseException], ...] = (CommandError, ValueError, OSError)
    provider_module = sys.modules.get("vqedge.runtime.providers")
    if provider_module is not None:  # imported only if a command loaded the runtime
        errors += (provider_module.ProviderError,)
    return errors


def main(argv: list[str] | None = None) -> int:
    """Run ``vqedge`` with ``argv`` (default: the process's arguments); the exit status."""
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    prog = "vqedge"
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return EXIT_ERROR
        prog = f"vqedge {args.command}"
        return args.func(args)
    except PartialFailure as e:
        for path, reason in e.failures:
            print(f"{prog}: failed {path}: {reason}", file=sys.stderr)
        if e.note:
            print(f"{prog}: {e.note}", file=sys.stderr)
        return EXIT_PARTIAL if e.done else EXIT_ERROR
    except KeyboardInterrupt as e:
        print(f"{prog}: interrupted" + (f"; {e}" if str(e) else ""), file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (`vqedge info | head`): nothing is wrong, and nothing more can
        # be said on that pipe; point stdout at /dev/null so the exit flush is quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except UsageError as e:
        print(f"{e.prog}: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:
        if debug:
            raise
        known = isinstance(e, _library_errors())
        hint = "" if known else " (an internal error: rerun with vqedge --debug for the traceback)"
        print(f"{prog}: error: {_describe(e)}{hint}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
