"""vqedge in the browser against the Python runtime: ms per 256x256 encode, decode and round
trip in Debian's chromium and on onnxruntime's CPU provider, interleaved in rounds, at 1 and N
threads, for fp32 and a per-stage precision plan; the bytes a first and a second visit download.

    python -m vqedge.benchmarks.web [--bundle vqvae-f4] [--rounds 2] [--repeats 3]
        [--threads 1 N] [--plans fp32 '{"encoder": "fp32", "decoder": "int8"}'] [--webgpu]

Writes ``benchmarks/results/web.json`` and ``web.md`` with the provenance every harness
writes (``benchmarks.machine.provenance``: commit and dirty flag, command, CPU flags, load
average). The page is the one ``vqedge web`` serves (cross-origin isolated, so WASM threads
run). Each round runs every configuration in the browser and then in Python, so that both
sides see the same machine: the browser in a fresh context (the first visit: a cold load,
downloading the bundle files it runs), then the page again in that context (the second
visit: the files from Cache Storage, the verdict from IndexedDB), then one warm-up and
``--repeats`` timed passes. Medians over every round's passes are reported, with the share of
the browser's round trip spent inside onnxruntime-web's sessions (the rest is JavaScript:
pixels, the lookup's slicing, transfers to the worker). Loads are lenient (strict: false): a
stage whose check does not hold here runs fp32, and the row says what ran.

WebGPU (``--webgpu``) runs where headless chromium has an adapter: on a machine without a
GPU that is SwiftShader, which runs the shaders on the CPU, so its figures are not a GPU's.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.benchmarks.machine import finish, provenance, provenance_md
from vqedge.benchmarks.timing import synthetic_images
from vqedge.demo.webpage import WEB_DIR, serve
from vqedge.runtime import load
from vqedge.runtime.atomic import write_bytes_atomic
from vqedge.runtime.plan import PrecisionPlan
from vqedge.runtime.session import bundle_path

RESULTS = Path(__file__).parent / "results"
SIDE = 256
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking"]
# WebGPU needs chromium's GPU process; SwiftShader gives an adapter where there is no GPU
WEBGPU_ARGS = ["--enable-unsafe-webgpu", "--use-webgpu-adapter=swiftshader"]
PAGE_TIMEOUT_MS = 30 * 60_000
# one visit: load (timed), then, when asked, a warm-up and timed passes
BENCH_JS = """
async ([url, opts, b64, side, repeats]) => {
  const bin = atob(b64); const px = new Uint8ClampedArray(bin.length);
  for (let i = 0; i < bin.length; i++) px[i] = bin.charCodeAt(i);
  const img = new ImageData(px, side, side);
  const t0 = performance.now();
  const tok = await window.vqedge.load(url, opts);
  const loadMs = performance.now() - t0;
  const times = {encode: [], decode: [], roundtrip: []};
  let enc = null, sessionMs = 0, totalMs = 0;
  for (let i = 0; repeats > 0 && i <= repeats; i++) {
    const a = performance.now(); enc = await tok.encode(img);
    const b = performance.now(); await tok.decode(enc.indices, enc.height, enc.width);
    const c = performance.now(); const s0 = tok.sessionMs; await tok.reconstruct(img);
    const d = performance.now();
    if (i > 0) {
      times.encode.push(b - a); times.decode.push(c - b); times.roundtrip.push(d - c);
      sessionMs += tok.sessionMs - s0; totalMs += d - c;
    }
  }
  const v = tok.verification;
  const out = {loadMs, bundleBytes: tok.bytesDownloaded, fromCacheBytes: tok.bytesFromCache,
               backend: tok.backend, ran: tok.precision, threads: tok.threads,
               holds: v ? v.holds : null, verdictKept: Boolean(v && v.cached),
               sessionShare: totalMs ? sessionMs / totalMs : null,
               indices: enc ? Array.from(enc.indices) : null, times};
  tok.dispose();
  return out;
}
"""


def _median(xs: list[float]) -> float:
    return float(statistics.median(xs))


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
            graphs = dict(v["graphs"])
            if backend == "wasm":
                graphs |= v.get("cpu_graphs", {})
            # each graph's own weights files where the bundle lists them (what the page fetches)
            weights = {w for g in graphs.values() for w in g.get("weights", v["weights"])}
            files = {*(g["file"] for g in graphs.values()), *weights, "manifest.json"}
            model = sum((bundle / f).stat().st_size for f in files)
            ort = sum((WEB_DIR / "dist" / f).stat().st_size for f in ort_files)
            rows.append(
                {
                    "precision": precision,
                    "backend": backend,
                    "bundle_bytes": model,
                    "weights_bytes": sum((bundle / f).stat().st_size for f in weights),
                    "runtime_bytes": ort,
                    "package_bytes": package,
                    "total_bytes": model + ort + package,
                }
            )
    return rows


def _plan(text: str) -> str | dict[str, str]:
    return json.loads(text) if text.strip().startswith("{") else text


def python_cpu(bundle: str, img: np.ndarray, plan: Any, threads: int, repeats: int) -> dict:
    """The Python runtime on onnxruntime's CPU provider, timed as the page is."""
    try:
        # the benchmark measures each configuration's fidelity itself (benchmarks/fidelity.py)
        tok = load(bundle, providers="cpu", precision=plan, threads=threads, verify=False)
    except Exception as e:  # noqa: BLE001 (a plan this runtime cannot run is a result)
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
    return {"times": times, "indices": idx, "ran": tok.plan.describe()}


