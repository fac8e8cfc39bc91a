"""The comparison on a GPU machine, in a few minutes: ``python -m vqedge.benchmarks.gpu``.

It runs the shipped default bundle and every ``--bundle DIR`` given (any bundle: vqedge's own
or an imported family's, single- or multi-scale at its resolution), each against its own
PyTorch model (``vqedge.benchmarks.bundles.torch_model``; ``--checkpoint`` applies to the
first ``--bundle``).

vqedge.runtime on the CUDA provider (fp32; the latent stays on the device between encoder
and quantizer by IO binding) and on the TensorRT provider (fp16 engines), against PyTorch CUDA
eager (fp32, fp16 autocast) and torch.compile (fp32, fp16 autocast), at batch 1 and 64 of
256x256 images. Numpy in, numpy out for everyone: host-device copies are part of the time.
Per stage and end to end (for vqedge, end to end is ``decode(encode(x))``, the IO-bound
path), median and p99, images per second, GPU memory, and quality against PyTorch fp32 on
the held-out photos resized to the benchmark size. TF32 is off on both sides unless
``--tf32``. Each stage is judged by its fidelity tier (vqedge.runtime.fidelity: the encoder's
tokens, the decoder's decode of fp32's tokens), and ``plans`` gives per runtime the fastest
in-tier encoder and decoder and their round trip, composed from the stage times.

Needs onnxruntime-gpu (not beside plain onnxruntime) and a CUDA build of torch. Without any
GPU provider it says so, writes a JSON saying so, and exits with status 3.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from vqedge.benchmarks import machine
from vqedge.benchmarks.bundles import BundleFacts, facts
from vqedge.benchmarks.timing import E2E, summarize, synthetic_images, time_stages
from vqedge.runtime.images import float_to_uint8, uint8_to_float
from vqedge.runtime.kind import NEXT_SCALE
from vqedge.runtime.metrics import psnr

HERE = Path(__file__).resolve().parent

EXIT_NO_GPU = 3
GPU_EPS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
CONFIGS = (
    "vqedge-cuda/fp32",
    "vqedge-cuda/fp16",
    "vqedge-tensorrt/fp16",
    "torch-eager/fp32",
    "torch-eager/fp16",
    "torch-compile/fp32",
    "torch-compile/fp16",
)
REFERENCE = "torch-eager/fp32"


def what_is_there() -> dict[str, Any]:
    """onnxruntime's GPU providers and torch's CUDA device, as far as they can be seen."""
    out: dict[str, Any] = {}
    try:
        import onnxruntime as ort

        from vqedge.runtime.providers import installed_runtimes, runtime_clash

        out["onnxruntime"] = ort.__version__
        out["ort_providers"] = ort.get_available_providers()
        out["ort_distributions"] = installed_runtimes()
        out["ort_clash"] = runtime_clash()
    except ImportError as e:
        out["ort_error"] = str(e)
        out["ort_providers"] = []
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.cuda.is_available()
        if out["torch_cuda"]:
            out["device"] = torch.cuda.get_device_name(0)
    except ImportError:
        out["torch"] = None
        out["torch_cuda"] = False
    return out


def no_gpu_message(there: dict[str, Any]) -> str:
    ort_part = (
        f"onnxruntime {there.get('onnxruntime')} ({', '.join(there.get('ort_distributions', []))})"
        f" offers {', '.join(there['ort_providers']) or 'nothing'}"
        if "onnxruntime" in there
        else f"onnxruntime is not importable ({there.get('ort_error')})"
    )
    torch_part = f"torch {there['torch']} sees no CUDA device" if there.get("torch") else "no torch"
    msg = (
        f"no GPU provider available: {ort_part}; {torch_part}. Install onnxruntime-gpu (in "
        "place of onnxruntime) and a CUDA build of torch on a machine with an NVIDIA GPU."
    )
    if there.get("ort_clash"):
        msg += f" Note: {there['ort_clash']}"
    return msg


def bench_inputs(size: int, batches: list[int]) -> tuple[dict[int, np.ndarray], str]:
    """uint8 batches of the held-out photos resized to size x size (synthetic without them)."""
    try:
        from PIL import Image

        from vqedge.models.data import held_out_paths
        from vqedge.runtime.inputs import read_image

        photos = [
            np.asarray(Image.fromarray(read_image(p)).resize((size, size), Image.BICUBIC))
            for p in held_out_paths()
        ]
        source = "held-out photos resized (bicubic)"
    except (ImportError, FileNotFoundError):
        photos = list(synthetic_images(3, size))
        source = "synthetic images (the held-out photos need vqedge[train])"
    stack = np.stack(photos)
    return {b: stack[np.arange(b) % len(stack)] for b in batches}, source


# -- the configurations -----------------------------------------------------------------------


def vqedge_stages(
    name: str, bf: BundleFacts, size: int, batches: list[int], cache: str, tf32: bool
):
    from vqedge.runtime import load

    precision = "fp32"
    if name.startswith("vqedge-cuda"):
        # TF32 convolutions are onnxruntime's CUDA default, as they are PyTorch's (cuDNN)
        providers: Any = [("CUDAExecutionProvider", {"use_tf32": "1" if tf32 else "0"})]
        precision = name.split("/")[1]  # the bundle's fp16 graphs
    else:  # TensorRT fp16 engines, one optimization profile covering every batch
        C, h, lo, hi = bf.code_dim, size // bf.f, min(batches), max(batches)

        def profile(b: int) -> dict[str, str]:
            if bf.offers(NEXT_SCALE):
                s = bf.scales[-1]
                return {
                    "image": f"image:{b}x3x{size}x{size}",
                    "latent": f"latent:{b}x{C}x{s}x{s}",
                    "indices": f"indices:{b}x{bf.num_tokens}",
                    "f_hat": f"f_hat:{b}x{C}x{s}x{s}",
                }
            return {
                "image": f"image:{b}x3x{size}x{size}",
                "latent": f"latent:{b}x{C}x{h}x{h}",
                "indices": f"indices:{b}x{h}x{h}",
            }

        # one string for the graphs: each graph's input is looked up by its name
        opts = {
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache,
            "trt_profile_min_shapes": ",".join(profile(lo).values()),
            "trt_profile_opt_shapes": ",".join(profile(hi).values()),
            "trt_profile_max_shapes": ",".join(profile(hi).values()),
        }
        providers = [("TensorrtExecutionProvider", opts), "CUDAExecutionProvider"]
    # the benchmark measures each configuration's fidelity itself (benchmarks/fidelity.py)
    tok = load(str(bf.path), providers=providers, precision=precision, verify=False)
    stages = [
        ("encoder", tok.encode_latent),
        ("quantizer", tok.quantize),
        ("decoder", lambda idx: tok.decode(idx, output="float")),
    ]
    # end to end through the IO-bound path: the latent never leaves the GPU
    e2e = [("end_to_end_io_bound", lambda x: tok.decode(tok.encode(x), output="float"))]
    details = {"io_binding": getattr(tok, "io_binding", None), "providers": str(providers)}
    details["_decode"] = lambda idx: tok.decode(idx, output="float")
    return stages, e2e, details, tok


def torch_stages(name: str, bf: BundleFacts, checkpoint: str | None, tf32: bool):
    import torch

    from vqedge.benchmarks.bundles import torch_model
    from vqedge.benchmarks.bundles import torch_stages as split_stages

    torch.set_grad_enabled(False)
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    model, weights = torch_model(bf, checkpoint)
    model = model.cuda()
    encode, quantize, decode = split_stages(model, bf)
    fp16 = name.endswith("fp16")

    def enc(x):
        with torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
            return encode(x)

    def quant(z):
        return quantize(z.float())

    def dec(idx):
        with torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
            return decode(idx).float()

    if name.startswith("torch-compile"):
        enc, quant, dec = (torch.compile(fn) for fn in (enc, quant, dec))

    def synced(fn):
        def run(x):
            y = fn(x)
            torch.cuda.synchronize()
            return y

        return run

    stages = [
        ("encoder", synced(lambda x: enc(torch.from_numpy(x).cuda()))),
        ("quantizer", synced(quant)),
        ("decoder", lambda idx: dec(idx).cpu().numpy()),  # the copy to the host syncs
    ]

    def decode_numpy(idx: np.ndarray) -> np.ndarray:  # the pixels tier decodes fp32's tokens
        return dec(torch.from_numpy(idx).cuda()).cpu().numpy()

    details = {
        "torch": torch.__version__,
        "autocast": "fp16" if fp16 else None,
        "weights": weights["what"],
        "same_weights_as_bundle": weights["same_as_bundle"],
    }
    details["_decode"] = decode_numpy
    return stages, [], details, None


def measure(
    name: str,
    args: argparse.Namespace,
    bf: BundleFacts,
    size: int,
    checkpoint: str | None,
    inputs: dict[int, np.ndarray],
    cache: str,
):
    t0 = time.perf_counter()
    if name.startswith("vqedge"):
        stages, extra, details, tok = vqedge_stages(name, bf, size, args.batches, cache, args.tf32)
        details["providers_in_use"] = tok.info["providers_in_use"]
    else:
        stages, extra, details, _ = torch_stages(name, bf, checkpoint, args.tf32)
    decode = details.pop("_decode")
    out: dict[str, Any] = {"load_s": time.perf_counter() - t0, "details": details, "cases": []}
    for b, imgs in inputs.items():
        x = uint8_to_float(imgs)
        t0 = time.perf_counter()
        y = x
        for _, fn in stages:
            y = fn(y)
        first = time.perf_counter() - t0  # engine builds, autotuning, compilation
        times = time_stages(stages, x, args.iters, args.iters, 0.0, warmup=2)
        case = {"batch": b, "size": size, "first_result_s": first}
        case["stages"] = {k: summarize(v) for k, v in times.items()}
        if extra:
            t = time_stages(extra, x, args.iters, args.iters, 0.0, warmup=2)
            case["stages"]["end_to_end_io_bound"] = summarize(t["end_to_end_io_bound"])
        best = min(s["median_ms"] for k, s in case["stages"].items() if k.startswith(E2E))
        case["images_per_s"] = b / (best / 1e3)
        out["cases"].append(case)
        print(f"  {name} batch {b}: {best:.2f} ms, {case['images_per_s']:.0f} img/s", flush=True)
    # quality: the largest batch's images, tokens and reconstructions for the comparison
    x = uint8_to_float(inputs[max(inputs)])
    y = x
    for stage, fn in stages:
        y = fn(y)
        if stage == "quantizer":
            tokens = y.cpu().numpy() if hasattr(y, "cpu") else np.asarray(y)
    out["_tokens"], out["_recon"] = tokens, float_to_uint8(np.asarray(y))
    out["_decode"] = decode
    return out


def add_quality(results: dict[str, Any], originals: np.ndarray) -> str | None:
    """Token agreement and PSNR against PyTorch fp32 (against ``vqedge-cuda/fp32`` for the
    bundle's configurations when PyTorch runs other weights than the bundle's), and each
    stage judged by its tier (``vqedge.benchmarks.fidelity.judge``): the encoder by its
    tokens, the decoder by its decode of the reference's tokens."""
    from vqedge.benchmarks.fidelity import judge
    from vqedge.runtime.fidelity import PSNR_CAP_DB

    kept = {n: (r.pop("_tokens"), r.pop("_recon"), r.pop("_decode")) for n, r in results.items()}

    def same(n: str) -> bool:
        return results[n]["details"].get("same_weights_as_bundle", True)

    torch_same = REFERENCE in kept and same(REFERENCE)
    bundle_ref = REFERENCE if torch_same else ("vqedge-cuda/fp32" if "vqedge-cuda/fp32" in kept
                                                else None)  # fmt: skip
    for n, (tokens, recon, decode) in kept.items():
        ref = bundle_ref if same(n) else REFERENCE
        if ref not in kept:
            continue
        ref_tokens, ref_recon, _ = kept[ref]
        vs_ref = psnr(recon, ref_recon)
        dec_db = psnr(float_to_uint8(np.asarray(decode(ref_tokens))), ref_recon)
        q = results[n]["quality"] = {
            "reference": ref,
            "token_agreement": float((tokens == ref_tokens).mean()),
            "psnr_vs_reference_db": vs_ref if np.isfinite(vs_ref) else None,
            "identical_to_reference": bool(not np.isfinite(vs_ref)),
            "decoder_psnr_vs_reference_db": min(float(dec_db), PSNR_CAP_DB),
            "psnr_vs_input_db": psnr(recon, originals),
        }
        q["tiers"] = judge(n.split("/")[1], q)
    return bundle_ref


