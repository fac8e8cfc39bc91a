"""``vqedge web``: the in-browser page, which runs bundles on the visitor's own device.

Parsing imports nothing heavy: the server (vqedge.demo.webpage) is the standard library's.
"""

from __future__ import annotations

import argparse
import time

from vqedge.commands.common import EXIT_OK, CommandError
from vqedge.demo.webpage import DEFAULT_HOST, DEFAULT_PORT

# bundles served when none is named: the shipped single-scale and multi-scale ones
DEFAULT_WEB_BUNDLES = ("vqvae-f4", "vqvae-ms-f8")


def run(args: argparse.Namespace) -> int:
    from vqedge.demo.webpage import WebPageError, serve
    from vqedge.runtime.session import bundle_path, list_bundles

    names = args.bundle or [b for b in DEFAULT_WEB_BUNDLES if b in list_bundles()]
    bundles = {}
    for b in names:
        folder = bundle_path(b)
        bundles[folder.name] = folder
    try:
        server = serve(bundles, host=args.host, port=args.port)
    except WebPageError as e:
        raise CommandError(str(e)) from None
    host, port = server.server_address[:2]
    print(
        f"vqedge web: serving the page and {', '.join(bundles)} at http://{host}:{port}/ "
        "(Ctrl-C stops it)",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    finally:
        server.shutdown()
    return EXIT_OK


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vqedge web``."""
    p = sub.add_parser(
        "web",
        help="a page that tokenizes in the browser, on the visitor's device (onnxruntime-web)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--bundle",
        action="append",
        default=None,
        help="bundle folder or shipped name; repeat for several (default: "
        f"{', '.join(DEFAULT_WEB_BUNDLES)})",
    )
    p.add_argument("--host", default=DEFAULT_HOST, help="address to serve on")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.set_defaults(func=run)
