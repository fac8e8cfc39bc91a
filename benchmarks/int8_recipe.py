"""Which int8 recipe holds on this CPU: each candidate quantizes the shipped vqvae-f4's fp32
graphs, then runs on the held-out photos on the CPU provider (and on the OpenVINO provider
in another interpreter); then `vqedge verify` runs the shipped bundles' own check sets.

    python -m vqedge.benchmarks.int8_recipe [--ov-python .venv-ov/bin/python] [--side 256]

The recipes (``vqedge.export.variants.INT8_RECIPES``, all static QDQ, per-channel symmetric
int8 weights, MinMax calibration on the export's training crops): ``u8s8rr`` (uint8
activations, 7-bit weights: the shipped one), ``u8s8`` (8-bit weights), ``s8s8`` (int8
symmetric activations). On x86 CPUs without VNNI (AVX2 only) uint8 x int8 products are
summed in int16 (VPMADDUBSW) and 8-bit weights can saturate; the CPU flags in the provenance
say which path this machine took. Writes ``int8_recipe.json`` and ``int8_recipe.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

MODULE = "vqedge.benchmarks.int8_recipe"
HERE = Path(__file__).resolve().parent
BUNDLE = "vqvae-f4"
SHIPPED = ("vqvae-f4", "vqvae-ms-f8")
GRAPHS = ("encoder", "quantizer", "decoder")


def run_graphs(graphs: dict[str, str], images: np.ndarray, provider: str) -> dict[str, Any]:
    """Tokens and reconstructions of uint8 ``images`` [N, S, S, 3] through the three graphs
    on ``provider`` ("cpu" or "openvino"), strictly (a provider that does not run raises)."""
    import onnxruntime as ort

    from vqedge.runtime.images import float_to_uint8, uint8_to_float
    from vqedge.runtime.providers import make_session, resolve_providers

    prov = resolve_providers(provider, "fp32")
    s = {
        k: make_session(Path(p), prov, ort.SessionOptions(), True, "fp32")
        for k, p in graphs.items()
    }
    idx, recon = [], []
    for img in images:
        lat = s["encoder"].run(None, {"image": uint8_to_float(img)})[0]
        i = s["quantizer"].run(None, {"latent": lat})[0]
        idx.append(i)
        recon.append(float_to_uint8(s["decoder"].run(None, {"indices": i})[0])[0])
    return {"indices": np.stack(idx), "recon": np.stack(recon)}


def _child(spec_path: str) -> None:
    """Run the spec's graph sets on its provider; write their outputs to an .npz."""
    spec = json.loads(Path(spec_path).read_text())
    images = np.load(spec["images"])["images"]
    out = {}
    for name, graphs in spec["sets"].items():
        r = run_graphs(graphs, images, spec["provider"])
        out[f"{name}/indices"], out[f"{name}/recon"] = r["indices"], r["recon"]
    np.savez(spec["out"], **out)


def quantize(work: Path, bundle_dir: Path) -> dict[str, dict[str, str]]:
    """fp32 graphs (weights inline) and each recipe's int8 encoder and decoder, in ``work``."""
    import onnx
    import onnxruntime as ort

    from vqedge.export.recipe import CALIBRATION_SIDE, training_crops
    from vqedge.export.variants import INT8_RECIPES, to_int8

    fp32 = {}
    for g in GRAPHS:  # inline the bundle's shared external weights
        fp32[g] = str(work / f"{g}.fp32.onnx")
        onnx.save(onnx.load(str(bundle_dir / f"{g}.fp32.onnx")), fp32[g])
    crops = training_crops(CALIBRATION_SIDE)
    enc, q = (ort.InferenceSession(fp32[g], providers=["CPUExecutionProvider"]) for g in GRAPHS[:2])
    idx = [q.run(None, {"latent": enc.run(None, {"image": x})[0]})[0] for x in crops]
    sets = {"fp32": fp32}
    for name in INT8_RECIPES:
        graphs = dict(fp32)
        for g, (inp, calib) in (("encoder", ("image", crops)), ("decoder", ("indices", idx))):
            graphs[g] = str(work / f"{g}.{name}.onnx")
            to_int8(Path(fp32[g]), Path(graphs[g]), inp, calib, recipe=name)
        sets[name] = graphs
    return sets


def compare(outputs: dict[str, np.ndarray], images: np.ndarray, recipes: list[str]) -> list[dict]:
    """Per recipe: fp32's PSNR against the photos, int8's drop, token agreement with fp32 and
    int8's images against fp32's."""
    from vqedge.runtime.metrics import psnr

    def mean_psnr(a: np.ndarray, b: np.ndarray) -> float | None:
        """None where the images are identical (infinite PSNR)."""
        db = float(np.mean([psnr(x, y) for x, y in zip(a, b)]))
        return db if np.isfinite(db) else None

    ref_idx, ref = outputs["fp32/indices"], outputs["fp32/recon"]
    fp32_db = mean_psnr(ref, images)
    if fp32_db is None:
        raise ValueError("fp32's reconstructions equal the photos: nothing to compare against")
    rows = []
    for name in recipes:
        idx, rec = outputs[f"{name}/indices"], outputs[f"{name}/recon"]
        vs_fp32 = mean_psnr(rec, ref)
        rows.append(
            {
                "recipe": name,
                "fp32_db": round(fp32_db, 2),
                "int8_drop_db": round(fp32_db - (mean_psnr(rec, images) or np.inf), 3),
                "token_agreement": round(float((idx == ref_idx).mean()), 4),
                "int8_vs_fp32_db": None if vs_fp32 is None else round(vs_fp32, 1),
            }
        )
    return rows


