"""vqedge in the browser: ms per 256x256 encode, decode and round trip in Debian's chromium,
per backend, precision and thread count, beside the Python runtime's CPU provider, in one run.

    python -m vqedge.benchmarks.web [--bundle vqvae-f4] [--repeats 5] [--webgpu-precisions ...]

Writes ``benchmarks/results/web.json`` and ``web.md``. The page is the one ``vqedge web``
serves (cross-origin isolated, so WASM threads run); each configuration gets a fresh browser
context, so its load is cold: the time from ``load()`` to a ready tokenizer (worker start,
onnxruntime-web's WASM compile, bundle download, sha256 checks, session creation) and the
bytes the context downloaded, split into the runtime (onnxruntime-web), the bundle files and
the page. Then one warm-up and ``--repeats`` timed passes: ``encode``, ``decode`` of its
tokens, and ``reconstruct`` (the round trip, its own call). Medians are reported. Tokens are
compared with the Python runtime's at the same precision on the same image.

WebGPU runs where headless chromium has an adapter: on a machine without a GPU that is
SwiftShader, which runs the shaders on the CPU, so its figures are not a GPU's.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.benchmarks.machine import describe, finish, provenance, provenance_md, versions
from vqedge.benchmarks.timing import synthetic_images
from vqedge.demo.webpage import WEB_DIR, serve
from vqedge.runtime import load
from vqedge.runtime.session import bundle_path

RESULTS = Path(__file__).parent / "results"
SIDE = 256
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking"]
# WebGPU needs chromium's GPU process; SwiftShader gives an adapter where there is no GPU
WEBGPU_ARGS = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"]
PAGE_TIMEOUT_MS = 30 * 60_000
# what the page runs for one configuration: a cold load, a warm-up, then timed passes
BENCH_JS = """
async ([url, opts, b64, side, repeats]) => {
  const bin = atob(b64); const px = new Uint8ClampedArray(bin.length);
  for (let i = 0; i < bin.length; i++) px[i] = bin.charCodeAt(i);
  const img = new ImageData(px, side, side);
  const t0 = performance.now();
  const tok = await window.vqedge.load(url, opts);
  const loadMs = performance.now() - t0;
  const times = {encode: [], decode: [], roundtrip: []};
  let enc;
  for (let i = 0; i <= repeats; i++) {
    const a = performance.now(); enc = await tok.encode(img);
    const b = performance.now(); await tok.decode(enc.indices, enc.height, enc.width);
    const c = performance.now(); await tok.reconstruct(img);
    const d = performance.now();
    if (i > 0) { times.encode.push(b - a); times.decode.push(c - b); times.roundtrip.push(d - c); }
  }
  const out = {loadMs, workerLoadMs: tok.loadMs, bundleBytes: tok.bytesDownloaded,
               backend: tok.backend, precision: tok.precision, threads: tok.threads,
               indices: Array.from(enc.indices), times};
  tok.dispose();
  return out;
}
"""


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _ort_web_version() -> str:
    pkg = WEB_DIR / "node_modules" / "onnxruntime-web" / "package.json"
    return json.loads(pkg.read_text())["version"] if pkg.is_file() else "unknown"


def download_sizes(bundle: Path) -> list[dict[str, Any]]:
    """What a page downloads per precision and backend: the bundle files (the graphs it runs,
    the weights files they read, the manifest) and onnxruntime-web's runtime for the backend."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    runtime = {
        "wasm": ["ort.wasm.bundle.min.mjs", "ort-wasm-simd-threaded.wasm"],
        "webgpu": ["ort.webgpu.bundle.min.mjs", "ort-wasm-simd-threaded.asyncify.wasm"],
    }
    package = sum((WEB_DIR / "dist" / f).stat().st_size for f in ("vqedge.js", "vqedge.worker.js"))
    rows = []
    for precision, v in manifest["variants"].items():
        for backend, ort_files in runtime.items():
            graphs = {g: s["file"] for g, s in v["graphs"].items()}
            if backend == "wasm":
                graphs |= {g: s["file"] for g, s in v.get("cpu_graphs", {}).items()}
            files = {*graphs.values(), *v.get("weights", []), "manifest.json"}
            model = sum((bundle / f).stat().st_size for f in files)
            ort = sum((WEB_DIR / "dist" / f).stat().st_size for f in ort_files)
            rows.append(
                {
                    "precision": precision,
                    "backend": backend,
                    "bundle_bytes": model,
                    "weights_bytes": sum((bundle / f).stat().st_size for f in v["weights"]),
                    "runtime_bytes": ort,
                    "package_bytes": package,
                    "total_bytes": model + ort + package,
                }
            )
    return rows


