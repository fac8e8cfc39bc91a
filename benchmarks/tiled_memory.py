"""Peak memory of tiled reconstruction at large sizes, each size in a fresh process.

    python -m vqedge.benchmarks.tiled_memory [--sizes 1024 2048 4096] [--out FILE.json]

The image is a held-out photo resized to the size (real content, not noise). Peak RSS is the
process's high-water mark (ru_maxrss), import and load included.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, resource, sys, time
import numpy as np
from PIL import Image
from vqedge.runtime import load
from vqedge.runtime.metrics import psnr

path, side, tiled = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "tiled"
img = np.asarray(Image.open(path).convert("RGB").resize((side, side), Image.BICUBIC))
tok = load(max_side=max(side, 4096))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
if tiled:
    recon, idx = tok.reconstruct_tiled(img)
else:
    recon, idx = tok.reconstruct(img)
seconds = time.perf_counter() - t
print(json.dumps({
    "side": side, "tiled": tiled, "seconds": round(seconds, 2),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    "rss_after_load_mb": round(base / 1024, 1), "tokens": list(idx.shape),
    "psnr": round(psnr(recon[0], img), 2),
}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--untiled-up-to", type=int, default=2048, help="also run untiled up to this")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "tiled_memory.json"))
    args = ap.parse_args()
    from vqedge.benchmarks.machine import finish, provenance
    from vqedge.models.data import held_out_paths
    from vqedge.runtime.atomic import write_bytes_atomic

    prov = provenance("vqedge.benchmarks.tiled_memory", None)

    photo = str(held_out_paths()[0])
    rows = []
    for side in args.sizes:
        for mode in ("tiled", "untiled"):
            if mode == "untiled" and side > args.untiled_up_to:
                continue
            r = subprocess.run(
                [sys.executable, "-c", WORKER, photo, str(side), mode],
                capture_output=True, text=True, timeout=1800, check=True,
            )  # fmt: skip
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"provenance": finish(prov), "rows": rows}
    write_bytes_atomic(args.out, (json.dumps(result, indent=2) + "\n").encode())


if __name__ == "__main__":
    main()
