"""``vqedge demo``: the web demo in the browser, offline (needs the [demo] extra).

Registering it imports neither gradio nor onnxruntime; unset options keep the demo's defaults.
"""

from __future__ import annotations

import argparse

from vqedge.commands.common import EXIT_OK, require

# options passed to build_app and launch only when given, so their defaults live in the demo
APP_OPTIONS = ("max_side", "oversize", "concurrency", "queue_size", "threads", "scales_bundle")
LAUNCH_OPTIONS = ("max_file_size",)


def run(args: argparse.Namespace) -> int:
    require("demo", "gradio")
    from vqedge.demo.app import build_app, launch

    given = {k: v for k, v in vars(args).items() if v is not None}
    demo = build_app(args.bundle, **{k: given[k] for k in APP_OPTIONS if k in given})
    _, url, _ = launch(
        demo,
        host=args.host,
        port=args.port,
        prevent_thread_lock=True,
        quiet=True,  # gradio's own banner suggests share=True, which this demo never uses
        **{k: given[k] for k in LAUNCH_OPTIONS if k in given},
    )
    print(f"vqedge demo: serving at {url} (Ctrl-C stops it)", flush=True)
    demo.block_thread()
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vqedge demo``."""
    p = sub.add_parser(
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
    p.add_argument("--max-side", type=int, default=None, help="largest image side (demo's)")
    p.add_argument(
        "--oversize",
        choices=["downscale", "refuse"],
        default=None,
        help="what happens to an image with a larger side (demo's default: downscale)",
    )
    p.add_argument("--max-file-size", default=None, help="largest upload, e.g. 20mb")
    p.add_argument("--concurrency", type=int, default=None, help="requests run at once")
    p.add_argument("--queue-size", type=int, default=None, help="requests waiting")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per session")
    p.set_defaults(func=run)