def python_cpu(bundle: str, img: np.ndarray, precision: str, threads: int, repeats: int) -> dict:
    """The Python runtime on onnxruntime's CPU provider, timed as the page is."""
    try:
        tok = load(bundle, providers="cpu", precision=precision, threads=threads)
    except Exception as e:  # noqa: BLE001 (a precision the CPU provider cannot run is a result)
        return {"error": f"{type(e).__name__}: {e}"}
    times: dict[str, list[float]] = {"encode": [], "decode": [], "roundtrip": []}
    idx = None
    for i in range(repeats + 1):
        a = time.perf_counter()
        idx = tok.encode(img)
        b = time.perf_counter()
        tok.decode(idx)
        c = time.perf_counter()
        tok.reconstruct(img)
        d = time.perf_counter()
        if i:
            times["encode"].append((b - a) * 1e3)
            times["decode"].append((c - b) * 1e3)
            times["roundtrip"].append((d - c) * 1e3)
    return {"ms": {k: _median(v) for k, v in times.items()}, "indices": idx}


def browser_run(browser, url: str, page_url: str, opts: dict, img: np.ndarray, repeats: int):
    """One configuration in a fresh context: its figures and the bytes it downloaded."""
    context = browser.new_context()
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    sizes: dict[str, int] = {}

    def finished(request) -> None:
        # a request without a body (or already gone) counts nothing
        with contextlib.suppress(Exception):
            sizes[request.url] = request.sizes()["responseBodySize"]

    page = context.new_page()
    page.on("requestfinished", finished)
    page.goto(page_url + "?autoload=0")
    page.wait_for_function("window.vqedge !== undefined")
    rgba = np.concatenate([img, np.full((*img.shape[:2], 1), 255, np.uint8)], axis=2)
    b64 = base64.b64encode(rgba.tobytes()).decode()
    try:
        res = page.evaluate(BENCH_JS, [url, opts, b64, img.shape[0], repeats])
    except Exception as e:  # noqa: BLE001 (a configuration that does not run is a result)
        context.close()
        return {"error": str(e).splitlines()[0][:300]}
    context.close()
    by_kind = {"runtime": 0, "bundle": 0, "other": 0}
    for u, n in sizes.items():
        kind = "bundle" if "/bundles/" in u else "runtime" if "/dist/" in u else "other"
        by_kind[kind] += n
    res["downloaded"] = by_kind
    res["ms"] = {k: _median(v) for k, v in res.pop("times").items()}
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="vqvae-f4", help="single-scale bundle name or folder")
    ap.add_argument("--repeats", type=int, default=5, help="timed passes after one warm-up")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8", "fp16"])
    ap.add_argument(
        "--webgpu-precisions",
        nargs="*",
        default=["fp32", "int8", "fp16"],
        help="precisions to run on WebGPU (none: skip WebGPU)",
    )
    ap.add_argument("--webgpu-repeats", type=int, default=1)
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    folder = bundle_path(args.bundle)
    img = synthetic_images(1, SIDE, seed=0)[0]
    srv = serve({folder.name: folder}, port=0)
    page_url = f"http://127.0.0.1:{srv.server_address[1]}/"
    url = f"bundles/{folder.name}/"
    rows: list[dict[str, Any]] = []
    started = time.time()
    prov = provenance("vqedge.benchmarks.web", argv)  # before anything is written
    with sync_playwright() as p:
        chromium = shutil.which("chromium")
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS + WEBGPU_ARGS)
        chromium_version = browser.version
        gpu_page = browser.new_page()
        gpu_page.goto(page_url + "?autoload=0")
        gpu_page.wait_for_function("window.vqedge !== undefined")
        webgpu = gpu_page.evaluate("async () => await window.vqedge.webgpuSupport()")
        gpu_page.close()
        configs = [("wasm", prec, t) for prec in args.precisions for t in args.threads]
        if webgpu["adapter"]:
            configs += [("webgpu", prec, None) for prec in args.webgpu_precisions]
        for backend, precision, threads in configs:
            opts = {"backend": backend, "precision": precision}
            if threads:
                opts["threads"] = threads
            reps = args.repeats if backend == "wasm" else args.webgpu_repeats
            print(f"browser {backend} {precision} threads={threads} ...", flush=True)
            res = browser_run(browser, url, page_url, opts, img, reps)
            if backend == "webgpu":  # WASM threads do not apply
                res.pop("threads", None)
            rows.append({"where": "browser", "backend": backend, "precision": precision,
                         "threads": threads, **res})  # fmt: skip
        browser.close()
    srv.shutdown()
    python_idx = {}
    for precision in args.precisions:
        for threads in args.threads:
            print(f"python cpu {precision} threads={threads} ...", flush=True)
            res = python_cpu(folder.name, img, precision, threads, args.repeats)
            if "indices" in res:
                python_idx[precision] = res.pop("indices")
            rows.append({"where": "python", "backend": "onnxruntime CPU provider",
                         "precision": precision, "threads": threads, **res})  # fmt: skip
    for r in rows:
        idx = r.pop("indices", None)
        ref = python_idx.get(r["precision"])
        if idx is not None and ref is not None:
            r["tokens_equal_python"] = float(np.mean(np.array(idx) == ref.ravel()))
    report = {
        "command": "python -m vqedge.benchmarks.web " + " ".join(argv or sys.argv[1:]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "bundle": folder.name,
        "image": f"{SIDE}x{SIDE} synthetic (benchmarks.timing.synthetic_images, seed 0)",
        "chromium": chromium_version,
        "onnxruntime_web": _ort_web_version(),
        "webgpu": webgpu,
        "seconds": round(time.time() - started, 1),
        "machine": {k: v for k, v in describe(threads=2).items() if k != "flags"},
        "versions": versions(),
        "downloads": download_sizes(folder),
        "rows": rows,
        "provenance": finish(prov),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "web.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "web.md").write_text(markdown(report))
    print((RESULTS / "web.md").read_text())
    return 0


def _ms(r: dict, key: str) -> str:
    return f"{r['ms'][key]:.0f}" if "ms" in r else "—"


def markdown(rep: dict) -> str:
    m = rep["machine"]
    gpu = rep["webgpu"]
    gpu_text = (
        f"adapter: yes (shader-f16: {'yes' if gpu['f16'] else 'no'})"
        if gpu["adapter"]
        else f"no adapter ({gpu.get('reason')})"
    )
    lines = [
        f"# vqedge in the browser: {rep['bundle']}, {rep['image']}",
        "",
        *provenance_md(rep["provenance"]),
        f"- command: `{rep['command'].strip()}`; commit {rep['commit']}; {rep['date']}; "
        f"{rep['seconds']} s",
        f"- browser: Debian chromium {rep['chromium']}, headless; onnxruntime-web "
        f"{rep['onnxruntime_web']}; page cross-origin isolated (COOP/COEP), sessions in a "
        "Web Worker; WebGPU " + gpu_text,
        f"- machine: {m['cpu_model']}, {m['logical_cpus']} logical CPUs "
        f"({m['physical_cores']} physical), {m['memory_gib']} GiB, flags "
        f"{', '.join(m['key_flags'])}; hypervisor: {m['hypervisor']}",
        f"- python: onnxruntime {rep['versions'].get('onnxruntime')}, numpy "
        f"{rep['versions'].get('numpy')}",
        "- **noisy**: the machine was shared with other jobs during the run (2 cores, several "
        "engineers); one run, medians of the timed passes; read ratios, not absolutes.",
        "- WebGPU on SwiftShader runs the shaders on the CPU: those rows show that the "
        "graphs run on the WebGPU backend, not a GPU's speed.",
        "",
        "## ms per image (median), cold load and bytes",
        "",
        "| where | backend | precision | threads | encode | decode | round trip | cold load ms |"
        " downloaded MB (runtime + bundle) | tokens = Python's |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['where']} | {r['backend']} | {r['precision']} | {r['threads'] or '—'} | "
                f"does not run: {r['error']} | | | | | |"
            )
            continue
        load_ms = f"{r['loadMs']:.0f}" if "loadMs" in r else "—"
        dl = r.get("downloaded")
        mb = f"{dl['runtime'] / 1e6:.1f} + {dl['bundle'] / 1e6:.1f}" if dl else "—"
        eq = r.get("tokens_equal_python")
        lines.append(
            f"| {r['where']} | {r['backend']} | {r['precision']} | {r['threads'] or '—'} | "
            f"{_ms(r, 'encode')} | {_ms(r, 'decode')} | {_ms(r, 'roundtrip')} | {load_ms} | "
            f"{mb} | {'—' if eq is None else f'{eq:.4f}'} |"
        )
    lines += [
        "",
        "## What a page downloads per precision (bytes, from the files)",
        "",
        "bundle: the manifest, the graphs that backend runs and the weights files they read; "
        "runtime: onnxruntime-web's build for the backend (its .mjs and .wasm); package: "
        "vqedge.js and its worker. fp16 graphs read the fp32 weights and cast them at load.",
        "",
        "| precision | backend | bundle | of which weights | runtime | package | total |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in rep["downloads"]:
        lines.append(
            f"| {d['precision']} | {d['backend']} | {d['bundle_bytes']:,} | "
            f"{d['weights_bytes']:,} | {d['runtime_bytes']:,} | {d['package_bytes']:,} | "
            f"{d['total_bytes']:,} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
