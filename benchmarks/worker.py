"""One benchmark configuration in its own process: ``python -m vqedge.benchmarks.worker SPEC``.

The driver (compare.py) starts one process per configuration, possibly with another
interpreter (the OpenVINO provider lives in an environment of its own), so that each one has
its own threads, its own peak RSS, and a truly cold start. Two modes: ``cold`` (import, load,
first result, then exit) and ``serve`` (load once, then time cases, run the quality pass and
profile on the driver's requests, so that the driver interleaves the configurations in
rounds). This file imports only numpy, vqedge's torch-free runtime helpers and the libraries
of its own family.

SPEC (JSON) keys: config, family ("torch", "vqedge", "openvino"), precision, compile (torch),
providers (vqedge), threads, bundle (any: single- or multi-scale, vqedge's own or an imported
family), checkpoint (the PyTorch weights), inputs (the driver's .npz), mode ("cold" or
"serve"), cold_case, out (the cold start's result JSON).
"""

from __future__ import annotations

import time

T_START = time.time()  # before any heavy import: the cold start's import time starts here

import json  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from vqedge.benchmarks.timing import (  # noqa: E402
    memory_mb,
    peak_rss_mb,
    reset_peak_rss,
    time_stages,
)
from vqedge.runtime.images import float_to_uint8, pad_to_multiple, uint8_to_float  # noqa: E402


def _variant_file(bundle: Path, variant: str, graph: str) -> Path:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return bundle / manifest["variants"][variant]["graphs"][graph]["file"]


# -- the families: load, then three stages numpy -> ... -> numpy ------------------------------


class TorchRunner:
    """PyTorch eager or torch.compile, fp32 or bf16 autocast (the quantizer stays fp32), on
    the bundle's own PyTorch model (vqedge.benchmarks.bundles.torch_model)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch

        from vqedge.benchmarks.bundles import facts, torch_model, torch_stages

        self.torch = torch
        torch.set_num_threads(spec["threads"])
        torch.set_grad_enabled(False)
        bf = facts(spec["bundle"])
        model, weights = torch_model(bf, spec.get("checkpoint"))
        self.f = bf.f
        encode, quantize, decode = torch_stages(model, bf)
        bf16 = spec["precision"] == "bf16"

        def enc(x):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return encode(x)

        def quant(z):
            return quantize(z.float())

        def dec(idx):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return decode(idx).float()

        if spec.get("compile"):
            import torch._inductor.config as inductor

            # constant-fold the weights and prepack them for oneDNN: the CPU inference setting
            inductor.freezing = True
            # static shapes: each case's shape is compiled once, in its first warm-up pass,
            # and gets code specialised to it (a deployment at fixed shapes does the same);
            # dynamic shapes would time generic code against the runtimes' per-shape plans
            enc, quant, dec = (torch.compile(fn, dynamic=False) for fn in (enc, quant, dec))
        self._enc, self._quant, self._dec = enc, quant, dec
        self.details = {
            "torch": torch.__version__,
            "model": type(model).__name__,
            "weights": weights["what"],
            "same_weights_as_bundle": weights["same_as_bundle"],
            "compile": bool(spec.get("compile")),
            "compile_options": {"dynamic": False, "inductor.freezing": True}
            if spec.get("compile")
            else None,
            "autocast": "bf16" if bf16 else None,
            "threads": torch.get_num_threads(),
        }

    def stages(self) -> list[tuple[str, Any]]:
        torch = self.torch
        return [
            ("encoder", lambda x: self._enc(torch.from_numpy(x))),
            ("quantizer", self._quant),
            ("decoder", lambda idx: self._dec(idx).numpy()),
        ]


class VqedgeRunner:
    """vqedge.runtime's Tokenizer (onnxruntime) at one provider and precision."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import onnxruntime as ort

        from vqedge.benchmarks.bundles import runtime_providers
        from vqedge.runtime import load

        providers = runtime_providers(spec["providers"], spec["threads"])
        self.tok = load(
            spec["bundle"],
            providers=providers,
            precision=spec["precision"],
            threads=spec["threads"],
            # the benchmark measures each configuration's fidelity itself (its tiers)
            verify=False,
        )
        self._spec, self._providers = spec, providers
        self.f = self.tok.f
        self.details = {"onnxruntime": ort.__version__, "providers_requested": providers}

    def stages(self) -> list[tuple[str, Any]]:
        tok = self.tok
        return [
            ("encoder", tok.encode_latent),
            ("quantizer", tok.quantize),
            ("decoder", lambda idx: tok.decode(idx, output="float")),
        ]

    def finish(self) -> None:
        self.details["providers_in_use"] = self.tok.info["providers_in_use"]

    def profile(self, batch: int, size: int, top: int) -> dict[str, Any]:
        """onnxruntime's profiler over fresh sessions: the hottest nodes."""
        from vqedge.benchmarks.profiling import profile_tokenizer

        spec = self._spec
        return profile_tokenizer(
            spec["bundle"],
            precision=spec["precision"],
            providers=self._providers,
            threads=spec["threads"],
            batch=batch,
            size=size,
            top=top,
        )