def _visit(context, page_url: str, js_args: list) -> dict:
    """One page visit in ``context``: BENCH_JS's figures and the bundle bytes it fetched."""
    sizes: dict[str, int] = {}

    def finished(request) -> None:
        # a request without a body (or already gone) counts nothing
        with contextlib.suppress(Exception):
            sizes[request.url] = request.sizes()["responseBodySize"]

    page = context.new_page()
    page.on("requestfinished", finished)
    page.goto(page_url + "?autoload=0")
    page.wait_for_function("window.vqedge !== undefined")
    try:
        res = page.evaluate(BENCH_JS, js_args)
    finally:
        page.close()
    res["fetched_bundle_bytes"] = sum(n for u, n in sizes.items() if "/bundles/" in u)
    res["fetched_runtime_bytes"] = sum(n for u, n in sizes.items() if "/dist/" in u)
    return res


def browser_round(browser, url: str, page_url: str, opts: dict, img: np.ndarray, repeats: int):
    """A first visit (cold: every bundle file downloaded) and a second visit (the cache) in
    one fresh context; the second is timed."""
    context = browser.new_context()
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    rgba = np.concatenate([img, np.full((*img.shape[:2], 1), 255, np.uint8)], axis=2)
    b64 = base64.b64encode(rgba.tobytes()).decode()
    try:
        first = _visit(context, page_url, [url, opts, b64, img.shape[0], 0])
        second = _visit(context, page_url, [url, opts, b64, img.shape[0], repeats])
    except Exception as e:  # noqa: BLE001 (a configuration that does not run is a result)
        return {"error": str(e).splitlines()[0][:300]}
    finally:
        context.close()
    visits = {
        "first": {k: first[k] for k in ("loadMs", "fetched_bundle_bytes", "fetched_runtime_bytes")},
        "second": {k: second[k] for k in ("loadMs", "fetched_bundle_bytes", "fromCacheBytes")},
    }
    keep = ("backend", "ran", "threads", "holds", "verdictKept", "sessionShare", "indices", "times")
    return {**{k: second[k] for k in keep}, "visits": visits}


def _merge(acc: dict | None, res: dict) -> dict:
    """Rounds of one configuration -> one row: every round's timed passes together."""
    if acc is None or "error" in acc:
        return res
    if "error" in res:
        return acc
    for k, v in res["times"].items():
        acc["times"][k] += v
    if res.get("sessionShare") is not None:
        acc.setdefault("sessionShares", [acc.get("sessionShare")]).append(res["sessionShare"])
    return acc


