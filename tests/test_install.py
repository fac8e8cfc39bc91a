"""The package as a user installs it: a built wheel, real venvs, real pip, no mocks.

One wheel is built from this checkout for the whole module. Each test makes its own venv(s)
with ``sys.executable -m venv`` and drives them through subprocesses; nothing here imports
the installed copies into the test process. Measured numbers are printed (see them with -s).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqedge.runtime import load
from vqedge.runtime.manifest import sha256_file
from vqedge.runtime.tokens import load_tokens

# every test here builds or installs into fresh venvs: minutes each
pytestmark = [pytest.mark.install, pytest.mark.slow]

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLES = REPO_ROOT / "runtime" / "bundles"
DEFAULT_BUNDLE = "vqvae-f4"
# the oldest onnxruntime that the runtime declares (pyproject: onnxruntime>=1.19)
OLDEST_ORT_FLOOR = "1.19"
OLDEST_ORT = "1.19.2"
# the base install must not pull any of these
HEAVY = ("torch", "torchvision", "gradio", "safetensors", "onnx")
ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")
PIP_TIMEOUT = 900  # a fresh machine downloads onnxruntime-openvino (~85 MB)
RUN_TIMEOUT = 300
# one module of each package the wheel must hold
PACKAGE_MODULES = (
    "vqedge/commands/main.py",
    "vqedge/commands/tokenize.py",
    "vqedge/dataset/run.py",
    "vqedge/dataset/ray_engine.py",
    "vqedge/benchmarks/quick.py",
    "vqedge/benchmarks/compare.py",
)

# Runs in a venv: argv = image path, JSON {name: load kwargs}. Encodes and decodes
# the image with each configuration and prints one JSON line with what it saw.
SNIPPET = r"""
import json, sys, time
from importlib import metadata

import numpy as np
import onnxruntime as ort
from PIL import Image

from vqedge.runtime.metrics import psnr
from vqedge.runtime.providers import ProviderError, installed_runtimes, runtime_clash
from vqedge.runtime import list_bundles, load

img = np.asarray(Image.open(sys.argv[1]).convert("RGB"))
out = {
    "prefix": sys.prefix,
    "ort": ort.__version__,
    "available": ort.get_available_providers(),
    "installed_runtimes": installed_runtimes(),
    "clash": runtime_clash(),
    "bundles": list_bundles(),
    "runs": {},
}
for name, kwargs in json.loads(sys.argv[2]).items():
    t0 = time.perf_counter()
    try:
        tok = load(**kwargs)
    except ProviderError as e:
        out["runs"][name] = {"provider_error": str(e)}
        continue
    idx = tok.encode(img)
    rec = tok.decode(idx, size=img.shape[:2])
    rec_again, idx_again = tok.reconstruct(img)
    out["runs"][name] = {
        "reconstruct_same": bool((idx_again == idx).all() and (rec_again == rec).all()),
        "tokens": idx.tolist(),
        "dtype": str(idx.dtype),
        "decoded_shape": list(rec.shape),
        "decoded_dtype": str(rec.dtype),
        "psnr": psnr(rec[0], img),
        "providers_in_use": tok.info["providers_in_use"],
        "graph_files": tok.info["graph_files"],
        "bundle": tok.info["bundle"],
        "seconds": time.perf_counter() - t0,
    }
out["torch_imported"] = "torch" in sys.modules
out["distributions"] = sorted(d.metadata["Name"].lower() for d in metadata.distributions())
print(json.dumps(out))
"""


# -- helpers ----------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    """The caller's environment without anything that would leak the test env into a venv."""
    drop = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1", PIP_NO_INPUT="1")
    return env