def plan(results: dict[str, Any], batch: int) -> dict[str, Any]:
    """Per runtime (vqedge-cuda, torch-eager, ...): the fastest encoder (with the lookup) in
    the tokens tier and the fastest decoder in the pixels tier at ``batch``, and their round
    trip composed from the stage times."""
    from vqedge.benchmarks.fidelity import in_tier

    def ms(n: str, stages: tuple[str, ...]) -> float | None:
        case = next((c for c in results[n]["cases"] if c["batch"] == batch), None)
        return sum(case["stages"][s]["median_ms"] for s in stages) if case else None

    out: dict[str, Any] = {}
    for runtime in sorted({n.split("/")[0] for n in results}):
        names = [n for n in results if n.split("/")[0] == runtime and ms(n, ("encoder",))]
        enc = [n for n in names if in_tier(results[n], "encoder")]
        dec = [n for n in names if in_tier(results[n], "decoder")]
        if not (enc and dec):
            out[runtime] = None
            continue
        e = min(enc, key=lambda n: ms(n, ("encoder", "quantizer")))
        d = min(dec, key=lambda n: ms(n, ("decoder",)))
        out[runtime] = {
            "encoder": e,
            "decoder": d,
            "round_trip_ms": ms(e, ("encoder", "quantizer")) + ms(d, ("decoder",)),
            "composed": e != d,
        }
    return out