def _finish(row: dict) -> dict:
    if "times" in row:
        row["passes"] = len(row["times"]["roundtrip"])
        row["ms"] = {k: _median(v) for k, v in row.pop("times").items()}
    shares = [x for x in row.pop("sessionShares", [row.get("sessionShare")]) if x is not None]
    if shares:
        row["sessionShare"] = _median(shares)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="vqvae-f4", help="single-scale bundle name or folder")
    ap.add_argument("--rounds", type=int, default=2, help="rounds, each side in turn")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per round after a warm-up")
    n = os.cpu_count() or 1
    ap.add_argument("--threads", type=int, nargs="+", default=sorted({1, n}))
    ap.add_argument(
        "--plans",
        nargs="+",
        default=["fp32", '{"encoder": "fp32", "decoder": "int8"}'],
        help="precisions or per-stage plans (JSON)",
    )
    ap.add_argument("--webgpu", action="store_true", help="also WebGPU, where there is an adapter")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    prov = provenance("vqedge.benchmarks.web", argv)
    folder = bundle_path(args.bundle)
    img = synthetic_images(1, SIDE, seed=0)[0]
    srv = serve({folder.name: folder}, port=0)
    page_url = f"http://127.0.0.1:{srv.server_address[1]}/"
    url = f"bundles/{folder.name}/"
    plans = [_plan(p) for p in args.plans]
    configs = [("wasm", p, t) for p in plans for t in args.threads]
    rows: dict[tuple, dict] = {}
    started = time.time()
    with sync_playwright() as pw:
        extra = WEBGPU_ARGS if args.webgpu else []
        browser = pw.chromium.launch(
            executable_path=shutil.which("chromium"), args=BROWSER_ARGS + extra
        )
        chromium_version = browser.version
        webgpu = {"adapter": False, "reason": "not asked for (--webgpu)"}
        if args.webgpu:
            pg = browser.new_page()
            pg.goto(page_url + "?autoload=0")
            pg.wait_for_function("window.vqedge !== undefined")
            webgpu = pg.evaluate("async () => await window.vqedge.webgpuSupport()")
            pg.close()
            if webgpu["adapter"]:
                configs += [("webgpu", p, None) for p in plans]
        for r in range(args.rounds):
            for backend, plan, threads in configs:
                opts = {"backend": backend, "precision": plan, "strict": False}
                if threads:
                    opts["threads"] = threads
                name = PrecisionPlan.parse(plan).describe()
                print(f"round {r + 1}: browser {backend} {name} threads={threads}", flush=True)
                key = ("browser", backend, name, threads)
                res = browser_round(browser, url, page_url, opts, img, args.repeats)
                rows[key] = _merge(rows.get(key), res)
                if backend == "wasm":
                    print(f"round {r + 1}: python cpu {name} threads={threads}", flush=True)
                    res = python_cpu(folder.name, img, plan, threads, args.repeats)
                    key = ("python", "onnxruntime CPU provider", name, threads)
                    rows[key] = _merge(rows.get(key), res)
        browser.close()
    srv.shutdown()
    out = []
    for (where, backend, name, threads), row in rows.items():
        row = _finish(dict(row))
        idx = row.pop("indices", None)
        ref = rows.get(("python", "onnxruntime CPU provider", name, threads), {}).get("indices")
        if where == "browser" and idx is not None and ref is not None:
            row["tokens_equal_python"] = float(np.mean(np.array(idx) == np.asarray(ref).ravel()))
        out.append({"where": where, "backend": backend, "plan": name, "threads": threads, **row})
    report = {
        "provenance": finish(prov),
        "bundle": folder.name,
        "image": f"{SIDE}x{SIDE} synthetic (benchmarks.timing.synthetic_images, seed 0)",
        "rounds": args.rounds,
        "repeats": args.repeats,
        "chromium": chromium_version,
        "onnxruntime_web": _ort_web_version(),
        "webgpu": webgpu,
        "seconds": round(time.time() - started, 1),
        "downloads": download_sizes(folder),
        "rows": out,
    }
    RESULTS.mkdir(exist_ok=True)
    write_bytes_atomic(
        RESULTS / "web.json", (json.dumps(report, indent=2, default=str) + "\n").encode()
    )
    write_bytes_atomic(RESULTS / "web.md", markdown(report).encode())
    print((RESULTS / "web.md").read_text())
    return 0


