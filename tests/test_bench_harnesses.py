"""The results harnesses that `make bench` runs: their cold-start clock and arithmetic, on the
shipped bundle (real sessions, small sizes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vqedge.benchmarks import int8_recipe, verify_cost


def test_verify_cost_times_the_cold_start_from_launch(tmp_path):
    r = verify_cost._run("vqvae-f4", "fp32", "no check", Path(tmp_path))
    # the launch clock covers the interpreter's start and imports the child cannot see
    assert r["cold_start_s"] >= r["in_process_s"] > 0
    assert r["import_s"] > 0 and r["check_s"] == 0.0


def test_int8_recipe_rows_compare_each_recipe_with_fp32():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    idx = rng.integers(0, 16, (2, 1, 2, 2))
    flipped = idx.copy()
    flipped[0, 0, 0, 0] += 1  # one token of eight differs
    recon = images ^ 1  # every value off by one: 48.13 dB
    out = {"fp32/indices": idx, "fp32/recon": recon, "a/indices": flipped, "a/recon": recon}
    (row,) = int8_recipe.compare(out, images, ["a"])
    assert row["recipe"] == "a" and row["token_agreement"] == 0.875
    assert row["fp32_db"] == 48.13 and row["int8_drop_db"] == 0.0
    assert row["int8_vs_fp32_db"] is None  # identical images: no finite PSNR


def test_int8_recipe_runs_the_shipped_graphs_on_the_cpu_provider():
    from vqedge.runtime.session import bundle_path

    folder = Path(bundle_path("vqvae-f4"))
    images = np.random.default_rng(1).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    graphs = {g: str(folder / f"{g}.fp32.onnx") for g in int8_recipe.GRAPHS}
    r = int8_recipe.run_graphs(graphs, images, "cpu")
    assert r["indices"].shape == (1, 1, 8, 8) and r["recon"].shape == images.shape
