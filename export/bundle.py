"""Write a validated, self-describing bundle: graphs, variants, codebook and manifest.

Everything is written into a temporary folder beside the output and moved into place only
when every check passed, so a failed export leaves the output path as it was.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from vqedge.export.graphs import (
    EXPORTER,
    OPSET,
    DecoderGraph,
    EncoderGraph,
    QuantizerGraph,
    export_graph,
)
from vqedge.export.validate import ExportValidationError, format_report, session, validate_fp32
from vqedge.export.variants import fuse, phase_convolutions, to_fp16, to_int8
from vqedge.models.checkpoint import DEFAULT_PRETRAINED, load_model
from vqedge.models.data import default_train_paths, held_out_paths
from vqedge.models.vqvae import VQVAE
from vqedge.runtime.images import float_to_uint8, pad_to_multiple, uint8_to_float
from vqedge.runtime.inputs import read_image
from vqedge.runtime.manifest import FORMAT, FORMAT_VERSION, MANIFEST, SIZE_POLICY, sha256_file
from vqedge.runtime.metrics import psnr

# the int8 variant may lose at most this much held-out PSNR against fp32
INT8_MAX_PSNR_DROP = 0.5
# the oldest onnxruntime the runtime declares; opset and IR version must load there
MIN_ONNXRUNTIME = "1.19"
MAX_IR_VERSION = 10
MAX_OPSET = 21


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    try:
        out["vqedge"] = metadata.version("vqedge")
    except metadata.PackageNotFoundError:
        out["vqedge"] = "unknown"
    return out


def _validation_images(f: int) -> list[torch.Tensor]:
    """Real held-out photos at full size and at sizes never seen at trace time."""
    photos = [read_image(p) for p in held_out_paths()]
    china, flower, chelsea = photos
    cases = [uint8_to_float(p) for p in photos]
    cases += [
        uint8_to_float(chelsea[100:164, 200:264]),  # 1x3x64x64
        uint8_to_float(np.stack([p[:72, :136] for p in photos])),  # 3x3x72x136
        uint8_to_float(china[:384, :512].transpose(1, 0, 2).copy()),  # 1x3x512x384
    ]
    return [torch.from_numpy(pad_to_multiple(x, f)) for x in cases]


def _calibration(f: int, n: int = 12, side: int = 128) -> list[np.ndarray]:
    """Crops of training photos (never the held-out ones) for int8 calibration."""
    rng = np.random.default_rng(0)
    arrays = []
    for path in default_train_paths()[:n]:
        img = read_image(path)
        y = rng.integers(0, img.shape[0] - side + 1)
        x = rng.integers(0, img.shape[1] - side + 1)
        arrays.append(uint8_to_float(img[y : y + side, x : x + side]))
    return arrays


def _held_out_quality(tokenizer: Path, f: int, ref_idx: list[np.ndarray] | None):
    """Held-out PSNR (dB, mean) of a fused graph, its indices, and agreement with ref_idx."""
    s = session(tokenizer)
    psnrs, all_idx = [], []
    for path in held_out_paths():
        img = read_image(path)
        x = pad_to_multiple(uint8_to_float(img), f)
        idx, recon = s.run(None, {"image": x})
        if not np.isfinite(recon).all():
            raise ExportValidationError(f"{tokenizer.parent.name}: NaN/Inf on {path.name}")
        out = float_to_uint8(recon[:, :, : img.shape[0], : img.shape[1]])[0]
        psnrs.append(psnr(out, img))
        all_idx.append(idx)
    agree = None
    if ref_idx is not None:
        agree = float(np.mean(np.concatenate([(a == b).ravel() for a, b in zip(all_idx, ref_idx)])))
    return {"held_out_psnr": float(np.mean(psnrs)), "token_agreement": agree}, all_idx


def _io(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    def spec(vi: onnx.ValueInfoProto) -> dict[str, Any]:
        t = vi.type.tensor_type
        return {
            "name": vi.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
            "shape": [d.dim_param or d.dim_value for d in t.shape.dim],
        }

    return {
        "inputs": [spec(i) for i in model.graph.input],
        "outputs": [spec(o) for o in model.graph.output],
    }


def _stamp(path: Path, facts: dict[str, str]) -> dict[str, Any]:
    """Write the key facts into the model's metadata_props; return its IO description."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in facts.items():
        model.metadata_props.add(key=k, value=v)
    model.producer_name, model.producer_version = "vqedge", facts["vqedge.version"]
    onnx.save(model, str(path))
    return _io(model)