class OpenvinoRunner:
    """OpenVINO's own runtime reading the bundle's ONNX graphs (fp32, bf16 hint, int8 QDQ);
    a multi-scale bundle's decode is its scales graph (tokens -> f_hat), then its decoder.

    Every graph runs at the precision vqedge runs it at: the lookup at fp32 from the fp32
    graph, the others (the scales graph too) at the configuration's. The lookup stays in
    OpenVINO, where a user of OpenVINO would run it; vqedge runs it on onnxruntime's CPU
    provider, so the report also compares the two without the lookup."""

    # the lookup runs at full precision, from the fp32 graph (as in vqedge)
    EXACT = ("quantizer",)

    def __init__(self, spec: dict[str, Any]) -> None:
        import openvino as ov

        from vqedge.benchmarks.bundles import facts

        bundle = Path(spec["bundle"])
        bf = facts(bundle)
        self.f = bf.f
        precision = spec["precision"]
        variant = "int8" if precision == "int8" else "fp32"
        # the CPU plugin's default precision is bf16 where the CPU has bf16 units: be explicit
        hint = "bf16" if precision == "bf16" else "f32"
        core = ov.Core()

        def compile_graph(graph: str, perf_count: bool = False):
            exact = graph in self.EXACT
            cfg = {
                "INFERENCE_PRECISION_HINT": "f32" if exact else hint,
                "INFERENCE_NUM_THREADS": spec["threads"],
                "PERFORMANCE_HINT": "LATENCY",
                "PERF_COUNT": perf_count,
            }
            path = _variant_file(bundle, "fp32" if exact else variant, graph)
            return core.compile_model(core.read_model(str(path)), "CPU", cfg)

        self._compile = compile_graph
        self.graphs = bf.graphs
        self._models = {g: compile_graph(g) for g in self.graphs}
        self.details = {
            "openvino": ov.__version__,
            "variant": variant,
            "inference_precision": {
                g: m.get_property("INFERENCE_PRECISION_HINT").get_type_name()
                for g, m in self._models.items()
            },
            "threads": spec["threads"],
        }

    def stages(self) -> list[tuple[str, Any]]:
        m = self._models
        if "scales" in m:

            def dec(idx):
                return m["decoder"](m["scales"](idx)[0])[0]  # output 0 of scales: f_hat

        else:

            def dec(idx):
                return m["decoder"](idx)[0]

        return [
            ("encoder", lambda x: m["encoder"](x)[0]),
            ("quantizer", lambda z: m["quantizer"](z)[0]),
            ("decoder", dec),
        ]

    def profile(self, batch: int, size: int, top: int, iters: int = 10) -> dict[str, Any]:
        """OpenVINO's per-node performance counters (recompiled with PERF_COUNT): the hottest
        nodes (median per run), with the kernel each ran (its exec type names the precision
        and ISA)."""
        from vqedge.benchmarks.profiling import rank_nodes
        from vqedge.benchmarks.timing import synthetic_images

        x = uint8_to_float(synthetic_images(batch, size))
        runs: dict[tuple[str, str], list[float]] = {}
        facts: dict[tuple[str, str], tuple[str, str]] = {}
        y: Any = x
        for graph in self.graphs:
            req = self._compile(graph, perf_count=True).create_infer_request()
            for i in range(iters + 1):  # the first run is the warm-up
                out = req.infer({0: y})
                if i == 0:
                    continue
                for info in req.get_profiling_info():
                    if info.status.name != "EXECUTED":
                        continue
                    key = (graph, info.node_name)
                    runs.setdefault(key, []).append(info.real_time.total_seconds() * 1e3)
                    facts[key] = (info.node_type, info.exec_type)
            y = out[0]
        rows = [
            {"graph": g, "node": n, "op_type": facts[(g, n)][0], "provider": facts[(g, n)][1],
             "ms": float(np.median(ms))}
            for (g, n), ms in runs.items()
        ]  # fmt: skip
        return {"batch": batch, "size": [size, size], "iters": iters, **rank_nodes(rows, top)}


