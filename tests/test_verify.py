"""On-device verification by fidelity tier: the shipped bundles' check sets, per-stage plans,
"auto", strict and lenient loads, verdicts that cannot be planted, bundles without a check
set, and ``vqedge verify``."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from vqedge.export.check_set import check_photo_paths
from vqedge.models.data import HELD_OUT, VALIDATION, collection, collection_paths
from vqedge.runtime import PrecisionError, load
from vqedge.runtime.fidelity import PIXELS_MIN_PSNR_DB, TOKENS_MIN_AGREEMENT
from vqedge.runtime.images import fit_square
from vqedge.runtime.inputs import read_image
from vqedge.runtime.manifest import sha256_file
from vqedge.runtime.metrics import psnr
from vqedge.runtime.providers import resolve_providers
from vqedge.runtime.session import BUNDLES_DIR, BundleSessions
from vqedge.runtime.verify import CHECK_FILE, read_check_set

SHIPPED = ("vqvae-f4", "vqvae-ms-f8")


def _copy(name, tmp_path):
    out = tmp_path / name
    shutil.copytree(BUNDLES_DIR / name, out)
    return out


def _agreement(bundle, precision):
    """The int8/fp16 encoder's agreement with the check set's fp32 tokens, measured here by
    the test itself (not through the verdict)."""
    tok = load(bundle, providers="cpu", precision=precision, verify=False)
    arrays = read_check_set(tok.root, tok.manifest)
    return float((tok.encode(arrays["image"]) == arrays["tokens"]).mean())


def _verdict_files(cache):
    out = {}
    for path in (cache / "verdicts").glob("*.json"):
        key = json.loads(path.read_text())["key"]
        out[(key["stage"], key["plan"][key["stage"]], key["tier"])] = path
    return out


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_check_sets_are_small_validation_photos_with_per_stage_figures(name):
    root = BUNDLES_DIR / name
    m = json.loads((root / "manifest.json").read_text())
    assert m["check"]["file"] == CHECK_FILE
    assert m["files"][CHECK_FILE] == sha256_file(root / CHECK_FILE)
    assert (root / CHECK_FILE).stat().st_size < 128 * 1024
    assert set(m["check"]["expected"]) == set(m["variants"])
    for figures in m["check"]["expected"].values():
        assert set(figures) == {"encoder", "decoder", "round_trip_drop_db"}
        assert set(figures["encoder"]) == {"agreement", "per_scale"}
    # from the validation split, never the held-out photos that judge the model
    validation = {c.path for c in collection(VALIDATION)}
    assert all(name in validation for name, _ in check_photo_paths())
    held_out = {f"{pkg}:{rel}" for pkg, rel in HELD_OUT}
    assert not {name for name, _ in check_photo_paths()} & held_out


@pytest.mark.parametrize("name", SHIPPED)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_each_stage_is_judged_by_its_tier(name, precision):
    """The verdict's judgement of each stage equals the rule applied to what the test
    measures itself."""
    tok = load(name, providers="cpu", precision=precision, verify=False)
    arrays = read_check_set(tok.root, tok.manifest)
    agree = float((tok.encode(arrays["image"]) == arrays["tokens"]).mean())
    recon = tok.decode(arrays["tokens"])
    vs_fp32 = np.mean([min(psnr(a, b), 99.0) for a, b in zip(arrays["reconstruction"], recon)])
    v = tok.verify()
    enc, dec = v.judgements
    assert (enc.stage, enc.tier, dec.stage, dec.tier) == ("encoder", "tokens", "decoder", "pixels")
    assert enc.figure == pytest.approx(agree) and enc.holds == (agree >= TOKENS_MIN_AGREEMENT)
    assert dec.figure == pytest.approx(vs_fp32) and dec.holds == (vs_fp32 >= PIXELS_MIN_PSNR_DB)
    assert len(enc.per_scale) == (len(tok.config.patch_nums) if name == "vqvae-ms-f8" else 0)
    if precision == "fp32":
        assert v.holds


def test_a_strict_all_int8_load_is_refused_naming_the_tokens_unless_they_hold():
    agree = _agreement("vqvae-f4", "int8")
    if agree >= TOKENS_MIN_AGREEMENT:
        assert load("vqvae-f4", providers="cpu", precision="int8").plan.encoder == "int8"
        return
    with pytest.raises(PrecisionError) as e:
        load("vqvae-f4", providers="cpu", precision="int8")
    msg = str(e.value)
    assert f"int8 encoder keeps {agree:.1%} of fp32's tokens" in msg
    assert "precision='auto'" in msg and "{'encoder': 'fp32', 'decoder': 'int8'}" in msg
    assert "encoder_tier='pixels'" in msg


# the multi-scale int8 encoder keeps about a third of fp32's tokens on any CPU measured: the
# plan the refusal and forgery tests below start from
FAILS = ("vqvae-ms-f8", "int8")


def test_lenient_falls_back_per_stage_on_the_open_sessions(monkeypatch):
    assert _agreement(*FAILS) < TOKENS_MIN_AGREEMENT
    opened = []
    real_open = BundleSessions.open.__func__

    def counted(cls, *args, **kwargs):
        opened.append(args)
        return real_open(cls, *args, **kwargs)

    monkeypatch.setattr(BundleSessions, "open", classmethod(counted))
    with pytest.warns(RuntimeWarning, match="the encoder runs fp32 instead"):
        tok = load(FAILS[0], providers="cpu", precision="int8", strict=False)
    assert len(opened) == 1  # the fallback switched the stage on the bundle already open
    assert tok.plan.to_dict() == {"encoder": "fp32", "decoder": "int8"}
    v = tok.verification
    assert v.fell_back == ("encoder",) and not v.holds and v.asked["encoder"] == "int8"
    assert "runs fp32 instead" in v.describe()
    tok.reconstruct(np.zeros((1, 128, 128, 3), np.uint8))
    files = tok.info["graph_files"]
    assert files["encoder"] == "encoder.fp32.onnx" and files["decoder"] == "decoder_cpu.int8.onnx"


def test_a_mixed_plan_runs_each_stage_from_its_variant():
    tok = load("vqvae-f4", providers="cpu", precision={"encoder": "fp32", "decoder": "int8"})
    tok.reconstruct(np.zeros((16, 16, 3), np.uint8))
    info = tok.info
    assert info["precision"] == {"encoder": "fp32", "decoder": "int8"}
    assert info["graph_files"] == {
        "encoder": "encoder.fp32.onnx",
        "quantizer": "quantizer.fp32.onnx",
        "decoder": "decoder_cpu.int8.onnx",
    }
    assert info["verification"]["holds"] and info["quality"] is None
    ms = load("vqvae-ms-f8", providers="cpu", precision={"decoder": "int8"})
    ms.decode(ms.encode(np.zeros((1, 128, 128, 3), np.uint8)))
    assert ms.info["graph_files"]["scales"] == "scales.fp32.onnx"
    assert ms.info["graph_files"]["decoder"] == "decoder_cpu.int8.onnx"


def test_encoder_tier_pixels_accepts_other_tokens_knowingly():
    tok = load("vqvae-f4", providers="cpu", precision="int8", encoder_tier="pixels")
    enc = tok.verification.judgements[0]
    assert tok.plan.encoder == "int8" and enc.tier == "pixels" and enc.holds
    with pytest.raises(ValueError, match="encoder_tier"):
        load("vqvae-f4", providers="cpu", encoder_tier="bits")


@pytest.mark.parametrize("name", SHIPPED)
def test_auto_keeps_the_tiers_on_images_outside_the_check_set(name):
    tok = load(name, providers="cpu", precision="auto")
    fp32 = load(name, providers="cpu", precision="fp32")
    v = tok.verification
    assert v.holds and tok.plan.resolved and v.asked == {"encoder": "auto", "decoder": "auto"}
    assert {t.judgement.stage for t in v.trials} == {"encoder", "decoder"}
    # the pick is the fastest candidate that holds
    for stage in ("encoder", "decoder"):
        good = [t for t in v.trials if t.judgement.stage == stage and t.judgement.holds]
        assert tok.plan.stages[stage] == min(good, key=lambda t: t.ms).judgement.precision
    # validation images, not the check set's
    side = tok.config.resolution or 128
    paths = [p for _, p in check_photo_paths()]
    # every validation image (its illustration included), the photos cropped elsewhere
    whole = [read_image(p) for p in collection_paths(VALIDATION)]
    crops = [read_image(p)[-1000:, -1000:] for p in paths]
    imgs = np.stack([fit_square(img, side) for img in [*whole, *crops]])
    ref_tokens = fp32.encode(imgs)
    assert (tok.encode(imgs) == ref_tokens).mean() >= TOKENS_MIN_AGREEMENT
    ref = fp32.decode(ref_tokens)
    got = tok.decode(ref_tokens)
    assert min(psnr(a, b) for a, b in zip(ref, got)) >= PIXELS_MIN_PSNR_DB


def test_verdicts_are_cached_private_and_reused(tmp_path):
    cache = tmp_path / "cache"
    old = os.umask(0)  # files and folders are private whatever the umask
    try:
        first = load("vqvae-f4", providers="cpu", precision="fp16", cache_dir=cache)
    finally:
        os.umask(old)
    assert not first.verification.cached
    for d in (cache, cache / "verdicts"):
        assert d.stat().st_mode & 0o777 == 0o700
    files = list((cache / "verdicts").iterdir())
    assert len(files) == 2 and all(f.stat().st_mode & 0o777 == 0o600 for f in files)
    again = load("vqvae-f4", providers="cpu", precision="fp16", cache_dir=cache)
    assert again.verification.cached
    assert again.verification.judgements == first.verification.judgements
    # other session options are another key: measured anew
    other = load("vqvae-f4", providers="cpu", precision="fp16", threads=1, cache_dir=cache)
    assert not other.verification.cached


def test_forged_verdicts_are_remeasured_and_refused(tmp_path):
    name = FAILS[0]
    cache = tmp_path / "cache"
    load(name, providers="cpu", precision="fp32", cache_dir=cache)
    with pytest.raises(PrecisionError):
        load(name, providers="cpu", precision="int8", cache_dir=cache)
    files = _verdict_files(cache)
    int8 = files[("encoder", "int8", "tokens")]
    # 1. "holds": true with the figures unchanged
    record = json.loads(int8.read_text())
    record["judgement"] |= {"holds": True, "reason": ""}
    int8.write_text(json.dumps(record))
    with pytest.raises(PrecisionError, match="int8 encoder keeps"):
        load(name, providers="cpu", precision="int8", cache_dir=cache)
    assert json.loads(int8.read_text())["judgement"]["holds"] is False  # overwritten
    # 2. fp32's verdict copied over int8's
    shutil.copy(files[("encoder", "fp32", "tokens")], int8)
    with pytest.raises(PrecisionError, match="int8 encoder keeps"):
        load(name, providers="cpu", precision="int8", cache_dir=cache)
    # 3. another bundle's verdict (its key names its manifest) copied over it
    other = tmp_path / "other-cache"
    load("vqvae-f4", providers="cpu", precision="fp32", cache_dir=other)
    planted = _verdict_files(other)[("encoder", "fp32", "tokens")]
    forged = json.loads(planted.read_text())
    forged["key"]["plan"] = {"encoder": "int8"}
    int8.write_text(json.dumps(forged))
    with pytest.raises(PrecisionError, match="int8 encoder keeps"):
        load(name, providers="cpu", precision="int8", cache_dir=cache)


def test_a_cache_others_can_write_is_not_trusted(tmp_path):
    name = FAILS[0]
    cache = tmp_path / "shared"
    with pytest.warns(RuntimeWarning, match="runs fp32 instead"):
        load(name, providers="cpu", precision="int8", strict=False, cache_dir=cache)
    int8 = _verdict_files(cache)[("encoder", "int8", "tokens")]
    record = json.loads(int8.read_text())
    record["figures"]["agreement"] = 1.0
    record["judgement"] |= {"holds": True, "reason": "", "figure": 1.0}
    int8.write_text(json.dumps(record))
    os.chmod(cache, 0o777)
    before = {p.name: p.read_bytes() for p in (cache / "verdicts").iterdir()}
    untrusted = pytest.warns(RuntimeWarning, match=f"{cache}.*not used.*group or others may")
    with untrusted, pytest.raises(PrecisionError, match="int8 encoder keeps"):
        load(name, providers="cpu", precision="int8", cache_dir=cache)
    assert {p.name: p.read_bytes() for p in (cache / "verdicts").iterdir()} == before


def _without_check_set(tmp_path):
    bundle = _copy("vqvae-f4", tmp_path)
    m = json.loads((bundle / "manifest.json").read_text())
    del m["check"], m["files"][CHECK_FILE]
    (bundle / "manifest.json").write_text(json.dumps(m))
    (bundle / CHECK_FILE).unlink()
    return bundle


def test_a_bundle_without_a_check_set_is_refused_strict_and_loads_lenient(tmp_path):
    bundle = _without_check_set(tmp_path)
    with pytest.raises(PrecisionError) as e:
        load(bundle, providers="cpu")
    msg = str(e.value)
    assert "no check set" in msg and "vqedge export" in msg and "verify=False" in msg
    assert "--no-verify" in msg
    tok = load(bundle, providers="cpu", strict=False)
    assert tok.info["verification"]["checked"] is False
    assert dict(tok.describe())["verified"] == "not verified: the bundle carries no check set"
    assert load(bundle, providers="cpu", verify=False).verification is None
    r = _vqedge("verify", str(bundle), "--providers", "cpu")
    assert r.returncode == 4 and "not verified" in r.stdout and "--no-verify" in r.stdout
    r = _vqedge("info", "--bundle", str(bundle), "--providers", "cpu")
    assert r.returncode == 1 and "no check set" in r.stderr
    r = _vqedge("info", "--bundle", str(bundle), "--providers", "cpu", "--no-verify")
    assert r.returncode == 0 and "not checked" in r.stdout


def test_a_tampered_check_set_is_named(tmp_path):
    bundle = _copy("vqvae-f4", tmp_path)
    data = dict(np.load(bundle / CHECK_FILE))
    data["tokens"] = data["tokens"][::-1].copy()
    np.savez_compressed(bundle / CHECK_FILE, **data)
    from vqedge.runtime.manifest import BundleError

    with pytest.raises(BundleError, match=CHECK_FILE):
        load(bundle, providers="cpu", cache_dir=tmp_path / "cache")


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


def test_cli_verify_prints_a_row_per_precision_and_stage(tmp_path):
    r = _vqedge("verify", "vqvae-ms-f8", "--providers", "cpu")
    lines = r.stdout.splitlines()
    assert lines[1].split()[:5] == ["precision", "stage", "provider", "tier", "figure"]
    rows = [ln.split() for ln in lines[2:8]]
    stages = (("encoder", "tokens"), ("decoder", "pixels"))
    want = [(p, s, t) for p in ("fp32", "fp16", "int8") for s, t in stages]
    assert [(x[0], x[1], x[3]) for x in rows] == want
    # the multi-scale encoder's rows end with each scale's agreement
    assert len([c for c in lines[2].split() if c.endswith("%")]) >= 10
    held = all("DOES NOT HOLD" not in ln for ln in lines[2:8])
    assert r.returncode == (0 if held else 4), r.stderr
    r = _vqedge("verify", "vqvae-f4", "--providers", "cpu", "--precision", "fp32", "--json")
    assert r.returncode == 0, r.stderr
    (v,) = json.loads(r.stdout)
    assert v["plan"] == {"encoder": "fp32", "decoder": "fp32"} and v["holds"]
    assert [j["stage"] for j in v["judgements"]] == ["encoder", "decoder"]


def test_cli_precision_per_stage():
    r = _vqedge(
        "info", "--json", "--providers", "cpu",
        "--precision", "encoder=fp32", "--precision", "decoder=int8",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["precision"] == {"encoder": "fp32", "decoder": "int8"}
    assert info["verification"]["holds"] and info["verification"]["plan"] == info["precision"]
    r = _vqedge("info", "--providers", "cpu", "--precision", "encoder=fp32", "--precision", "int8")
    assert r.returncode == 1 and "stage=precision" in r.stderr
    r = _vqedge("info", "--providers", "cpu", "--precision", "encoder=int4")
    assert r.returncode == 1 and "precision for the encoder must be one of" in r.stderr


def test_cli_encoder_tier_is_the_explicit_way_to_other_tokens():
    """A strict int8 encoder is refused by the tokens tier unless it holds here; the CLI's
    --encoder-tier pixels is how a user says they accept other tokens."""
    from vqedge.runtime import load

    tok = load("vqvae-f4", providers="cpu", precision="int8", encoder_tier="pixels")
    encoder = next(j for j in tok.verification.judgements if j.stage == "encoder")
    int8 = tok.verify()  # the tokens tier, measured here
    holds = next(j for j in int8.judgements if j.stage == "encoder").holds
    r = _vqedge("info", "--json", "--providers", "cpu", "--precision", "int8")
    assert r.returncode == (0 if holds else 1), r.stderr
    if not holds:
        assert "of fp32's tokens (tokens tier" in r.stderr
    r = _vqedge(
        "info", "--json", "--providers", "cpu", "--precision", "int8", "--encoder-tier", "pixels"
    )
    assert r.returncode == (0 if encoder.holds else 1), r.stderr
    if encoder.holds:
        assert json.loads(r.stdout)["verification"]["encoder_tier"] == "pixels"


def test_arm_cpus_are_told_apart_in_the_verdict_key(monkeypatch):
    """Arm's /proc/cpuinfo has no model name or flags: its part and Features tell a core
    without dot-product instructions from one with them."""
    from vqedge.runtime import device

    monkeypatch.setattr(device.platform, "machine", lambda: "aarch64")
    a53 = {"CPU implementer": "0x41", "CPU part": "0xd03", "Features": "fp asimd aes crc32"}
    monkeypatch.setattr(device, "_cpuinfo_fields", lambda: a53)
    sig_a53, desc_a53 = device.cpu_signature(), device.device_description()
    assert "no dot product" in desc_a53 and "part 0xd03" in desc_a53
    n1 = {"CPU implementer": "0x41", "CPU part": "0xd0c", "Features": "fp asimd asimddp i8mm"}
    monkeypatch.setattr(device, "_cpuinfo_fields", lambda: n1)
    assert device.cpu_signature() != sig_a53
    assert "asimddp, i8mm" in device.device_description()


def test_each_graph_verifies_the_weights_it_names(tmp_path):
    """A graph entry's own ``weights`` list (an export that splits weights per graph) is what
    its session checks; the variant's list stands in where a graph names none."""
    from vqedge.runtime.manifest import BundleError

    bundle = _copy("vqvae-f4", tmp_path)
    m = json.loads((bundle / "manifest.json").read_text())
    (bundle / "extra.bin").write_bytes(b"decoder-only")
    m["files"]["extra.bin"] = sha256_file(bundle / "extra.bin")
    v = m["variants"]["fp32"]
    for entry in (v["graphs"]["decoder"], v["cpu_graphs"]["decoder"]):
        entry["weights"] = ["weights.fp32.bin", "extra.bin"]
    (bundle / "manifest.json").write_text(json.dumps(m))
    (bundle / "extra.bin").write_bytes(b"tampered!!!!")
    tok = load(bundle, providers="cpu", verify=False)
    idx = tok.encode(np.zeros((16, 16, 3), np.uint8))  # the encoder names no extra.bin
    with pytest.raises(BundleError, match="extra.bin does not match its sha256"):
        tok.decode(idx)
    (bundle / "extra.bin").unlink()
    with pytest.raises(BundleError, match="extra.bin is missing"):
        load(bundle, providers="cpu", verify=False)
