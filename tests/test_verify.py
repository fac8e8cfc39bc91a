"""On-device verification: the shipped bundles' check sets, the verdict cache, strict and
lenient loads of a precision that does not hold, and ``vqedge verify``."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from vqedge.runtime import PrecisionError, load
from vqedge.runtime.manifest import BundleError, sha256_file
from vqedge.runtime.providers import resolve_providers
from vqedge.runtime.session import BUNDLES_DIR
from vqedge.runtime.verify import (
    CHECK_FILE,
    FP32_MIN_AGREEMENT,
    PSNR_BAR_DB,
    check_tokenizer,
    judge,
    verdict_path,
)

SHIPPED = ("vqvae-f4", "vqvae-ms-f8")


def _copy(name, tmp_path):
    out = tmp_path / name
    shutil.copytree(BUNDLES_DIR / name, out)
    return out


def _promise(bundle, precision, **expected):
    """Rewrite what the bundle's manifest promises for ``precision`` on its check set."""
    path = bundle / "manifest.json"
    m = json.loads(path.read_text())
    m["check"]["expected"][precision].update(expected)
    path.write_text(json.dumps(m))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_bundles_carry_a_small_check_set_listed_with_its_sha256(name):
    root = BUNDLES_DIR / name
    m = json.loads((root / "manifest.json").read_text())
    assert m["check"]["file"] == CHECK_FILE
    assert m["files"][CHECK_FILE] == sha256_file(root / CHECK_FILE)
    assert (root / CHECK_FILE).stat().st_size < 256 * 1024
    assert set(m["check"]["expected"]) == set(m["variants"])
    assert "reduce_range" in m["variants"]["int8"]["recipe"]["weights"]


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_every_shipped_precision_holds_on_this_cpu(name, precision):
    """Measured here: the tokens and PSNR the bundle promises, on whatever CPU runs this."""
    tok = load(name, providers="cpu", precision=precision, verify=False)
    r = tok.verify()
    assert r.holds, r.reason
    if precision == "fp32":
        assert r.agreement >= FP32_MIN_AGREEMENT
    else:
        assert r.psnr_drop_db <= PSNR_BAR_DB


def test_load_checks_once_then_reads_the_cached_verdict(tmp_path, monkeypatch):
    monkeypatch.setenv("VQEDGE_CACHE_DIR", str(tmp_path / "cache"))
    tok = load("vqvae-f4", providers="cpu", precision="int8")
    first = tok.info["verification"]
    assert first["holds"] and not first["cached"] and first["precision"] == "int8"
    assert verdict_path(tok).is_file()
    again = load("vqvae-f4", providers="cpu", precision="int8")
    assert again.info["verification"]["cached"]
    assert again.info["verification"]["agreement"] == first["agreement"]
    # another precision is another combination: checked anew
    fp32 = load("vqvae-f4", providers="cpu", precision="fp32")
    assert not fp32.info["verification"]["cached"]


def test_a_precision_that_does_not_hold_is_refused_when_strict(tmp_path, monkeypatch):
    monkeypatch.setenv("VQEDGE_CACHE_DIR", str(tmp_path / "cache"))
    bundle = _copy("vqvae-f4", tmp_path)
    _promise(bundle, "int8", agreement=1.0)  # int8 really agrees on ~85-90% here
    with pytest.raises(PrecisionError) as e:
        load(bundle, providers="cpu", precision="int8")
    msg = str(e.value)
    assert "int8 on " in msg and "tokens agree with fp32 on" in msg
    assert "the bundle promises 100%" in msg and "precision='fp32'" in msg