RUNNERS = {"torch": TorchRunner, "vqedge": VqedgeRunner, "openvino": OpenvinoRunner}


# -- the measurements --------------------------------------------------------------------------


def _batch(inputs: Any, batch: int, size: int) -> np.ndarray:
    imgs = inputs[f"size{size}"]  # uint8 [n, size, size, 3], the same photos for every config
    return uint8_to_float(imgs[np.arange(batch) % len(imgs)])


def _run_once(stages: list[tuple[str, Any]], x: np.ndarray, after: Any | None = None) -> Any:
    """One pass through the stages; ``after(name)`` is called as each one ends."""
    y = x
    for name, fn in stages:
        y = fn(y)
        if after is not None:
            after(name)
    return y


def _to_numpy(a: Any) -> np.ndarray:
    return a.numpy() if hasattr(a, "numpy") else np.asarray(a)


def quality(runner: Any, inputs: Any, path: str) -> int:
    """Tokens and uint8 reconstructions of the quality images (the held-out photos at full
    size, or fitted to a multi-scale bundle's resolution), saved to ``path``."""
    stages = dict(runner.stages())
    out = {}
    n = int(inputs["quality_count"])
    for i in range(n):
        img = inputs[f"quality{i}"]  # uint8 [H, W, 3]
        x = pad_to_multiple(uint8_to_float(img), runner.f)
        idx = stages["quantizer"](stages["encoder"](x))
        rec = _to_numpy(stages["decoder"](idx))[:, :, : img.shape[0], : img.shape[1]]
        out[f"tokens{i}"] = _to_numpy(idx).astype(np.int64)
        out[f"recon{i}"] = float_to_uint8(rec)[0]
    np.savez_compressed(path, **out)
    return n


def decode_references(runner: Any, inputs: Any, refs: list[str], path: str) -> int:
    """This configuration's decoder on the reference configurations' tokens of the quality
    images (``refs``: their quality files, in order): ``decoded{j}_{i}`` in ``path``, what
    the pixels tier judges against the reference's own decode."""
    dec = dict(runner.stages())["decoder"]
    torch = getattr(runner, "torch", None)  # PyTorch's stages take tensors
    out = {}
    n = int(inputs["quality_count"])
    for j, ref in enumerate(refs):
        tokens = np.load(ref)
        for i in range(n):
            h, w = inputs[f"quality{i}"].shape[:2]
            idx = tokens[f"tokens{i}"]
            if torch is not None:
                idx = torch.from_numpy(idx)
            rec = _to_numpy(dec(idx))[:, :, :h, :w]
            out[f"decoded{j}_{i}"] = float_to_uint8(rec)[0]
    np.savez_compressed(path, **out)
    return n