def _check_compat(model: onnx.ModelProto, name: str) -> None:
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if model.ir_version > MAX_IR_VERSION or opset > MAX_OPSET:
        raise ExportValidationError(
            f"{name}: IR {model.ir_version} / opset {opset} would not load in onnxruntime "
            f"{MIN_ONNXRUNTIME} (IR <= {MAX_IR_VERSION}, opset <= {MAX_OPSET})"
        )


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise FileExistsError(f"output {out} already exists: pass --force to replace it")
    parent = out.parent if str(out.parent) else Path(".")
    for above in (parent, *parent.parents):
        if above.exists():
            if not above.is_dir():
                raise NotADirectoryError(f"cannot write the bundle: {above} is not a folder")
            break
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot write the bundle: {parent} is not writable")


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, old / "bundle")
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


def export_bundle(
    checkpoint: str | Path | None,
    out: str | Path,
    force: bool = False,
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8"),
    opset: int = OPSET,
    log=print,
) -> dict[str, Any]:
    """Export a checkpoint to a validated bundle folder.

    Parameters
    ----------
    checkpoint : str or Path, optional
        A checkpoint (see ``vqedge.models.load_pretrained``); None exports the shipped default.
    out : str or Path
        The bundle folder to create. An existing one is refused unless ``force``.
    precisions : tuple of str
        Variants to write besides fp32: any of "fp16", "int8".

    Returns
    -------
    dict
        The manifest that was written.

    Raises
    ------
    ExportValidationError
        The graphs do not match PyTorch (the message is the report); nothing is written.
    """
    if opset != OPSET:
        raise ValueError(f"unsupported opset {opset}: this exporter writes opset {OPSET}")
    unknown = set(precisions) - {"fp32", "fp16", "int8"}
    if unknown:
        raise ValueError(f"unknown precisions {sorted(unknown)}; expected fp32, fp16, int8")
    out = Path(out)
    # the checkpoint is read before anything is created, so bad input leaves no trace
    model, ckpt = load_model(DEFAULT_PRETRAINED if checkpoint is None else checkpoint)
    _prepare_out(out, force)
    model.eval()
    cfg, f = model.config, model.downsample_factor
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    if cfg.is_multiscale:
        from vqedge.export.multiscale import build_multiscale as build
    else:
        build = _build
    try:
        manifest = build(model, ckpt, tmp, precisions, log)
        manifest["export"]["seconds"] = round(time.perf_counter() - t0, 1)
        manifest["files"] = {
            str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"bundle written to {out} (f={f}, K={cfg.codebook_size}, {', '.join(precisions)})")
    return manifest


def export_fp32(
    model: VQVAE,
    tmp: Path,
    wrappers: dict[str, type],
    examples: dict[str, torch.Tensor],
    fuse_parts,
    log,
    multiscale: bool = False,
) -> tuple[dict[str, Path], dict[str, onnx.ModelProto]]:
    """Trace each wrapper to tmp/fp32/NAME.onnx, add the fused tokenizer.onnx, and check every
    graph (onnx.checker, loadable by the oldest onnxruntime declared)."""
    (tmp / "fp32").mkdir()
    paths: dict[str, Path] = {}
    for name, wrapper in wrappers.items():
        log(f"exporting {name}")
        paths[name] = tmp / "fp32" / f"{name}.onnx"
        export_graph(wrapper(model), examples[name], name, paths[name], multiscale=multiscale)
    parts = {n: onnx.load(str(p)) for n, p in paths.items()}
    paths["tokenizer"] = tmp / "fp32" / "tokenizer.onnx"
    onnx.save(fuse_parts(parts), str(paths["tokenizer"]))
    for name, path in paths.items():
        onnx.checker.check_model(str(path), full_check=True)
        _check_compat(onnx.load(str(path)), name)
    return paths, parts


def cpu_graphs(
    tmp: Path,
    variants: dict[str, dict[str, Any]],
    decoder_inputs: tuple[str, list[np.ndarray]],
    log,
) -> None:
    """Give the fp32 and int8 variants their CPU-provider decoder (``phase_convolutions``),
    checked against the plain decoder on ``decoder_inputs`` (the int8 calibration data) and
    calibrated on them for int8: a variant's ``cpu_graphs``. The runtime runs the three
    graphs in turn there (as fast as the fused graph, measured), so no fused copy is kept."""
    log("CPU-provider decoders (each ConvTranspose as four phase convolutions)")
    name, data = decoder_inputs
    plain = variants["fp32"]["graphs"]["decoder"]
    fp32_dec = tmp / "fp32" / "decoder_cpu.onnx"
    onnx.save(phase_convolutions(onnx.load(str(plain))), str(fp32_dec))
    s_plain, s_cpu = session(plain), session(fp32_dec)
    worst = max(
        float(np.abs(s_plain.run(None, {name: x})[0] - s_cpu.run(None, {name: x})[0]).max())
        for x in data
    )
    if worst > 1e-4:  # the same sums in another order: rounding only
        raise ExportValidationError(f"phase-convolution decoder differs by {worst:.2e} (> 1e-4)")
    variants["fp32"]["cpu_graphs"] = {"decoder": fp32_dec}
    if "int8" in variants:
        int8_dec = tmp / "int8" / "decoder_cpu.onnx"
        to_int8(fp32_dec, int8_dec, name, data)
        variants["int8"]["cpu_graphs"] = {"decoder": int8_dec}