def verify_rows(python: str, provider: str) -> list[dict[str, Any]]:
    """`vqedge verify` of each shipped bundle at fp32 and int8 with ``python``."""
    rows = []
    for b in SHIPPED:
        cmd = [python, "-m", "vqedge.commands.main", "verify", b, "--providers", provider,
               "--precision", "fp32", "--precision", "int8"]  # fmt: skip
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        rows.append({"bundle": b, "provider": provider, "exit": p.returncode,
                     "output": (p.stdout + p.stderr).strip()})  # fmt: skip
    return rows


def measure(side: int, ov_python: str | None) -> dict[str, Any]:
    from vqedge.models.data import held_out_paths
    from vqedge.runtime.images import fit_square
    from vqedge.runtime.inputs import read_image
    from vqedge.runtime.session import bundle_path

    images = np.stack([fit_square(read_image(p), side) for p in held_out_paths()])
    result: dict[str, Any] = {"bundle": BUNDLE, "side": side, "photos": len(images), "rows": []}
    with tempfile.TemporaryDirectory(prefix="vqedge-int8-recipe-") as tmp:
        work = Path(tmp)
        sets = quantize(work, Path(bundle_path(BUNDLE)))
        recipes = [n for n in sets if n != "fp32"]
        np.savez(work / "images.npz", images=images)
        for provider, python in (("cpu", sys.executable), ("openvino", ov_python)):
            if python is None:
                result["rows"].append({"provider": provider, "skipped": "no --ov-python given"})
                continue
            spec = {"images": str(work / "images.npz"), "sets": sets, "provider": provider,
                    "out": str(work / f"{provider}.npz")}  # fmt: skip
            (work / "spec.json").write_text(json.dumps(spec))
            p = subprocess.run([python, "-m", MODULE, "--child", str(work / "spec.json")],
                               capture_output=True, text=True, timeout=1800)  # fmt: skip
            if p.returncode != 0:
                raise RuntimeError(f"{provider} with {python}: exit {p.returncode}: {p.stderr}")
            out = dict(np.load(work / f"{provider}.npz"))
            result["rows"] += [{"provider": provider, **r} for r in compare(out, images, recipes)]
    result["verify"] = verify_rows(sys.executable, "cpu")
    if ov_python:
        result["verify"] += verify_rows(ov_python, "openvino")
    return result


def markdown(r: dict[str, Any]) -> str:
    from vqedge.benchmarks.machine import provenance_md

    lines = [
        "# int8 recipe: which quantization holds on this CPU",
        "",
        *provenance_md(r["provenance"]),
        "",
        f"`{r['bundle']}`'s shipped fp32 graphs quantized by each recipe (static QDQ, per-channel",
        "symmetric int8 weights, MinMax calibration on the export's training crops): `u8s8rr`",
        "uint8 activations and 7-bit weights (shipped), `u8s8` 8-bit weights, `s8s8` int8",
        f"symmetric activations. {r['photos']} held-out photos, centre squares resized to",
        f"{r['side']}x{r['side']}; PSNR in dB (mean over the photos).",
        "",
        "| provider | recipe | fp32 dB | int8 drop dB | tokens = fp32's | int8 vs fp32 image dB |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in r["rows"]:
        if "skipped" in row:
            lines.append(f"| {row['provider']} | skipped: {row['skipped']} | | | | |")
            continue
        lines.append(
            f"| {row['provider']} | {row['recipe']} | {row['fp32_db']:.2f} | "
            f"{row['int8_drop_db']:.3f} | {row['token_agreement']:.1%} | "
            + (
                "identical |"
                if row["int8_vs_fp32_db"] is None
                else f"{row['int8_vs_fp32_db']:.1f} |"
            )
        )
    lines += ["", "## The shipped bundles' check sets (`vqedge verify`)", ""]
    for v in r["verify"]:
        cmd = f"vqedge verify {v['bundle']} --providers {v['provider']} --precision fp32"
        cmd += " --precision int8"
        lines += [f"`{cmd}`: exit {v['exit']}", "", "```text", v["output"], "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--ov-python", default=None, help="an interpreter with onnxruntime-openvino")
    p.add_argument("--side", type=int, default=256, help="side of the photos' centre squares")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for int8_recipe.*")
    args = p.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    from vqedge.benchmarks.machine import finish, provenance, write_results

    prov = provenance(MODULE, argv)  # before anything is written
    result = {"provenance": prov, **measure(args.side, args.ov_python)}
    finish(prov)
    write_results(args.out, "int8_recipe", result, markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