def time_case(stages: list[tuple[str, Any]], inputs: Any, request: dict[str, Any]) -> dict:
    """One round of one case: a warm-up pass (other configurations ran in between and took
    the caches), then ``iters`` timed passes; the seconds of each pass per stage."""
    x = _batch(inputs, request["batch"], request["size"])
    reset_peak_rss()
    times = time_stages(stages, x, request["iters"], request["iters"], 0.0, warmup=1)
    return {"times": times, "peak_rss_mb": peak_rss_mb()}


def serve(spec: dict[str, Any]) -> None:
    """Load once, then answer the driver's requests one JSON line at a time, so that the
    driver can interleave configurations round by round. Requests: ``time`` (batch, size,
    iters), ``quality`` (out), ``decode`` (refs, out), ``profile`` (batch, size), ``finish``
    (the runner's details, then exit). Replies go to the original stdout; what a library
    prints goes to stderr."""
    import os

    reply = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    inputs = np.load(spec["inputs"])
    t0 = time.perf_counter()
    try:
        runner = RUNNERS[spec["family"]](spec)
        stages = runner.stages()
        answer: dict[str, Any] = {"ready": True, "load_s": time.perf_counter() - t0}
    except Exception as e:
        answer = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    reply.write(json.dumps(answer) + "\n")
    reply.flush()
    if "error" in answer:
        return
    for line in sys.stdin:
        request = json.loads(line)
        op = request["op"]
        try:
            if op == "time":
                answer = time_case(stages, inputs, request)
            elif op == "quality":
                answer = {"images": quality(runner, inputs, request["out"])}
            elif op == "decode":
                refs, out = request["refs"], request["out"]
                answer = {"images": decode_references(runner, inputs, refs, out)}
            elif op == "profile":
                answer = {"profile": runner.profile(request["batch"], request["size"], top=8)}
            else:  # finish
                if hasattr(runner, "finish"):
                    runner.finish()
                answer = {"details": runner.details}
        except Exception as e:  # the driver records it and goes on
            answer = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(5)}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()
        if op == "finish":
            return


def cold(spec: dict[str, Any]) -> dict[str, Any]:
    """Import, load and the first result of one batch, timed from this process's start."""
    family = spec["family"]
    if family == "torch":
        import torch  # noqa: F401

        import vqedge.models  # noqa: F401
    elif family == "vqedge":
        import onnxruntime  # noqa: F401

        import vqedge.runtime.tokenizer  # noqa: F401
    else:
        import openvino  # noqa: F401
    t_imported = time.time()
    # where the peak comes from: resident memory after each step of the cold start
    memory = [{"step": "import", **memory_mb()}]
    runner = RUNNERS[family](spec)
    t_loaded = time.time()
    memory.append({"step": "load", **memory_mb()})
    batch, size = spec["cold_case"]
    x = _batch(np.load(spec["inputs"]), batch, size)
    t_input = time.time()
    _run_once(runner.stages(), x, after=lambda name: memory.append({"step": name, **memory_mb()}))
    t_first = time.time()
    return {
        "t_start": T_START,
        "import_s": t_imported - T_START,
        "load_s": t_loaded - t_imported,
        "first_result_s": t_first - t_input,
        "in_process_s": t_first - T_START - (t_input - t_loaded),
        "t_first": t_first,
        "input_prep_s": t_input - t_loaded,
        "peak_rss_mb": peak_rss_mb(),
        "memory": memory,
        "case": [batch, size],
    }


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[1]).read_text())
    if spec["mode"] == "serve":
        serve(spec)
        return 0
    try:
        result = cold(spec)
        status = 0
    except Exception as e:
        result = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        status = 1
    result.update(config=spec["config"], mode=spec["mode"], python=sys.executable)
    Path(spec["out"]).write_text(json.dumps(result, indent=1))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
