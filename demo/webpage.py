"""The in-browser page (web/demo) and its bundles, served on one local address (stdlib only).

The page runs the bundles itself, with onnxruntime-web (the vqedge-web package in web/); this
server only hands out files. Every answer carries the headers that make the page cross-origin
isolated, which WASM threads need: ``Cross-Origin-Opener-Policy: same-origin`` and
``Cross-Origin-Embedder-Policy: require-corp``.

Routes: ``/`` (the page), ``/dist/...`` (the built package), ``/bundles.json`` (the bundles
served, in order), ``/bundles/NAME/...`` (each bundle folder), ``/examples.json`` and
``/examples/...`` (the held-out photos the Gradio demo offers too).
"""

from __future__ import annotations

import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

# where `vqedge web` serves unless told otherwise
DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080
WEB_PAGE_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}/"
# web/ in a source checkout or an editable install; the wheel does not carry it
WEB_DIR = Path(__file__).resolve().parents[1] / "web"
# the held-out photos (demo/examples), offered by the page as the Gradio demo offers them
EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# the headers of a cross-origin isolated page (SharedArrayBuffer, so WASM threads)
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
MIME = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".wasm": "application/wasm",
    ".json": "application/json",
    ".onnx": "application/octet-stream",
    ".bin": "application/octet-stream",
    ".npy": "application/octet-stream",
    ".vqt": "application/octet-stream",
    ".npz": "application/octet-stream",
    ".jpg": "image/jpeg",
    ".png": "image/png",
}


class WebPageError(RuntimeError):
    """The page cannot be served (its package is not built, or not installed)."""


def web_files(web_dir: Path = WEB_DIR) -> tuple[Path, Path]:
    """(page folder, built package folder), checked to exist.

    Raises
    ------
    WebPageError
        No web/ beside the package (an installed wheel), or web/dist not built yet.
    """
    page, dist = web_dir / "demo", web_dir / "dist"
    if not (page / "index.html").is_file():
        raise WebPageError(
            f"the in-browser page is not installed ({page} is missing): `vqedge web` runs from "
            "a source checkout or an editable install (pip install -e .), not from a wheel"
        )
    if not (dist / "vqedge.js").is_file():
        raise WebPageError(
            f"the vqedge-web package is not built ({dist / 'vqedge.js'} is missing): run "
            "`make setup`, or `npm ci && npm run build` in web/"
        )
    return page, dist


class _Handler(SimpleHTTPRequestHandler):
    """Files from a fixed table of folders, with the isolation headers on every answer."""

    def __init__(self, *args, mounts: dict[str, Path], lists: dict[str, bytes], **kwargs) -> None:
        self.mounts = mounts
        self.lists = lists
        super().__init__(*args, **kwargs)

    def end_headers(self) -> None:
        for k, v in ISOLATION_HEADERS.items():
            self.send_header(k, v)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def guess_type(self, path) -> str:
        return MIME.get(Path(str(path)).suffix) or super().guess_type(path)

    def translate_path(self, path: str) -> str:
        rel = unquote(urlsplit(path).path).lstrip("/")
        for prefix, folder in self.mounts.items():
            if prefix == "" or rel == prefix or rel.startswith(prefix + "/"):
                target = (folder / rel[len(prefix) :].lstrip("/")).resolve()
                # nothing outside the mounted folder, whatever the path says
                if target == folder or folder in target.parents:
                    return str(target)
        return str(Path("/nonexistent") / rel)

    def do_GET(self) -> None:
        body = self.lists.get(urlsplit(self.path).path)
        if body is not None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass


def serve(
    bundles: dict[str, Path],
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    web_dir: Path = WEB_DIR,
) -> ThreadingHTTPServer:
    """Start serving the page and ``bundles`` (name -> folder) in a background thread.

    Returns the running server: ``server.server_address`` is where, ``server.shutdown()``
    stops it. Port 0 picks a free port.

    Raises
    ------
    WebPageError
        The page or its built package is missing.
    """
    page, dist = web_files(web_dir)
    mounts = {"dist": dist.resolve()}
    index = []
    for name, folder in bundles.items():
        manifest = json.loads((Path(folder) / "manifest.json").read_text())
        mounts[f"bundles/{name}"] = Path(folder).resolve()
        index.append({"name": name, "url": f"bundles/{name}/", "kind": manifest.get("kind")})
    examples = sorted(p.name for p in EXAMPLES_DIR.glob("*.[jp][pn]g"))
    if examples:
        mounts["examples"] = EXAMPLES_DIR.resolve()
    mounts[""] = page.resolve()  # last: the page's own files
    lists = {
        "/bundles.json": json.dumps(index).encode(),
        "/examples.json": json.dumps(examples).encode(),
    }
    handler = partial(_Handler, mounts=mounts, lists=lists)
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
