"""The encoder's precision frontier on this CPU: token agreement with fp32 and encoder latency
for each number of nodes kept float in an int8 encoder (export/mixed_precision.py's search),
per provider, beside the whole-graph precisions (fp32, fp16, int8; OpenVINO's f32, f16 and
bf16 inference precisions).

Agreement is counted through the fp32 nearest-code lookup on tiles of the validation images
(models.data's validation split: never the held-out photos, never calibration), against the
fp32 encoder's tokens on the CPU provider; the tier is ``vqedge.runtime.fidelity``'s. The
OpenVINO provider lives in an environment of its own (``--ov-python``, default ``.venv-ov``):
one worker there runs every graph and returns its tokens and times::

    python -m vqedge.benchmarks.frontier [--bundle vqvae-f4] [--out benchmarks/results/frontier.md]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

MODULE = "vqedge.benchmarks.frontier"
DEFAULT_BUNDLES = ("vqvae-f4", "vqvae-ms-f8")
DEFAULT_OUT = Path("benchmarks/results/frontier.md")
DEFAULT_OV_PYTHON = Path(".venv-ov/bin/python")
CPU, OPENVINO = "cpu", "openvino"
# validation photos are shrunk to this longer side, then cut into the bundle's tiles
VALIDATION_SIDE = 512
# OpenVINO's CPU inference precisions tried on the fp32 graph (the plugin's hint)
OV_HINTS = ("f32", "f16", "bf16")


# ---------------------------------------------------------------- worker (either environment)


def _providers(provider: str, hint: str | None) -> list[Any]:
    if provider == CPU:
        return ["CPUExecutionProvider"]
    opts = {"device_type": "CPU"}
    if hint:
        opts["load_config"] = json.dumps({"CPU": {"INFERENCE_PRECISION_HINT": hint}})
    return [("OpenVINOExecutionProvider", opts)]


def run_jobs(spec: dict[str, Any], provider: str) -> dict[str, Any]:
    """Each job's tokens of the spec's images (written to ``spec["tokens_out"]``) and its
    encoder's median latency on a ``spec["side"]`` square image, on ``provider``.

    The lookup runs on the CPU provider at fp32, as the runtime runs it beside OpenVINO.
    """
    import onnxruntime as ort

    images = np.load(spec["images"])["images"]
    lookup = ort.InferenceSession(spec["quantizer"], providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).uniform(-1, 1, (1, 3, spec["side"], spec["side"]))
    x = x.astype(np.float32)
    tokens, ms, ran = {}, {}, {}
    for job in spec["jobs"]:
        opts = ort.SessionOptions()
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(job["path"], opts, providers=_providers(provider, job["hint"]))
        ran[job["label"]] = sess.get_providers()[0]
        name = sess.get_inputs()[0].name
        out = []
        for img in images:
            latent = sess.run(None, {name: img[None]})[0]
            out.append(lookup.run(None, {lookup.get_inputs()[0].name: latent})[0])
        tokens[job["label"]] = np.concatenate(out)
        for _ in range(2):
            sess.run(None, {name: x})
        times = []
        for _ in range(spec["reps"]):
            t = time.perf_counter()
            sess.run(None, {name: x})
            times.append(time.perf_counter() - t)
        ms[job["label"]] = 1000 * float(np.median(times))
    np.savez(spec["tokens_out"], **tokens)
    from vqedge.benchmarks.machine import versions

    return {"ms": ms, "ran_on": ran, "versions": versions()}


def _worker_main(spec_path: str, provider: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    print(json.dumps(run_jobs(spec, provider)))


# ---------------------------------------------------------------- driver


def validation_tiles(side: int) -> np.ndarray:
    """[N, 3, side, side] float tiles of the validation split's photos (shrunk to
    ``VALIDATION_SIDE``), non-overlapping, in the encoder's range."""
    from vqedge.models.data import VALIDATION, collection_paths, load_images
    from vqedge.runtime.images import uint8_to_float

    tiles = []
    for img in load_images(collection_paths(VALIDATION), downscale_to=VALIDATION_SIDE):
        for y in range(0, img.shape[0] - side + 1, side):
            for x in range(0, img.shape[1] - side + 1, side):
                tiles.append(uint8_to_float(np.ascontiguousarray(img[y : y + side, x : x + side])))
    return np.concatenate(tiles)


def _agreement(tokens: np.ndarray, ref: np.ndarray, scales: tuple[int, ...]) -> dict:
    eq = (tokens == ref).reshape(len(ref), -1)
    per, start = [], 0
    for pn in scales:
        per.append(float(eq[:, start : start + pn * pn].mean()))
        start += pn * pn
    return {"agreement": float(eq.mean()), "per_scale": per}