def _decoded_psnr(decoder: Path, all_idx: list[np.ndarray]) -> float:
    """Held-out PSNR (dB, mean) of a decoder on given held-out indices (one array a photo)."""
    s = session(decoder)
    psnrs = []
    for path, idx in zip(held_out_paths(), all_idx):
        img = read_image(path)
        recon = s.run(None, {"indices": idx})[0]
        psnrs.append(psnr(float_to_uint8(recon[:, :, : img.shape[0], : img.shape[1]])[0], img))
    return float(np.mean(psnrs))


def int8_gate(variants: dict[str, dict[str, Any]], fp32_psnr: float) -> None:
    """Refuse an int8 variant (either decoder form) more than INT8_MAX_PSNR_DROP below fp32."""
    if "int8" not in variants:
        return
    q8 = variants["int8"]["quality"]
    for form, q in (("int8", q8), ("int8 (CPU-provider graphs)", q8.get("cpu"))):
        drop = fp32_psnr - q["held_out_psnr"] if q else 0.0
        if drop > INT8_MAX_PSNR_DROP:
            raise ExportValidationError(
                f"{form} held-out PSNR is {drop:.2f} dB below fp32 (bar: {INT8_MAX_PSNR_DROP} dB)"
            )


def gate(passed: bool, report: str, log) -> None:
    """Log the validation report; without a pass, raise it (and nothing is written)."""
    log(report)
    if not passed:
        raise ExportValidationError(report)


def fp16_variant(
    tmp: Path, parts: dict[str, onnx.ModelProto], kept: dict[str, Path], log
) -> dict[str, Any]:
    """fp16 encoder and decoder in tmp/fp16; the ``kept`` graphs stay fp32 and are shared."""
    log("converting fp16")
    (tmp / "fp16").mkdir()
    graphs = dict(kept)
    for name in ("encoder", "decoder"):
        graphs[name] = tmp / "fp16" / f"{name}.onnx"
        onnx.save(to_fp16(parts[name]), str(graphs[name]))
    return {"graphs": graphs}


def _build(model: VQVAE, ckpt: Path, tmp: Path, precisions, log) -> dict[str, Any]:
    cfg, f = model.config, model.downsample_factor
    examples = {  # trace inputs: sizes that the validation sizes never repeat
        "encoder": torch.rand(2, 3, 32 * f, 40 * f) * 2 - 1,
        "quantizer": torch.randn(2, cfg.code_dim, 32, 40),
        "decoder": torch.randint(0, cfg.codebook_size, (2, 32, 40)),
    }
    wrappers = {"encoder": EncoderGraph, "quantizer": QuantizerGraph, "decoder": DecoderGraph}
    paths, parts = export_fp32(
        model,
        tmp,
        wrappers,
        examples,
        lambda g: fuse(g["encoder"], g["quantizer"], g["decoder"]),
        log,
    )

    log("validating against PyTorch")
    passed, results = validate_fp32(model, paths, _validation_images(f))
    gate(passed, format_report(results), log)

    variants: dict[str, dict[str, Any]] = {"fp32": {"graphs": dict(paths)}}
    if "fp16" in precisions:
        variants["fp16"] = fp16_variant(tmp, parts, {"quantizer": paths["quantizer"]}, log)
    calib = _calibration(f)
    s_enc, s_q = session(paths["encoder"]), session(paths["quantizer"])
    calib_idx = [s_q.run(None, {"latent": s_enc.run(None, {"image": x})[0]})[0] for x in calib]
    if "int8" in precisions:
        log("quantizing int8 (static QDQ, calibrated on training photos)")
        (tmp / "int8").mkdir()
        g = {"quantizer": paths["quantizer"]}
        for name, data, inp in (("encoder", calib, "image"), ("decoder", calib_idx, "indices")):
            g[name] = tmp / "int8" / f"{name}.onnx"
            to_int8(paths[name], g[name], inp, data)
        variants["int8"] = {"graphs": g}
    for prec, v in variants.items():
        if prec == "fp32":
            continue
        g = v["graphs"]
        g["tokenizer"] = tmp / prec / "tokenizer.onnx"
        parts_v = [onnx.load(str(g[n])) for n in ("encoder", "quantizer", "decoder")]
        onnx.save(fuse(*parts_v), str(g["tokenizer"]))
    cpu_graphs(tmp, variants, ("indices", calib_idx), log)

    log("measuring held-out quality of each variant")
    fp32_quality, fp32_idx = _held_out_quality(paths["tokenizer"], f, None)
    for prec, v in variants.items():
        q, idx = fp32_quality, fp32_idx
        if prec != "fp32":
            q, idx = _held_out_quality(v["graphs"]["tokenizer"], f, fp32_idx)
        if "cpu_graphs" in v:  # the same tokens, decoded by the CPU provider's decoder
            cpu_psnr = _decoded_psnr(v["cpu_graphs"]["decoder"], idx)
            q["cpu"] = {"held_out_psnr": cpu_psnr, "token_agreement": q["token_agreement"]}
        v["quality"] = q
        log(
            f"  {prec}: held-out PSNR {q['held_out_psnr']:.2f} dB, "
            f"token agreement {q['token_agreement']}"
            + (f"; CPU-provider graphs {q['cpu']['held_out_psnr']:.2f} dB" if "cpu" in q else "")
        )
    int8_gate(variants, fp32_quality["held_out_psnr"])

    return _manifest(
        model, ckpt, tmp, variants, results, kind="single-scale", size_policy=SIZE_POLICY
    )