def _parser() -> argparse.ArgumentParser:
    d = argparse.ArgumentDefaultsHelpFormatter
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=d)
    p.add_argument(
        "--bundle",
        action="append",
        default=[],
        help="a bundle to run after the shipped default (repeat for more)",
    )
    p.add_argument("--no-default", action="store_true", help="only the --bundle bundles")
    p.add_argument(
        "--checkpoint",
        default=None,
        help="PyTorch weights of the first --bundle (of the shipped default without one); "
        "an imported family without it gets seeded random weights",
    )
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--size", type=int, default=256, help="single-scale bundles' image side")
    p.add_argument("--iters", type=int, default=30, help="timed iterations per case")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--budget-s", type=float, default=420, help="skip configurations after this")
    p.add_argument("--out", default=str(HERE / "results" / "gpu-latest.json"))
    p.add_argument(
        "--tf32",
        action="store_true",
        help="TF32 convolutions on both sides (the CUDA default of both; off here: TF32 "
        "rounds inputs to 10-bit mantissas and flips tokens fp32 keeps)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    prov = machine.provenance("vqedge.benchmarks.gpu", argv)  # before anything is written
    t_begin = time.time()
    there = what_is_there()
    ort_gpu = [e for e in GPU_EPS if e in there["ort_providers"]]
    chosen = ([] if args.no_default else [None]) + list(args.bundle)
    if not chosen:
        p.error("--no-default needs at least one --bundle")
    bundles: list[BundleFacts] = []
    for b in chosen:
        bf = facts(b)
        if bf.path not in [x.path for x in bundles]:
            bundles.append(bf)
    report: dict[str, Any] = {
        "provenance": prov,
        "gpu_available": None,
        "message": None,
        "environment": there,
        "versions": machine.versions(),
        "host": {k: v for k, v in machine.describe().items() if k != "flags"},
        "bundles": [
            {
                "name": bf.name,
                "path": str(bf.path),
                "kind": bf.kind,
                "family": bf.family,
                "size": bf.resolution or args.size,
            }
            for bf in bundles
        ],
        "batches": args.batches,
        "iters": args.iters,
        "tf32": args.tf32,
        "results": {},  # bundle name -> configuration -> result
        "skipped": {},
    }
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)

    def write(status: int) -> int:
        report["wall_s"] = time.time() - t_begin
        out_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
        print(f"wrote {out_path}")
        return status

    if not ort_gpu and not there["torch_cuda"]:
        msg = no_gpu_message(there)
        print(f"vqedge gpu benchmark: {msg}", file=sys.stderr)
        report.update(gpu_available=False, message=msg)
        return write(EXIT_NO_GPU)

    needs = {
        "vqedge-cuda": "CUDAExecutionProvider" in ort_gpu,
        "vqedge-tensorrt": "TensorrtExecutionProvider" in ort_gpu,
        "torch-eager": there["torch_cuda"],
        "torch-compile": there["torch_cuda"],
    }
    checkpoint_for = bundles[1] if args.bundle and not args.no_default else bundles[0]
    for bf in bundles:
        size = bf.resolution or args.size
        inputs, source = bench_inputs(size, args.batches)
        results: dict[str, Any] = {}
        skipped: dict[str, str] = {}
        report["results"][bf.name], report["skipped"][bf.name] = results, skipped
        report.setdefault("inputs", source)
        checkpoint = args.checkpoint if bf is checkpoint_for else None
        print(f"bundle {bf.name} ({bf.kind}) at {size}x{size}", flush=True)
        with tempfile.TemporaryDirectory(prefix="vqedge-trt-") as cache:
            for name in args.configs:
                if not needs[name.split("/")[0]]:
                    skipped[name] = "its GPU provider is not available here"
                    continue
                if time.time() - t_begin > args.budget_s:
                    skipped[name] = f"past --budget-s {args.budget_s:.0f}"
                    continue
                print(name, flush=True)
                try:
                    results[name] = measure(name, args, bf, size, checkpoint, inputs, cache)
                except Exception as e:  # a provider that cannot load is a result, not a crash
                    skipped[name] = f"{type(e).__name__}: {e}"
                    traceback.print_exc()
        add_quality(results, inputs[max(inputs)])
        report.setdefault("plans", {})[bf.name] = {b: plan(results, b) for b in args.batches}
    ran = {b: r for b, r in report["results"].items() if r}
    report["gpu_available"] = bool(ran)
    if not ran:
        report["message"] = "no GPU configuration could run: " + "; ".join(
            f"{b}: {k}: {v}" for b, sk in report["skipped"].items() for k, v in sk.items()
        )
        print(f"vqedge gpu benchmark: {report['message']}", file=sys.stderr)
        return write(EXIT_NO_GPU)
    return write(0)


if __name__ == "__main__":
    sys.exit(main())