def _run_provider(
    provider: str, python: str, spec: dict[str, Any], work: Path
) -> dict[str, Any] | None:
    """run_jobs on ``provider``: in this process for the CPU provider, else in ``python``."""
    if provider == CPU:
        return run_jobs(spec, CPU)
    spec_path = work / f"spec-{provider}.json"
    spec_path.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(
        [python, "-m", MODULE, "--worker", str(spec_path), "--provider", provider],
        capture_output=True, text=True, env=env, timeout=3600,
    )  # fmt: skip
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_bundle(
    bundle: str, ov_python: str | None, reps: int, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """The search on one bundle, then every graph of its trail and the whole-graph
    precisions on each provider."""
    from vqedge.benchmarks.bundles import facts
    from vqedge.export.mixed_precision import TokenScorer, search
    from vqedge.export.recipe import CALIBRATION_SIDE, training_crops

    bf = facts(bundle)
    side = bf.target_size
    tiles = validation_tiles(side)
    calib = training_crops(bf.resolution or CALIBRATION_SIDE)
    enc32 = bf.path / "encoder.fp32.onnx"
    quantizer = bf.path / "quantizer.fp32.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scorer = TokenScorer(quantizer, [t[None] for t in tiles], enc32, bf.scales)
        t0 = time.perf_counter()
        found = search(enc32, "image", calib, scorer, work / "steps", log=log)
        search_s = time.perf_counter() - t0
        np.savez(work / "images.npz", images=tiles)
        jobs = [{"label": "fp32", "path": str(enc32), "hint": "f32"}]
        jobs += [{"label": f"fp32/{h}", "path": str(enc32), "hint": h} for h in OV_HINTS[1:]]
        jobs += [{"label": "fp16", "path": str(bf.path / "encoder.fp16.onnx"), "hint": "f32"}]
        jobs += [{"label": "int8-shipped", "path": str(bf.path / "encoder.int8.onnx"),
                  "hint": "f32"}]  # fmt: skip
        jobs += [
            {"label": f"float{k}", "path": str(work / "steps" / f"float{k}.onnx"), "hint": "f32"}
            for k in range(len(found.trail))
        ]
        ref = np.concatenate(scorer.reference)
        providers: dict[str, Any] = {}
        for provider in (CPU, OPENVINO):
            if provider == OPENVINO and not ov_python:
                providers[provider] = {"error": "no interpreter with onnxruntime-openvino"}
                continue
            # the OpenVINO hints mean nothing on the CPU provider: fp32/f16, fp32/bf16 left out
            pj = [j for j in jobs if provider == OPENVINO or "/" not in j["label"]]
            spec = {"images": str(work / "images.npz"), "quantizer": str(quantizer),
                    "side": side, "reps": reps, "jobs": pj,
                    "tokens_out": str(work / f"tokens-{provider}.npz")}  # fmt: skip
            log(f"{bundle}: timing {len(pj)} encoders on {provider}")
            res = _run_provider(provider, ov_python or sys.executable, spec, work)
            if "error" in res:
                providers[provider] = res
                continue
            toks = np.load(spec["tokens_out"])
            res["rows"] = {
                label: {
                    "ms": res["ms"][label],
                    **_agreement(toks[label], ref, bf.scales),
                    # the same tokens as this provider's own fp32 run
                    "same_as_provider_fp32": bool(np.array_equal(toks[label], toks["fp32"])),
                }
                for label in res["ms"]
            }
            providers[provider] = res
    return {
        "bundle": bf.name,
        "kind": bf.kind,
        "side": side,
        "scales": list(bf.scales),
        "validation": {
            "tiles": int(len(tiles)),
            "positions": int(ref.size),
            "tile_side": side,
            "photos_shrunk_to": VALIDATION_SIDE,
        },  # fmt: skip
        "calibration": {"images": len(calib), "side": int(calib[0].shape[-1])},
        "search_seconds": round(search_s, 1),
        "search": found.to_dict(),
        "providers": providers,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", action="append", help=f"(repeatable; default {DEFAULT_BUNDLES})")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="markdown; .json beside it")
    p.add_argument("--ov-python", default=None, help=f"default {DEFAULT_OV_PYTHON} if present")
    p.add_argument("--reps", type=int, default=15, help="timed runs per encoder (median)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--provider", default=CPU, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker_main(args.worker, args.provider)
        return 0
    from vqedge.benchmarks.frontier_report import write_report
    from vqedge.benchmarks.machine import provenance

    ov = args.ov_python or (str(DEFAULT_OV_PYTHON) if DEFAULT_OV_PYTHON.exists() else None)
    prov = provenance(MODULE, argv)
    results = [measure_bundle(b, ov, args.reps) for b in args.bundle or DEFAULT_BUNDLES]
    write_report({"provenance": prov, "bundles": results}, args.out)
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
