"""The ``vqedge demo`` subcommand. Registering it imports neither gradio nor onnxruntime."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from vqedge.demo import (
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_FILE_SIZE,
    DEFAULT_MAX_SIDE,
    DEFAULT_QUEUE_SIZE,
)

MISSING_GRADIO = (
    "vqedge demo: this command needs gradio, which the 'demo' extra installs: "
    "pip install 'vqedge[demo]'"
)


def _cmd_demo(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        sys.exit(MISSING_GRADIO)
    from vqedge.demo.app import build_app, launch

    demo = build_app(
        args.bundle,
        max_side=args.max_side,
        oversize=args.oversize,
        concurrency=args.concurrency,
        queue_size=args.queue_size,
        threads=args.threads,
        scales_bundle=args.scales_bundle,
    )
    _, url, _ = launch(
        demo,
        host=args.host,
        port=args.port,
        prevent_thread_lock=True,
        max_file_size=args.max_file_size,
        quiet=True,  # gradio's own banner suggests share=True, which this demo never uses
    )
    ms = demo.scales_engine.name
    bundles = demo.engine.bundle_name + (f" and {ms} (next-scale section)" if ms else "")
    print(f"vqedge demo: serving {bundles} at {url} (Ctrl-C stops it)", flush=True)
    demo.block_thread()
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``vqedge demo`` on the ``vqedge`` command's subparsers."""
    p = subparsers.add_parser(
        "demo",
        help="a web demo in the browser, offline (needs [demo])",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--bundle", default=None, help="bundle folder or shipped name (default)")
    p.add_argument(
        "--scales-bundle",
        default=None,
        help="multi-scale (VAR) bundle folder or shipped name for the next-scale section "
        "(default: the shipped multi-scale bundle, when installed)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="largest image side")
    p.add_argument(
        "--oversize",
        choices=["downscale", "refuse"],
        default="downscale",
        help="what happens to an image with a larger side",
    )
    p.add_argument("--max-file-size", default=DEFAULT_MAX_FILE_SIZE, help="largest upload")
    p.add_argument(
        "--concurrency", type=int, default=DEFAULT_CONCURRENCY, help="requests run at once"
    )
    p.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE_SIZE, help="requests waiting")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per session")
    p.set_defaults(func=_cmd_demo)
