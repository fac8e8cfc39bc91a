"""Run an exported bundle in the browser package's Node runtime (web/src on onnxruntime-web,
WASM): serve the bundle over HTTP, load it, encode one image, and return what came back."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
INDEX = json.dumps((REPO / "web" / "src" / "index.js").as_uri())

SCRIPT = """
import http from "node:http";
import {{ readFileSync }} from "node:fs";
import {{ join, normalize }} from "node:path";
import * as vqedge from {index};
{imports}
const [root, rgba, width, height] = process.argv.slice(2);
const server = http.createServer((req, res) => {{
  const path = decodeURIComponent(new URL(req.url, "http://x").pathname);
  const rel = normalize(path).replace(/^\\/+/, "");
  try {{
    res.writeHead(200).end(readFileSync(join(root, rel)));
  }} catch {{
    res.writeHead(404).end();
  }}
}});
await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
const url = `http://127.0.0.1:${{server.address().port}}/`;
const tok = await vqedge.load(url, {{ backend: "wasm", worker: false }});
const img = {{ data: new Uint8ClampedArray(readFileSync(rgba)), width: +width, height: +height }};
const enc = await tok.encode(img);
const extra = {extra};
console.log(JSON.stringify({{ kind: tok.kind, cls: tok.constructor.name,
  hw: [enc.height, enc.width], indices: Array.from(enc.indices), extra }}));
server.close();
"""


def encode_in_node(
    bundle: Path, img: np.ndarray, work: Path, imports: str = "", extra: str = "null"
) -> dict:
    """Encode uint8 ``img`` [H, W, 3] with ``bundle`` in Node -> {kind, cls, hw, indices,
    extra}; ``imports`` are JS import lines run first (a kind's browser module), ``extra`` a
    JS expression over ``tok``, ``enc`` and ``vqedge`` whose JSON value comes back."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: make setup installs Debian's nodejs")
    rgba = np.concatenate([img, np.full((*img.shape[:2], 1), 255, np.uint8)], axis=-1)
    (work / "img.rgba").write_bytes(np.ascontiguousarray(rgba).tobytes())
    script = work / "encode.mjs"
    script.write_text(SCRIPT.format(index=INDEX, imports=imports, extra=extra))
    args = [str(bundle), str(work / "img.rgba"), str(img.shape[1]), str(img.shape[0])]
    r = subprocess.run([node, str(script), *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])
