"""``vqedge info``: what a bundle holds and what runs it on this machine."""

from __future__ import annotations

import argparse
from typing import Any

from vqedge.commands.common import EXIT_OK, load_tokenizer, runtime_args

LABEL_WIDTH = 12


def run(args: argparse.Namespace) -> int:
    import json

    import onnxruntime as ort

    from vqedge.runtime import list_bundles
    from vqedge.runtime.providers import installed_runtimes, runtime_clash

    args.bundle = args.bundle_arg or args.bundle
    tok = load_tokenizer(args)
    if args.json:
        print(json.dumps(tok.info, indent=2))
        return EXIT_OK
    rows = [
        *tok.describe(),
        *bundle_facts(tok.manifest),
        ("shipped", ", ".join(list_bundles()) or "none"),
        ("onnxruntime", ", ".join(installed_runtimes())),
        ("available", ", ".join(ort.get_available_providers())),
    ]
    clash = runtime_clash()
    if clash:
        rows.append(("WARNING", clash))
    print("\n".join(f"{label:<{LABEL_WIDTH}}{value}" for label, value in rows))
    return EXIT_OK


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def bundle_facts(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows for where a bundle came from and what it weighs: source, parameters, file sizes,
    GFLOP per image (absent fields are left out: bundles written before they existed)."""
    rows = []
    src = manifest.get("source")
    if isinstance(src, dict) and src.get("family"):
        what = [f"{src['family']}: {src.get('checkpoint') or '?'}"]
        if src.get("preset"):
            what.append(f"preset {src['preset']}")
        if src.get("sha256"):
            what.append(f"sha256 {str(src['sha256'])[:16]}...")
        rows.append(("source", ", ".join(what)))
    sizes = manifest.get("sizes")
    if isinstance(sizes, dict):
        if isinstance(sizes.get("parameters"), int):
            rows.append(("parameters", f"{sizes['parameters'] / 1e6:.2f} M"))
        files = sizes.get("weight_files")
        if isinstance(files, dict) and files:
            listed = ", ".join(f"{n} {_mib(b)}" for n, b in files.items() if isinstance(b, int))
            total = sizes.get("bundle_bytes")
            rows.append(
                ("files", listed + (f"; bundle {_mib(total)}" if isinstance(total, int) else ""))
            )
        gflop = sizes.get("gflop_per_image")
        if isinstance(gflop, dict) and "total" in gflop:
            hw = sizes.get("gflop_image_size") or ["?", "?"]
            parts = ", ".join(f"{g} {v:g}" for g, v in gflop.items() if g != "total")
            rows.append(("GFLOP", f"{gflop['total']:g} per {hw[0]}x{hw[1]} image ({parts})"))
    if manifest.get("input", {}).get("tiling") is False:
        note = manifest["input"].get("tiling_note") or "attention sees the whole latent"
        rows.append(("tiling", f"refused: {note}"))
    for prec, v in manifest.get("variants", {}).items():
        q = v.get("quality", {}) if isinstance(v, dict) else {}
        if "fit_for_generator_training" in q:
            agree = q.get("token_agreement")
            rows.append(
                (
                    f"{prec}",
                    f"held-out PSNR {q.get('held_out_psnr', float('nan')):.2f} dB"
                    + (f", tokens agree {agree:.2%} with fp32" if agree is not None else "")
                    + ("" if q["fit_for_generator_training"] else "; not fit for generator tokens"),
                )
            )
    return rows


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``vqedge info``."""
    d = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser("info", help="bundle facts and execution providers", formatter_class=d)
    p.add_argument("bundle_arg", nargs="?", metavar="BUNDLE", help="bundle (default: shipped)")
    p.add_argument("--json", action="store_true", help="print the info as JSON")
    runtime_args(p)
    p.set_defaults(func=run)