def _ms(r: dict, key: str) -> str:
    return f"{r['ms'][key]:.0f}" if "ms" in r else "—"


def _ratio(rep: dict, r: dict) -> str:
    py = next(
        (x for x in rep["rows"] if x["where"] == "python" and x["plan"] == r["plan"]
         and x["threads"] == r["threads"] and "ms" in x),
        None,
    )  # fmt: skip
    if r["where"] != "browser" or py is None or "ms" not in r:
        return "—"
    return f"{r['ms']['roundtrip'] / py['ms']['roundtrip']:.1f}x"


def markdown(rep: dict) -> str:
    gpu = rep["webgpu"]
    gpu_text = (
        f"adapter: yes (shader-f16: {'yes' if gpu.get('f16') else 'no'})"
        if gpu["adapter"]
        else f"no adapter ({gpu.get('reason')})"
    )
    lines = [
        f"# vqedge in the browser: {rep['bundle']}, {rep['image']}",
        "",
        *provenance_md(rep["provenance"]),
        f"- Browser: Debian chromium {rep['chromium']}, headless; onnxruntime-web "
        f"{rep['onnxruntime_web']}; page cross-origin isolated (COOP/COEP), sessions in a "
        f"Web Worker; WebGPU {gpu_text}",
        f"- {rep['rounds']} rounds (browser then Python, each configuration), {rep['repeats']} "
        f"timed passes per round after a warm-up; medians; {rep['seconds']} s in all",
        "",
        "## ms per image (median) and the browser's share in onnxruntime-web's sessions",
        "",
        "| where | backend | plan asked | ran | threads | encode | decode | round trip |"
        " browser / Python | in sessions | verdict | tokens = Python's |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        head = f"| {r['where']} | {r['backend']} | {r['plan']} |"
        if "error" in r:
            lines.append(f"{head} does not run: {r['error']} | | | | | | | | |")
            continue
        share = r.get("sessionShare")
        holds = r.get("holds")
        verdict = (
            "—"
            if r["where"] == "python"
            else {True: "holds", False: "does not hold"}.get(holds, "none")
        )
        eq = r.get("tokens_equal_python")
        lines.append(
            f"{head} {r.get('ran', '—')} | {r['threads'] or '—'} | {_ms(r, 'encode')} | "
            f"{_ms(r, 'decode')} | {_ms(r, 'roundtrip')} | {_ratio(rep, r)} | "
            f"{'—' if share is None else f'{share:.0%}'} | {verdict} | "
            f"{'—' if eq is None else f'{eq:.4f}'} |"
        )
    lines += [
        "",
        "## First and second visit (the last round's), bundle bytes fetched",
        "",
        "| backend | plan | threads | first: load ms | first: bundle bytes | second: load ms |"
        " second: bundle bytes | second: from the cache |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rep["rows"]:
        v = r.get("visits")
        if r["where"] != "browser" or not v:
            continue
        f, s = v["first"], v["second"]
        lines.append(
            f"| {r['backend']} | {r['plan']} | {r['threads'] or '—'} | {f['loadMs']:.0f} | "
            f"{f['fetched_bundle_bytes']:,} | {s['loadMs']:.0f} | {s['fetched_bundle_bytes']:,} | "
            f"{s['fromCacheBytes']:,} |"
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
