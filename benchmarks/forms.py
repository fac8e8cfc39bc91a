"""A bundle's provider form against its plain graphs, interleaved in one process.

``python -m vqedge.benchmarks.forms --bundle DIR [--providers cpu] [--precision fp32]
[--out DIR]``

A form (``cpu_graphs``: the decoder with phase convolutions) is the same function as the plain
graph, written for one provider. Whether it pays is a difference of a few percent, less than
what separate runs on a shared machine differ by, so both graphs run here in one process with
the same provider, options and input, alternating call by call; the report gives each graph's
median and the ratio. Memory is not measured here (two sessions share one process and its
mapped weights): ``compare`` measures each configuration's in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.benchmarks import machine
from vqedge.benchmarks.bundles import runtime_providers
from vqedge.runtime.manifest import BundleError, read_manifest
from vqedge.runtime.providers import ProviderError, make_session, resolve_providers
from vqedge.runtime.session import bundle_path, default_session_options, variant_name


def _input(entry: dict[str, Any], side: int, f: int, codes: int) -> np.ndarray:
    """A batch-1 input of a graph's first input: an image of ``side``, or what its encoder
    gives (a latent, or tokens below ``codes``) at ``side // f`` where a size is free."""
    spec = entry["inputs"][0]
    at = side if spec["name"] == "image" else side // f
    shape = [1, *(d if isinstance(d, int) else at for d in spec["shape"][1:])]
    rng = np.random.default_rng(0)
    if spec["dtype"] == "int64":
        return rng.integers(0, codes, shape, dtype=np.int64)
    return rng.standard_normal(shape).astype(np.float32)


def compare_forms(
    bundle: Path, form: str, providers: Any, precision: str, threads: int, rounds: int, side: int
) -> dict[str, Any]:
    """Median time of each graph that has a ``form`` against its plain graph."""
    manifest = read_manifest(bundle, verify=False)
    variant = manifest["variants"][variant_name(precision)]
    if form not in variant:
        raise ValueError(
            f"bundle {bundle.name}'s {variant_name(precision)} variant has no {form} (it has "
            f"{sorted(k for k in variant if k.endswith('graphs'))}): nothing to compare"
        )
    resolved = resolve_providers(runtime_providers(providers, threads), precision)
    f, codes = manifest["input"]["downsample_factor"], manifest["input"]["codebook_size"]
    rows = []
    for graph, alt in variant[form].items():
        plain = variant["graphs"][graph]
        x = _input(plain, side, f, codes)
        sessions = {}
        for label, entry in (("plain", plain), ("form", alt)):
            opts = default_session_options(threads)
            sess = make_session(bundle / entry["file"], resolved, opts, True, precision)
            sess.run(None, {sess.get_inputs()[0].name: x})  # the warm-up
            sessions[label] = sess
        ms: dict[str, list[float]] = {"plain": [], "form": []}
        for _ in range(rounds):
            for label, sess in sessions.items():
                t0 = time.perf_counter()
                sess.run(None, {sess.get_inputs()[0].name: x})
                ms[label].append((time.perf_counter() - t0) * 1e3)
        med = {k: float(np.median(v)) for k, v in ms.items()}
        rows.append({
            "graph": graph, "plain_file": plain["file"], "form_file": alt["file"],
            "input_shape": list(x.shape), "plain_ms": med["plain"], "form_ms": med["form"],
            "ratio": med["form"] / med["plain"], "runs": rounds,
            "providers": sessions["form"].get_providers(),
        })  # fmt: skip
        print(
            f"{graph}: plain {med['plain']:.1f} ms, {form} {med['form']:.1f} ms "
            f"= {med['form'] / med['plain']:.2f}x ({rounds} alternating runs each)",
            flush=True,
        )
    return {
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "bundle": manifest.get("name"),
        "form": form,
        "precision": precision,
        "threads": threads,
        "machine": machine.describe(),
        "graphs": rows,
    }


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"# `{r['form']}` against the plain graphs: `{r['bundle']}`",
        "",
        f"{r['precision']}, {r['threads']} threads, {m['cpu_model']} "
        f"({m['physical_cores']} cores). Each graph's two sessions in one process, the same "
        "provider, options and batch-1 input, run alternately (memory: `compare`'s report).",
        "",
        *(machine.provenance_md(r["provenance"]) if "provenance" in r else []),
        "",
        "| graph | input | plain ms | form ms | form / plain | runs |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for g in r["graphs"]:
        lines.append(
            f"| {g['graph']} | {'x'.join(map(str, g['input_shape']))} | {g['plain_ms']:.1f} | "
            f"{g['form_ms']:.1f} | {g['ratio']:.2f}x | {g['runs']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vqedge.benchmarks.forms", description=__doc__)
    p.add_argument("--bundle", required=True, help="a bundle folder or shipped bundle name")
    p.add_argument("--form", default="cpu_graphs", help="the variant's key of the form")
    p.add_argument("--providers", default="cpu", help="as load() takes (default cpu)")
    p.add_argument("--precision", default="fp32", help="fp32 or bf16 (the fp32 graphs)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8, help="timed runs of each graph")
    p.add_argument("--side", type=int, default=256, help="image side of encoders' input")
    p.add_argument("--out", default=None, help="folder for forms.json / forms.md")
    args = p.parse_args(argv)
    prov = machine.provenance("vqedge.benchmarks.forms", argv)  # before anything is written
    try:
        bundle = bundle_path(args.bundle)
        report = compare_forms(
            bundle, args.form, args.providers, args.precision, args.threads, args.rounds, args.side
        )
    except (BundleError, ProviderError, ValueError) as e:  # each names what is wrong
        print(f"error: {e}", file=sys.stderr)
        return 2
    report["provenance"] = prov
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "forms.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "forms.md").write_text(markdown(report))
        print(f"wrote {out / 'forms.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
