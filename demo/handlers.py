"""The demo's requests: readable errors, uploaded files deleted when no request needs them,
and memory handed back after each one.

Gradio names an upload by its content's hash, so two requests with the same file share one
path, and a request runs after its upload, once the queue reaches it. ``UploadWatcher``
(an ASGI middleware given to the app at launch) tells ``Uploads`` of every file gradio's
upload route stores, as the route's documented response lists them; a request holds its
files while it runs; a file is deleted when no running request holds it and no upload of
it awaits its request.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from vqedge.demo import EXAMPLES
from vqedge.runtime.arena import release_memory

log = logging.getLogger(__name__)
# the path of gradio's upload route (POST, multipart); its response is the stored paths
UPLOAD_ROUTE = "/gradio_api/upload"


class Uploads:
    """Upload files in use by requests; a file is deleted when the last request that needs
    it ends.

    Gradio names an upload by its content's hash, so two requests with the same file share
    one path, and a request runs after its upload, once the queue reaches it: a file is
    deleted only when no running request holds it and no upload of it awaits its request.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_use: Counter[str] = Counter()
        self._waiting: Counter[str] = Counter()  # uploaded, their requests not started yet

    def uploaded(self, paths: list[str]) -> None:
        with self._lock:
            self._waiting.update(str(p) for p in paths)

    def hold(self, paths: list[str]) -> None:
        with self._lock:
            for p in paths:
                if self._waiting[p] > 0:
                    self._waiting[p] -= 1
                self._in_use[p] += 1

    def release(self, paths: list[str], delete: bool = True) -> None:
        """Requests done with ``paths``; delete the files nothing else needs."""
        with self._lock:
            self._in_use.subtract(paths)
            for p in set(paths):
                if self._in_use[p] <= 0:
                    del self._in_use[p]
                    if delete and self._waiting[p] <= 0:
                        self._waiting.pop(p, None)
                        delete_upload(Path(p))


class UploadWatcher:
    """ASGI middleware: counts every file the upload route stores (``Uploads.uploaded``)
    before the client gets the paths, so that no request can start before its upload is
    counted. Give it to the app at launch: ``app_kwargs={"middleware": [Middleware(
    UploadWatcher, uploads=uploads)]}``."""

    def __init__(self, app: Any, uploads: Uploads) -> None:
        self.app = app
        self.uploads = uploads

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        if not scope.get("path", "").endswith(UPLOAD_ROUTE):
            return await self.app(scope, receive, send)
        status, body = [0], []

        async def watch(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            elif message["type"] == "http.response.body" and status[0] == 200:
                body.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.uploads.uploaded(_stored_paths(b"".join(body)))
            await send(message)

        await self.app(scope, receive, watch)


def _stored_paths(body: bytes) -> list[str]:
    """The paths an upload response lists (none from anything else)."""
    try:
        paths = json.loads(body)
    except ValueError:
        return []
    return [p for p in paths if isinstance(p, str)] if isinstance(paths, list) else []


def delete_upload(path: Path) -> None:
    """Delete an uploaded file and the folder gradio made for it (when left empty); the
    shipped examples are never touched."""
    if any(path.name == e.name and path.parent == e.parent for e in EXAMPLES):
        return
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty, or already gone
        path.parent.rmdir()


def readable(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Show every failure as a short message in the UI (and to API clients), never a trace;
    after every request, hand freed memory back to the system."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, OSError, RuntimeError) as e:
            raise gr.Error(str(e)) from None
        except Exception as e:
            log.exception("vqedge demo: unexpected error")
            raise gr.Error(f"unexpected error ({type(e).__name__}); see the server log") from None
        finally:
            release_memory()

    return wrapper


def request(
    fn: Callable[..., Any], upload_args: tuple[int, ...], uploads: Uploads, keep_on_success: bool
) -> Callable[..., Any]:
    """``fn`` as a request handler: readable errors, and its uploaded files (the positional
    arguments ``upload_args``) deleted when it ends; with ``keep_on_success`` only when it
    fails (the page shows its upload and may run it again)."""

    @readable
    @functools.wraps(fn)
    def handler(*args):
        paths = [args[i] for i in upload_args if isinstance(args[i], str)]
        uploads.hold(paths)
        ok = False
        try:
            out = fn(*args)
            ok = True
            return out
        finally:
            uploads.release(paths, delete=not (ok and keep_on_success))

    return handler
