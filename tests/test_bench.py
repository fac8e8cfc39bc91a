"""The benchmark harness runs and writes what it promises; no timing is asserted.

`vqedge bench` (the runtime's quick check), the full comparison driver (vqedge.benchmarks.compare)
at its tiniest configuration in a subprocess, the GPU script's CPU-only path, and the two
pieces of arithmetic behind the FLOP/s columns: the FLOP count and the machine's peaks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vqedge.benchmarks import flops, machine
from vqedge.commands import main as cli

REPO = Path(__file__).resolve().parents[1]

STAGE_KEYS = {"encoder", "quantizer", "decoder", "end_to_end"}
STAT_KEYS = {"n", "median_ms", "p99_ms", "mean_ms", "min_ms", "max_ms"}


def _strict_json(path: Path) -> dict:
    """Parse as strict JSON: Infinity and NaN are not JSON."""

    def refuse(name: str):
        raise ValueError(f"{path.name} holds {name}, which is not valid JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def _run(cmd: list, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def test_vqedge_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--providers", "cpu", "--batch", "1", "--size", "64", "--iters", "3"]
    assert cli.main([*argv, "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "end to end" in printed and "images/s" in printed, printed
    r = _strict_json(out)
    for key in ("bundle", "precision", "providers_in_use", "batch", "size", "iters", "load_s",
                "first_result_s", "stages", "images_per_s", "peak_rss_mb", "versions"):  # fmt: skip
        assert key in r, key
    assert r["precision"] == "fp32" and r["batch"] == 1 and r["size"] == [64, 64]
    assert r["providers_in_use"]["encoder"][0] == "CPUExecutionProvider"
    assert set(r["stages"]) == STAGE_KEYS
    for name, s in r["stages"].items():
        assert set(s) == STAT_KEYS and s["n"] == 3, (name, s)
        assert 0 < s["min_ms"] <= s["median_ms"] <= s["p99_ms"] <= s["max_ms"], (name, s)
    assert r["images_per_s"] > 0 and r["peak_rss_mb"] > 0


def test_vqedge_bench_profile_names_the_hottest_nodes(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--providers", "cpu", "--precision", "int8", "--size", "64", "--iters", "2"]
    assert cli.main([*argv, "--profile", "4", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "hottest nodes (int8" in printed and "by op type:" in printed, printed
    prof = _strict_json(out)["profile"]
    assert len(prof["nodes"]) == 4
    ms = [n["ms"] for n in prof["nodes"]]
    assert ms == sorted(ms, reverse=True) and ms[0] > 0
    ops = {o["op_type"] for o in prof["op_types"]}
    # int8 on the CPU provider: quantized convolutions, and the float lookup
    assert "QLinearConv" in ops and "ArgMax" in ops, ops
    assert prof["providers_in_use"]["quantizer"] == ["CPUExecutionProvider"]


@pytest.mark.slow
def test_compare_driver_smallest_run(tmp_path):
    out = tmp_path / "results"
    configs = ["vqedge-cpu/fp32", "torch-eager/fp32"]
    tiny = (
        "--batches 1 --sizes 64 --min-iters 2 --max-iters 2 --target-s 0 --cold-case 1x64 "
        "--cold-runs 2 --profile-case 1x64"
    )
    cmd = [sys.executable, "-m", "vqedge.benchmarks.compare", "--configs", *configs, *tiny.split()]
    proc = _run([*cmd, "--out", out])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = _strict_json(out / "latest.json")
    assert report["threads"] >= 1 and report["cases"] == [[1, 64]]
    mach = report["machine"]
    assert mach["cpu_model"] and mach["physical_cores"] >= 1 and mach["flags"]
    assert mach["peaks"]["gflops"] is None or mach["peaks"]["gflops"]["fp32"] > 0
    assert report["interpreters"][0]["versions"]["onnxruntime"]
    assert set(report["results"]) == set(configs)
    for name, r in report["results"].items():
        assert "error" not in r, (name, r.get("error"), r.get("traceback"))
        assert r["cold"]["total_s"] > 0 and r["cold"]["peak_rss_mb"] > 0, r["cold"]
        # the median of two fresh processes: the slower one
        assert r["cold"]["total_s"] == max(r["cold"]["runs_total_s"]), r["cold"]
        (case,) = r["cases"]
        assert set(case["stages"]) == STAGE_KEYS, case
        e2e = case["stages"]["end_to_end"]
        assert e2e["n"] == 2 and 0 < e2e["median_ms"] <= e2e["p99_ms"]
        assert case["images_per_s"] > 0 and case["peak_rss_mb"] > 0
        assert case["flops"]["end_to_end"] == sum(case["flops"][s] for s in flops.STAGE_INPUT)
        assert e2e["gflops_per_s"] > 0
        q = r["quality"]
        assert 0 <= q["token_agreement"] <= 1 and q["held_out_psnr_db"] > 10, q
    assert report["quality_reference"]["reference"] == "torch-eager/fp32"
    assert report["results"]["torch-eager/fp32"]["quality"]["identical_to_reference"]
    # the runtime at fp32 reproduces the model: tokens agree but for float-rounding ties
    assert report["results"]["vqedge-cpu/fp32"]["quality"]["token_agreement"] > 0.99
    # the runtime's profile: real node times from onnxruntime's profiler, the convolutions first
    prof = report["results"]["vqedge-cpu/fp32"]["profile"]
    assert prof["size"] == [64, 64] and prof["total_ms"] > 0
    ms = [n["ms"] for n in prof["nodes"]]
    assert ms == sorted(ms, reverse=True) and ms[0] > 0
    # what runs, not how fast: the CPU provider's decoder has no ConvTranspose
    ops = {(o["graph"], o["op_type"]) for o in prof["op_types"]}
    assert ("encoder", "Conv") in ops and ("decoder", "DepthToSpace") in ops, ops
    assert ("decoder", "ConvTranspose") not in ops, ops
    assert abs(sum(o["share"] for o in prof["op_types"]) - 1) < 1e-6
    assert {o["graph"] for o in prof["op_types"]} == {"encoder", "quantizer", "decoder"}
    # targets are at batch 1 x 256, not run here: only the cold-start and RSS rows exist
    rows = {t["target"]: t for t in report["targets"]}
    assert set(rows) == {"cold start `vqedge-cpu/fp32`", "cold peak RSS `vqedge-cpu/fp32`"}
    assert all(isinstance(t["met"], bool) for t in rows.values())
    md = (out / "latest.md").read_text()
    for heading in (
        "## Machine",
        "## Targets",
        "## End to end",
        "## Per stage",
        "## Cold start and quality",
        "## Where the time goes",
    ):
        assert heading in md, heading
    for name in configs:
        assert f"| 1 | 64 | {name} |" in md, name


@pytest.mark.slow
def test_gpu_script_without_gpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = _run([sys.executable, "-m", "vqedge.benchmarks.gpu", "--out", out], timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "no GPU provider available" in proc.stderr, proc.stderr
    r = _strict_json(out)
    assert r["gpu_available"] is False
    assert "no GPU provider available" in r["message"]
    assert r["results"] == {}
    assert "CPUExecutionProvider" in r["environment"]["ort_providers"]


def test_flops_match_pytorch_counter():
    """One FLOP count for every configuration: the ONNX graphs' equals PyTorch's own."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from vqedge.models import load_pretrained
    from vqedge.runtime.tokenizer import bundle_path

    model = load_pretrained()
    counted = flops.stage_flops(bundle_path(None), 2, 64, 48)
    x = torch.zeros(2, 3, 64, 48)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        latent = model.encode(x)
    assert counted["encoder"] == fc.get_total_flops()
    idx = torch.zeros(latent.shape[0], *latent.shape[2:], dtype=torch.long)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model.decode_indices(idx)
    assert counted["decoder"] == fc.get_total_flops()
    K, C = model.quantize.num_embeddings, latent.shape[1]
    assert counted["quantizer"] == 2 * idx.numel() * K * C  # the distance matmul


@pytest.mark.parametrize(
    "vendor, family, flags, per_cycle",
    [
        # AMD Zen 4 (this project's machine): AVX-512 on 256-bit pipes, bf16 dot, VNNI
        ("AuthenticAMD", 0x19, {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni"},
         {"fp32": 32, "bf16": 64, "int8": 128}),
        # Intel Sapphire Rapids: 2 x 512-bit FMA, AMX tiles
        ("GenuineIntel", 6, {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni",
                             "amx_bf16", "amx_int8"}, {"fp32": 64, "bf16": 1024, "int8": 2048}),
        # AVX2 only
        ("GenuineIntel", 6, {"avx", "avx2", "fma"}, {"fp32": 32, "bf16": 32, "int8": 64}),
    ],
)  # fmt: skip
def test_peaks_from_flags(vendor, family, flags, per_cycle):
    p = machine.peaks(vendor, family, flags, cores=2, freq_ghz=2.5)
    assert p["per_cycle_per_core"] == per_cycle
    assert p["gflops"]["fp32"] == pytest.approx(2 * 2.5 * per_cycle["fp32"])
    assert all(p["derivation"].values())