def _run(cmd: list, cwd: Path, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    cmd = [str(c) for c in cmd]
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (
        f"{' '.join(cmd)} exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
    )
    return proc


class Venv:
    """A fresh virtual environment made with this interpreter's venv module."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.bin = path / ("Scripts" if os.name == "nt" else "bin")
        _run([sys.executable, "-m", "venv", path], cwd=path.parent, timeout=RUN_TIMEOUT)
        self.python = self.bin / ("python.exe" if os.name == "nt" else "python")

    def pip(self, *args: str | Path) -> subprocess.CompletedProcess:
        return _run([self.python, "-m", "pip", *args], cwd=self.path, timeout=PIP_TIMEOUT)

    def packages(self) -> dict[str, str]:
        out = self.pip("list", "--format=json").stdout
        return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out)}

    def cli(self, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
        return _run([self.bin / "vqedge", *args], cwd=cwd)

    def snippet(self, image: Path, runs: dict[str, dict]) -> dict:
        # cwd is the image's folder: nothing of the checkout is importable from there
        proc = _run([self.python, "-c", SNIPPET, image, json.dumps(runs)], cwd=image.parent)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        for name, run in result["runs"].items():
            if "tokens" in run:
                run["tokens"] = np.asarray(run["tokens"], dtype=np.int64)
                assert run["dtype"] == "int64", (name, run["dtype"])
        return result


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a == b).mean())


def _assert_runs_installed_bundle(result: dict, name: str) -> None:
    """The run used the bundle inside the venv's site-packages, not the checkout's."""
    bundle = Path(result["runs"][name]["bundle"]).resolve()
    assert bundle.is_relative_to(Path(result["prefix"]).resolve()), bundle
    assert not bundle.is_relative_to(REPO_ROOT), bundle


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout; checked to ship exactly the checkout's bundle files."""
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    _run([*build, "-w", out, REPO_ROOT], cwd=out, timeout=PIP_TIMEOUT)
    wheels = list(out.glob("vqedge-*.whl"))
    assert len(wheels) == 1, wheels
    whl = wheels[0]
    with zipfile.ZipFile(whl) as zf:
        names = [n for n in zf.namelist() if not n.endswith("/")]
        shipped = {
            n.removeprefix("vqedge/runtime/bundles/"): _sha256(zf.read(n))
            for n in names
            if n.startswith("vqedge/runtime/bundles/")
        }
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    # only the one vqedge namespace reaches site-packages
    strays = [n for n in names if not n.startswith(("vqedge/", "vqedge-"))]
    assert not strays, f"the wheel installs top-level names besides vqedge: {strays}"
    # the stages beside the runtime are packages of their own; benchmark results stay behind
    for module in PACKAGE_MODULES:
        assert module in names, f"{module} is not in the wheel"
    results = [n for n in names if n.startswith("vqedge/benchmarks/results/")]
    assert not results, f"benchmark results in the wheel: {results[:3]}"
    assert re.search(r"^vqedge = vqedge\.commands\.main:main$", entry_points, flags=re.M), (
        entry_points
    )
    # every file of every bundle in the checkout is in the wheel, byte for byte, and nothing
    # else: a file the package-data globs miss, or a stale one left in build/lib by an
    # earlier in-tree build (setuptools does not clean it), would show here
    on_disk = {
        p.relative_to(BUNDLES).as_posix(): _sha256(p.read_bytes())
        for p in BUNDLES.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    missing = sorted(set(on_disk) - set(shipped))
    extra = sorted(set(shipped) - set(on_disk))
    assert not missing, f"bundle files missing from the wheel (package-data globs?): {missing}"
    assert not extra, f"files in the wheel that the checkout lacks (stale build/?): {extra}"
    changed = sorted(n for n in on_disk if on_disk[n] != shipped[n])
    assert not changed, f"bundle files differ between the wheel and the checkout: {changed}"
    manifest = json.loads((BUNDLES / DEFAULT_BUNDLE / "manifest.json").read_text())
    for rel in manifest["files"]:
        assert f"{DEFAULT_BUNDLE}/{rel}" in shipped, f"manifest names {rel}; not in the wheel"
    # the base install's dependencies: the runtime only
    requires = re.findall(r"^Requires-Dist: ([^\n;]+)$", metadata, flags=re.M)
    assert any(r.replace(" ", "") == f"onnxruntime>={OLDEST_ORT_FLOOR}" for r in requires), (
        f"the declared onnxruntime floor changed ({requires}): update OLDEST_ORT"
    )
    base = [r for r in requires if ";" not in r]
    names = {re.split(r"[<>=!~ \[(]", r, maxsplit=1)[0].lower() for r in base}
    assert not names & set(HEAVY), f"the base install requires {names & set(HEAVY)}"
    return whl


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A real photo crop, written by the test: 190 x 158, not a multiple of f=4 (pads)."""
    from skimage import data

    img = data.astronaut()[30:220, 140:298]
    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    Image.fromarray(np.ascontiguousarray(img)).save(path)
    return path


@pytest.fixture(scope="module")
def reference(photo) -> np.ndarray:
    """fp32 tokens of the photo from this (development) environment's Tokenizer."""
    import onnxruntime as ort

    tok = load(providers="cpu", precision="fp32")
    idx = tok.encode(np.asarray(Image.open(photo).convert("RGB")))
    assert idx.shape == (1, 48, 40), idx.shape
    print(f"\nreference: onnxruntime {ort.__version__} in {sys.prefix}")
    return idx


# -- 1. the base install ----------------------------------------------------------------------


def test_base_install_is_torch_free_and_matches(wheel, photo, reference, tmp_path):
    t0 = time.perf_counter()
    venv = Venv(tmp_path / "base")
    venv.pip("install", wheel)
    packages = venv.packages()
    assert packages.get("vqedge") == wheel.name.split("-")[1], packages
    for heavy in HEAVY:
        assert heavy not in packages, f"the base install pulled {heavy}: {packages}"
    assert "onnxruntime" in packages, packages

    version = venv.cli("--version", cwd=tmp_path).stdout
    assert version.strip() == f"vqedge {wheel.name.split('-')[1]}", version
    assert "tokenize" in venv.cli("--help", cwd=tmp_path).stdout
    # a command whose extra is not installed says which one, in one line, exit 1
    proc = subprocess.run(
        [str(venv.bin / "vqedge"), "tokenize", str(photo.parent), "--out", str(tmp_path / "t")],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 1, proc
    assert proc.stderr.strip() == (
        "vqedge tokenize: error: this command needs pyarrow, which the 'tokenize' extra "
        "installs: pip install 'vqedge[tokenize]'"
    ), proc.stderr

    result = venv.snippet(photo, {"default": {}})
    assert result["torch_imported"] is False
    assert not set(HEAVY) & set(result["distributions"]), result["distributions"]
    # every bundle of the checkout is installed, the default among them
    assert result["bundles"] == sorted(b.parent.name for b in BUNDLES.glob("*/manifest.json"))
    assert DEFAULT_BUNDLE in result["bundles"]
    assert result["clash"] is None, result["clash"]
    _assert_runs_installed_bundle(result, "default")
    run = result["runs"]["default"]
    assert run["decoded_shape"] == [1, 190, 158, 3] and run["decoded_dtype"] == "uint8", run
    assert np.array_equal(run["tokens"], reference), (
        f"installed onnxruntime {result['ort']} tokens differ from the dev env's at "
        f"{int((run['tokens'] != reference).sum())} of {reference.size} positions"
    )

    # the command line, end to end
    vqt, dec, rec = tmp_path / "photo.vqt", tmp_path / "dec.png", tmp_path / "rec.png"
    out = venv.cli("encode", photo, "-o", vqt, cwd=tmp_path).stdout
    assert "bits per pixel" in out, out
    tf = load_tokens(vqt, bundle_sha256=sha256_file(BUNDLES / DEFAULT_BUNDLE / "manifest.json"))
    assert np.array_equal(tf.indices, reference)
    assert tuple(tf.image_size) == (190, 158)
    venv.cli("decode", vqt, "-o", dec, cwd=tmp_path)
    out = venv.cli("reconstruct", photo, "-o", rec, cwd=tmp_path).stdout
    m = re.search(r"PSNR (\d+\.\d+) dB", out)
    assert m, out
    decoded = np.asarray(Image.open(dec))
    assert decoded.shape == (190, 158, 3)
    # decode(encode(x)) written by two commands: the same pixels
    assert np.array_equal(decoded, np.asarray(Image.open(rec)))
    assert float(m.group(1)) == pytest.approx(run["psnr"], abs=0.01)
    assert float(m.group(1)) > 12.0, out
    print(
        f"\nbase install: onnxruntime {result['ort']}, tokens identical to the dev env, "
        f"CLI PSNR {m.group(1)} dB; {time.perf_counter() - t0:.1f} s"
    )


# -- 2. the oldest onnxruntime the runtime declares -------------------------------------------


def test_oldest_declared_onnxruntime_runs_every_variant(wheel, photo, reference, tmp_path):
    t0 = time.perf_counter()
    venv = Venv(tmp_path / "oldest")
    venv.pip("install", wheel, f"onnxruntime=={OLDEST_ORT}")
    assert venv.packages()["onnxruntime"] == OLDEST_ORT
    manifest = json.loads((BUNDLES / DEFAULT_BUNDLE / "manifest.json").read_text())
    variants = sorted(manifest["variants"])
    assert set(variants) >= {"fp32", "fp16", "int8"}, variants

    # every variant's graphs run here; int8's encoder is outside the tokens tier, so each is
    # held to the pixels tier (its round trip within 0.5 dB of fp32's), which all must keep
    runs = {p: {"precision": p, "providers": "cpu", "encoder_tier": "pixels"} for p in variants}
    result = venv.snippet(photo, runs)
    assert result["ort"] == OLDEST_ORT
    assert result["torch_imported"] is False
    report = []
    for p in variants:
        run = result["runs"][p]
        assert "provider_error" not in run, run
        _assert_runs_installed_bundle(result, p)
        tokens = run["tokens"]
        assert tokens.shape == (1, 48, 40), (p, tokens.shape)
        assert tokens.min() >= 0 and tokens.max() < manifest["config"]["codebook_size"], p
        assert run["decoded_shape"] == [1, 190, 158, 3], (p, run)
        assert run["providers_in_use"]["encoder"][0] == "CPUExecutionProvider", run
        report.append(f"{p} {_agreement(tokens, reference):.4f} ({run['psnr']:.2f} dB)")
    assert np.array_equal(result["runs"]["fp32"]["tokens"], reference), (
        f"fp32 tokens on onnxruntime {OLDEST_ORT} differ from the latest at "
        f"{int((result['runs']['fp32']['tokens'] != reference).sum())} positions"
    )
    print(
        f"\nonnxruntime {OLDEST_ORT}: agreement with latest fp32: {', '.join(report)}; "
        f"{time.perf_counter() - t0:.1f} s"
    )


# -- 3. the OpenVINO flavour ------------------------------------------------------------------


def test_openvino_flavour(wheel, photo, tmp_path):
    t0 = time.perf_counter()
    venv = Venv(tmp_path / "openvino")
    venv.pip("install", "--no-deps", wheel)
    venv.pip("install", "numpy", "pillow", "onnxruntime-openvino")
    packages = venv.packages()
    assert [d for d in ORT_DISTRIBUTIONS if d in packages] == ["onnxruntime-openvino"], packages
    for heavy in HEAVY:
        assert heavy not in packages, packages

    runs = {
        "cpu": {"providers": "cpu", "precision": "fp32"},
        "ov_fp32": {"providers": "openvino", "precision": "fp32"},
        "ov_bf16": {"providers": "openvino", "precision": "bf16"},
    }
    result = venv.snippet(photo, runs)
    # bf16 is OpenVINO's alone: with only the CPU provider asked for, strict mode refuses it
    # here as under plain onnxruntime, rather than running fp32 and reporting bf16
    refused = venv.snippet(photo, {"cpu_bf16": {"providers": "cpu", "precision": "bf16"}})
    err = refused["runs"]["cpu_bf16"].get("provider_error", "")
    assert "bf16 runs on OpenVINOExecutionProvider only" in err, refused["runs"]
    assert result["clash"] is None, result["clash"]
    assert result["installed_runtimes"] == [
        f"onnxruntime-openvino=={packages['onnxruntime-openvino']}"
    ]
    assert "OpenVINOExecutionProvider" in result["available"], result["available"]
    assert result["torch_imported"] is False
    for name, run in result["runs"].items():
        # a bf16 provider that cannot be created would show here, not as a silent fallback
        assert "provider_error" not in run, (name, run["provider_error"])
        _assert_runs_installed_bundle(result, name)
        assert run["decoded_shape"] == [1, 190, 158, 3], (name, run)
        # reconstruct (staged on OpenVINO, fused graph on the CPU provider) = encode + decode
        assert run["reconstruct_same"], name
    cpu = result["runs"]["cpu"]
    assert cpu["providers_in_use"]["encoder"] == ["CPUExecutionProvider"], cpu
    for name in ("ov_fp32", "ov_bf16"):
        for graph, used in result["runs"][name]["providers_in_use"].items():
            # the nearest-code lookup runs on the CPU provider by design (providers.py)
            want = "CPUExecutionProvider" if graph == "quantizer" else "OpenVINOExecutionProvider"
            assert used[0] == want, (name, graph, used)
        # OpenVINO runs the plain decoder (its own int8 deconvolution), the CPU provider its form
        assert result["runs"][name]["graph_files"]["decoder"] == "decoder.fp32.onnx"
    assert cpu["graph_files"]["decoder"] == "decoder_cpu.fp32.onnx", cpu["graph_files"]
    fp32 = _agreement(result["runs"]["ov_fp32"]["tokens"], cpu["tokens"])
    bf16 = _agreement(result["runs"]["ov_bf16"]["tokens"], cpu["tokens"])
    assert fp32 >= 0.99, f"fp32 on OpenVINO agrees with the CPU provider on {fp32:.4f}"
    # bf16 rounds the encoder's activations, so codes near a tie change; the quantizer's
    # argmin stays at full precision (at bf16 it flipped about half of the tokens).
    assert bf16 >= 0.9, f"bf16 on OpenVINO agrees with the CPU provider on {bf16:.4f}"
    assert result["runs"]["ov_bf16"]["psnr"] > cpu["psnr"] - 1.0, result["runs"]

    # the command line picks OpenVINO by itself and sees no clash
    info = venv.cli("info", cwd=tmp_path).stdout
    assert "WARNING" not in info, info
    assert re.search(r"^precision\s+fp32$", info, flags=re.M), info
    encoder_on_ov = r"^providers\s+.*\bencoder\b\W*(on\s+)?OpenVINOExecutionProvider"
    assert re.search(encoder_on_ov, info, flags=re.M), info
    # OpenVINO runs the plain decoder, not the CPU provider's form
    (graphs,) = re.findall(r"^graphs\s+(.*)$", info, flags=re.M)
    decoder = graphs.split(", ")[-1]
    assert "decoder" in decoder and "decoder_cpu" not in decoder, info
    t_ok = time.perf_counter() - t0

    # now the mistake: the plain onnxruntime on top of the OpenVINO flavour
    venv.pip("install", "onnxruntime")
    info = venv.cli("info", cwd=tmp_path).stdout
    warning = [line for line in info.splitlines() if line.startswith("WARNING")]
    assert warning and "several onnxruntime distributions" in warning[0], info
    assert "onnxruntime-openvino" in warning[0] and "onnxruntime==" in warning[0], warning
    clash = venv.snippet(photo, {"openvino": {"providers": "openvino"}})
    assert clash["clash"] is not None
    assert "several onnxruntime distributions" in clash["clash"]
    # asking for OpenVINO now fails loudly, naming the clash, instead of running on CPU
    err = clash["runs"]["openvino"].get("provider_error", "")
    assert "OpenVINOExecutionProvider" in err and "several onnxruntime" in err, clash["runs"]
    cpu_ms = cpu["seconds"] * 1e3
    print(
        f"\nOpenVINO flavour (onnxruntime-openvino {packages['onnxruntime-openvino']}): "
        f"token agreement with the CPU provider fp32 {fp32:.4f}, bf16 {bf16:.4f}; PSNR cpu "
        f"{cpu['psnr']:.2f} / ov fp32 {result['runs']['ov_fp32']['psnr']:.2f} / ov bf16 "
        f"{result['runs']['ov_bf16']['psnr']:.2f} dB; load+encode+decode cpu {cpu_ms:.0f} ms; "
        f"{t_ok:.1f} s to the clash step, {time.perf_counter() - t0:.1f} s in all"
    )