def _manifest(
    model: VQVAE,
    ckpt: Path,
    tmp: Path,
    variants: dict[str, dict[str, Any]],
    results: list[dict],
    kind: str,
    size_policy: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Codebook file, metadata stamped into every graph, and the manifest (sans file list)."""
    cfg, f = model.config, model.downsample_factor
    versions = _versions()
    np.save(tmp / "codebook.npy", model.quantize.get_codebook().numpy().astype(np.float32))
    base_facts = {
        "vqedge.format_version": str(FORMAT_VERSION),
        "vqedge.version": versions["vqedge"],
        "vqedge.config": json.dumps(cfg.to_dict()),
        "vqedge.downsample_factor": str(f),
        "vqedge.codebook_size": str(cfg.codebook_size),
        "vqedge.code_dim": str(cfg.code_dim),
        "vqedge.kind": kind,
        "vqedge.input": f"RGB float32 NCHW in [-1, 1]; {size_policy}",
    }
    # each file once (the fp32 quantizer serves every variant), facts in its metadata
    io = {
        str(p.relative_to(tmp)): _stamp(
            p, base_facts | {"vqedge.graph": p.stem, "vqedge.precision": p.parent.name}
        )
        for p in sorted(tmp.rglob("*.onnx"))
    }
    out_variants = {}
    for prec, v in variants.items():
        rels = {name: str(path.relative_to(tmp)) for name, path in v["graphs"].items()}
        size = sum((tmp / rel).stat().st_size for rel in rels.values())
        out_variants[prec] = {
            "graphs": {name: {"file": rel, **io[rel]} for name, rel in rels.items()},
            "quality": v["quality"] | {"size_bytes": size},
        }
        if "cpu_graphs" in v:  # the same inputs and outputs, for onnxruntime's CPU provider
            cpu = {name: str(path.relative_to(tmp)) for name, path in v["cpu_graphs"].items()}
            out_variants[prec]["cpu_graphs"] = {n: {"file": r, **io[r]} for n, r in cpu.items()}

    any_model = onnx.load(str(tmp / "fp32" / "encoder.onnx"))
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": ckpt.name if ckpt.name != "." else "vqvae",
        "kind": kind,
        "config": cfg.to_dict(),
        "input": {
            "color": "RGB",
            "layout": "NCHW",
            "dtype": "float32",
            "range": [-1.0, 1.0],
            "downsample_factor": f,
            "codebook_size": cfg.codebook_size,
            "code_dim": cfg.code_dim,
            "size_policy": size_policy,
        },
        "export": {
            "exporter": EXPORTER,
            "opset": OPSET,
            "ir_version": any_model.ir_version,
            "min_onnxruntime": MIN_ONNXRUNTIME,
            "producers": versions,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "checkpoint_sha256": sha256_file(ckpt / "model.safetensors"),
        },
        "codebook": {"file": "codebook.npy", "shape": [cfg.codebook_size, cfg.code_dim]},
        "variants": out_variants,
        "validation": {
            "passed": True,
            "tolerances": {"latent_atol": 1e-4, "image_atol": 1e-3, "indices": "identical"},
            "cases": results,
        },
    } | (extra or {})
