"""Reconstruction quality of a bundle, per image and precision, through the runtime.

    python -m vqedge.benchmarks.quality                      # both shipped bundles
    python -m vqedge.benchmarks.quality --bundle DIR --out benchmarks/results

Four sets: the held-out photos (full size), the held-out illustrations (longer side
``WORK_SIDE``, as training evaluates them), and images that are in no set of the training
collection, photos and illustrations apart (``OUT_OF_SET``, from two Debian packages that
``make eval-data`` installs; each shrunk to the held-out photos' longer side, 640). A
multi-scale bundle sees every image fitted to its resolution and also reports each prefix
of scales. Each reduced precision also reports the fraction of its tokens equal to fp32's
on the same images: a generator trained on one precision's tokens sees the others' differ.
Writes ``OUT/quality.json`` and ``OUT/quality.md``, with the provenance of the run.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.benchmarks import machine
from vqedge.runtime import load
from vqedge.runtime.images import fit_square
from vqedge.runtime.inputs import read_image
from vqedge.runtime.kind import NEXT_SCALE, kind_of
from vqedge.runtime.metrics import codebook_stats, psnr

HERE = Path(__file__).resolve().parent
MODULE = "vqedge.benchmarks.quality"
SHIPPED = ("vqvae-f4", "vqvae-ms-f8")
PRECISIONS = ("fp32", "fp16", "int8")
# out-of-set images are shrunk to the held-out photos' longer side (china.jpg, flower.jpg)
OUT_OF_SET_SIDE = 640
EVAL_PACKAGES = ("lomiri-wallpapers-16.04", "ukui-wallpapers")
INSTALL_HINT = (
    f"install the Debian packages {' and '.join(EVAL_PACKAGES)} (`make eval-data`, "
    f"or apt-get install {' '.join(EVAL_PACKAGES)})"
)
_BG = "/usr/share/backgrounds"


@dataclass(frozen=True)
class OutOfSet:
    path: str
    kind: str  # "photo" or "illustration"
    package: str
    licence: str
    author: str


def _lomiri(name: str, kind: str, licence: str, author: str) -> OutOfSet:
    return OutOfSet(f"{_BG}/{name}", kind, EVAL_PACKAGES[0], licence, author)


def _ukui(name: str) -> OutOfSet:
    return OutOfSet(
        f"{_BG}/{name}", "illustration", EVAL_PACKAGES[1], "CC-BY-SA-3.0", "Ubuntu Kylin"
    )


# In none of the training collection's splits (vqedge.models.data.COLLECTION). Licences and
# authors as the packages' copyright files give them.
OUT_OF_SET = (
    _lomiri("Bridge_by_Sander_Klootwijk.jpg", "photo", "CC-BY-SA-4.0", "Sander Klootwijk"),
    _lomiri("Dragonfly_by_Bolly.jpg", "photo", "CC-BY-SA-4.0", "Bolly"),
    _lomiri("Picture_0B_by_freespace.jpg", "photo", "CC-BY-4.0", "Trevor Freespace"),
    _lomiri("Picture_1A_by_freespace.jpg", "photo", "CC-BY-4.0", "Trevor Freespace"),
    _lomiri("Wine_by_Jakkub_Mede.jpg", "photo", "CC-BY-4.0", "Jakub Mede"),
    _lomiri("aitzgorri_by_Aitzol_Berasategi.jpg", "photo", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("free_by_Peter_Nerlich.jpg", "photo", "CC-BY-SA-4.0", "Peter Nerlich"),
    _lomiri("friends_by_Aitzol_Berasategi.jpg", "photo", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("greentock_by_Peter_Nerlich.jpg", "photo", "CC-BY-SA-4.0", "Peter Nerlich"),
    _lomiri("life_by_Aitzol_Berasategi.jpg", "photo", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("picosdeeuropa_by_Aitzol_Berasategi.jpg", "photo", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("seeding_by_Clements_Engelhardt.jpg", "photo", "CC0-1.0", "Clemens Engelhardt"),
    _lomiri("sunset_by_Aitzol_Berasategi.jpg", "photo", "CC-BY-4.0", "Aitzol Berasategi"),
    _lomiri("umang_by_Abhishek_Mudgal.jpg", "illustration", "CC-BY-4.0", "Abhishek Mudgal"),
    _ukui("2004default.jpg"),
    _ukui("calla.png"),
    _ukui("city.png"),
    _ukui("desert.png"),
    _ukui("firstgeneration.jpg"),
    _ukui("fluent-color.png"),
    _ukui("goldfish.png"),
    _ukui("rhythm.jpg"),
    _ukui("rollpaper.png"),
    _ukui("string.jpg"),
    _ukui("the-mouse.jpg"),
)
ALL = "all sets"
SETS = (
    "held-out photos",
    "held-out illustrations",
    "out-of-set photos",
    "out-of-set illustrations",
)


def _display_name(path: Path) -> str:
    # Plasma's wallpapers are NAME/contents/images/WxH.png: the name is the folder's
    if path.parent.name == "images" and path.parent.parent.name == "contents":
        return path.parents[2].name
    return path.name


def image_sets() -> dict[str, list[tuple[str, np.ndarray]]]:
    """The four sets as (name, uint8 [H, W, 3]) lists, at the sizes described above.

    Raises
    ------
    FileNotFoundError
        The out-of-set or training collection's packages are missing; says what to install.
    """
    from vqedge.models.data import (
        HELD_OUT_ILLUSTRATIONS,
        WORK_SIDE,
        collection_paths,
        held_out_paths,
    )

    missing = [o.path for o in OUT_OF_SET if not Path(o.path).is_file()]
    if missing:
        raise FileNotFoundError(f"the out-of-set images are missing ({missing[0]}): {INSTALL_HINT}")

    def named(paths: list[Path], side: int | None) -> list[tuple[str, np.ndarray]]:
        return [(_display_name(Path(p)), read_image(p, downscale_to=side)) for p in paths]

    return {
        SETS[0]: named(held_out_paths(), None),
        SETS[1]: named(collection_paths(HELD_OUT_ILLUSTRATIONS), WORK_SIDE),
        SETS[2]: named([o.path for o in OUT_OF_SET if o.kind == "photo"], OUT_OF_SET_SIDE),
        SETS[3]: named([o.path for o in OUT_OF_SET if o.kind != "photo"], OUT_OF_SET_SIDE),
    }


def measure(tok: Any, sets: dict[str, list[tuple[str, np.ndarray]]]) -> dict[str, Any]:
    """Per set: each image's PSNR (dB), the mean, codes used; a multi-scale tokenizer also
    gives the mean PSNR after each prefix of scales. ``ALL`` holds the codes used over every
    set (three held-out photos hold too few tokens to show a codebook's usage)."""
    out, every = {}, []
    for set_name, images in sets.items():
        each, indices, prefixes = {}, [], []
        for name, img in images:
            if kind_of(tok).offers(NEXT_SCALE):
                img = fit_square(img, tok.resolution)
                idx_Bl = tok.img_to_idxBl(img)
                recons = tok.idxBl_to_img(idx_Bl, last_one=False)
                prefixes.append([psnr(r[0], img) for r in recons])
                each[name] = prefixes[-1][-1]
                indices.append(np.concatenate([i.ravel() for i in idx_Bl]))
            else:
                recon, idx = tok.reconstruct(img)
                each[name] = psnr(recon[0], img)
                indices.append(idx.ravel())
        entry = {"psnr": float(np.mean(list(each.values()))), "psnr_each": each}
        entry["_tokens"] = np.concatenate(indices)  # for the agreement between precisions
        entry |= codebook_stats(np.concatenate(indices), tok.codebook_size)
        if prefixes:
            entry["psnr_per_prefix"] = [float(v) for v in np.mean(prefixes, axis=0)]
        out[set_name] = entry
        every += indices
    tokens = np.concatenate(every)
    out[ALL] = {"images": sum(map(len, sets.values())), "tokens": int(tokens.size)}
    out[ALL] |= codebook_stats(tokens, tok.codebook_size)
    return out


def run(bundles: list[str], precisions: tuple[str, ...] = PRECISIONS) -> dict[str, Any]:
    """Every bundle at every precision over the four sets."""
    sets = image_sets()
    results: dict[str, Any] = {
        "sizes": {
            SETS[0]: "full size",
            SETS[1]: "longer side 1024 (as training evaluates them)",
            SETS[2]: f"longer side {OUT_OF_SET_SIDE}",
            SETS[3]: f"longer side {OUT_OF_SET_SIDE}",
        },
        "out_of_set": [asdict(o) for o in OUT_OF_SET],
        "bundles": {},
    }
    for bundle in bundles:
        per_precision = {}
        for prec in precisions:
            # measured here, tokens and PSNR, whatever the on-device check would say
            tok = load(bundle, providers="CPUExecutionProvider", precision=prec, verify=False)
            per_precision[prec] = measure(tok, sets)
        for per_set in per_precision.values():
            for s in SETS:
                ref = per_precision[precisions[0]][s]["_tokens"]
                per_set[s]["token_agreement"] = float((per_set[s]["_tokens"] == ref).mean())
        for per_set in per_precision.values():
            for s in SETS:
                del per_set[s]["_tokens"]
        results["bundles"][tok.root.name] = per_precision
    return results


def report(results: dict[str, Any]) -> str:
    """The results as markdown: one table of means per bundle, then per-image figures."""
    lines = ["# Shipped bundles: reconstruction quality per set and precision", ""]
    if "provenance" in results:
        lines += [*machine.provenance_md(results["provenance"]), ""]
    lines += [
        "Measured through the runtime (onnxruntime, CPU provider) by "
        "`python -m vqedge.benchmarks.quality`. PSNR in dB on uint8 images; sizes: "
        + "; ".join(f"{k}: {v}" for k, v in results["sizes"].items())
        + ". A multi-scale bundle sees each image fitted to its resolution (centre square, "
        "Lanczos).",
        "",
    ]
    for name, per_precision in results["bundles"].items():
        precs = list(per_precision)
        agree = [p for p in precs[1:] if "token_agreement" in per_precision[p][SETS[0]]]
        lines += [
            f"## {name}",
            "",
            "PSNR (dB) against the images per precision; tokens equal to "
            f"{precs[0]}'s per reduced precision.",
            "",
            "| set | "
            + " | ".join(precs)
            + " | codes used (fp32) |"
            + "".join(f" {p} tokens = {precs[0]} |" for p in agree),
        ]
        lines += ["| --- |" + " ---: |" * (len(precs) + 1 + len(agree))]
        for s in SETS:
            row = [f"{per_precision[p][s]['psnr']:.2f}" for p in precs]
            codes = per_precision[precs[0]][s]
            agreement = "".join(f" {per_precision[p][s]['token_agreement']:.1%} |" for p in agree)
            lines.append(f"| {s} | " + " | ".join(row) + f" | {codes['codes_used']} |" + agreement)
        fp32 = per_precision[precs[0]]
        a = fp32[ALL]
        lines += [
            "",
            f"Codes used over all {a['images']} images ({a['tokens']} tokens, fp32): "
            f"{a['codes_used']} ({100 * a['usage']:.1f}%), perplexity {a['perplexity']:.0f}.",
        ]
        if "psnr_per_prefix" in fp32[SETS[0]]:
            n = len(fp32[SETS[0]]["psnr_per_prefix"])
            lines += ["", "Mean PSNR after each prefix of scales (fp32):", ""]
            lines += ["| set | " + " | ".join(str(k + 1) for k in range(n)) + " |"]
            lines += ["| --- |" + " ---: |" * n]
            for s in SETS:
                vals = " | ".join(f"{v:.2f}" for v in fp32[s]["psnr_per_prefix"])
                lines.append(f"| {s} | {vals} |")
        lines += ["", "Per image (fp32):", "", "| set | image | PSNR |", "| --- | --- | ---: |"]
        for s in SETS:
            for img, v in fp32[s]["psnr_each"].items():
                lines.append(f"| {s} | {img} | {v:.2f} |")
        lines.append("")
    lines += ["## Out-of-set images", "", "| file | kind | package | licence | author |"]
    lines += ["| --- | --- | --- | --- | --- |"]
    for o in results["out_of_set"]:
        lines.append(
            f"| `{o['path']}` | {o['kind']} | {o['package']} | {o['licence']} | {o['author']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", action="append", help="a bundle (repeatable; default: both shipped)")
    p.add_argument("--precision", action="append", choices=PRECISIONS, help="default: all three")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for quality.json/.md")
    args = p.parse_args(argv)
    prov = machine.provenance(MODULE, argv)  # before anything is written
    try:
        results = {"provenance": prov}
        results |= run(args.bundle or list(SHIPPED), tuple(args.precision or PRECISIONS))
    except FileNotFoundError as e:
        print(f"quality: {e}", file=sys.stderr)
        return 1
    machine.finish(prov)
    machine.write_results(args.out, "quality", results, report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