def test_a_precision_that_does_not_hold_falls_back_to_fp32_when_lenient(tmp_path, monkeypatch):
    monkeypatch.setenv("VQEDGE_CACHE_DIR", str(tmp_path / "cache"))
    bundle = _copy("vqvae-f4", tmp_path)
    _promise(bundle, "int8", agreement=0.99)
    with pytest.warns(RuntimeWarning, match="running fp32 instead"):
        tok = load(bundle, providers="cpu", precision="int8", strict=False)
    assert tok.precision == "fp32"
    v = tok.info["verification"]
    assert v["fell_back_to"] == "fp32" and v["precision"] == "int8" and not v["holds"]
    assert "the bundle promises 99%" in v["reason"]
    rows = dict(tok.describe())
    assert "does NOT hold" in rows["verified"] and "running fp32" in rows["verified"]


def test_judge_rules():
    ok = {"agreement": 0.9, "psnr_drop_db": 0.05}
    assert judge("int8", ok, {"agreement": 0.92, "psnr_drop_db": 0.03}) == ""
    # the broken int8 of a CPU without VNNI under the old recipe: 61% and 3.1 dB
    bad = {"agreement": 0.61, "psnr_drop_db": 3.1}
    why = judge("int8", bad, {"agreement": 0.87, "psnr_drop_db": 0.03})
    assert "3.10 dB below fp32" in why and "61%" in why and "87%" in why
    # an imported model whose int8 already lost 2 dB at export keeps that promise
    assert judge("int8", {"agreement": 0.5, "psnr_drop_db": 2.1}, {"psnr_drop_db": 2.0}) == ""
    assert judge("fp32", {"agreement": 0.97, "psnr_drop_db": 0.0}, None)  # TF32-like flips


def test_a_tampered_check_set_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("VQEDGE_CACHE_DIR", str(tmp_path / "cache"))
    bundle = _copy("vqvae-f4", tmp_path)
    data = dict(np.load(bundle / CHECK_FILE))
    data["tokens"] = data["tokens"][::-1].copy()
    np.savez_compressed(bundle / CHECK_FILE, **data)
    with pytest.raises(BundleError, match=CHECK_FILE):
        load(bundle, providers="cpu")


def test_a_bundle_without_a_check_set_loads_and_says_it_is_unchecked(tmp_path, monkeypatch):
    monkeypatch.setenv("VQEDGE_CACHE_DIR", str(tmp_path / "cache"))
    bundle = _copy("vqvae-f4", tmp_path)
    m = json.loads((bundle / "manifest.json").read_text())
    del m["check"], m["files"][CHECK_FILE]
    (bundle / "manifest.json").write_text(json.dumps(m))
    (bundle / CHECK_FILE).unlink()
    tok = load(bundle, providers="cpu", precision="int8")
    assert tok.info["verification"]["checked"] is False
    assert check_tokenizer(tok) is None
    assert "not checked" in dict(tok.describe())["verified"]


def test_cuda_runs_without_tf32_unless_asked():
    assert resolve_providers("cuda", "fp32") == [("CUDAExecutionProvider", {"use_tf32": "0"})]
    asked = [("CUDAExecutionProvider", {"use_tf32": "1", "device_id": "1"})]
    assert resolve_providers(asked, "fp32") == [
        ("CUDAExecutionProvider", {"use_tf32": "1", "device_id": "1"})
    ]


def _vqedge(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "vqedge.commands.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_cli_verify_prints_its_table_and_exit_status(tmp_path):
    r = _vqedge("verify", "vqvae-f4", "--providers", "cpu")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "tokens agree" in lines[1] and "promised" in lines[1]
    assert [ln.split()[0] for ln in lines[2:5]] == ["fp32", "fp16", "int8"]
    assert all(ln.rstrip().endswith("holds") for ln in lines[2:5])
    bundle = _copy("vqvae-f4", tmp_path)
    _promise(bundle, "int8", agreement=1.0)
    r = _vqedge("verify", str(bundle), "--providers", "cpu", "--precision", "int8", "--json")
    assert r.returncode == 4, r.stderr
    (result,) = json.loads(r.stdout)
    assert result["precision"] == "int8" and not result["holds"]
    assert result["expected_agreement"] == 1.0
