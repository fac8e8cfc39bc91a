"""Export of VAR's VQVAE from a model object: ``export_var``.

Where ``pipeline.export_bundle`` takes a built model (and the manifest's ``source``), this is
that call. Otherwise it runs the pipeline's own steps in their order (trace, gate, variants,
quality, shared weights, atomic write) with ``VARRecipe``, keeping the int8 variant whatever
its PSNR against fp32, with its figures recorded: imported weights are the authors', and the
manifest says per precision whether its tokens are fit for training a generator.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import onnx
import torch

from vqedge.export import pipeline
from vqedge.export.validate import ExportValidationError
from vqedge.export.var_recipe import VARRecipe
from vqedge.export.variants import to_fp16, to_int8
from vqedge.models.var import FAMILY, VARVQVAE
from vqedge.runtime.manifest import DECODER, MANIFEST, PRECISIONS, sha256_file

__all__ = ["export_var"]


def export_var(
    model: VARVQVAE,
    out: str | Path,
    force: bool = False,
    precisions: tuple[str, ...] = PRECISIONS,
    log=print,
    checkpoint: str | Path | None = None,
    preset: str | None = None,
) -> dict[str, Any]:
    """Export a VAR VQVAE (``vqedge.models.var.load_var``) to a validated multi-scale bundle.

    Parameters
    ----------
    model : VARVQVAE
        The model, weights loaded.
    out : str or Path
        The bundle folder to create; an existing one is refused unless ``force``.
    precisions : tuple of str
        Variants to write: fp32 always, and any of "fp16", "int8".
    checkpoint : str or Path, optional
        The file the weights came from: the manifest's ``source`` records its name and sha256.
    preset : str, optional
        The preset the model was built with ("256", "512"), recorded in ``source``.

    Returns
    -------
    dict
        The manifest that was written.

    Raises
    ------
    ExportValidationError
        A graph does not match PyTorch at some scale; nothing is written.
    """
    if not isinstance(model, VARVQVAE):
        raise TypeError(f"export_var takes a VARVQVAE (load_var), got {type(model).__name__}")
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise ValueError(f"unknown precisions {unknown}; expected some of {', '.join(PRECISIONS)}")
    src = Path(checkpoint) if checkpoint is not None else None
    if src is not None and not src.is_file():
        raise FileNotFoundError(f"{FAMILY} checkpoint {src} is not a file")
    source = {
        "family": "var",
        "checkpoint": src.name if src is not None else None,
        "sha256": sha256_file(src) if src is not None else None,
        "preset": preset,
    }
    if "source" in inspect.signature(pipeline.export_bundle).parameters:
        return pipeline.export_bundle(
            model, out, force=force, precisions=precisions, log=log, source=source
        )
    return _export_fallback(model, Path(out), force, precisions, log, source)


def _export_fallback(
    model: VARVQVAE,
    out: Path,
    force: bool,
    precisions: tuple[str, ...],
    log,
    source: dict[str, Any],
) -> dict[str, Any]:
    """The pipeline's sequence for a pipeline whose export_bundle takes checkpoints only."""
    precisions = tuple(p for p in PRECISIONS if p in {"fp32", *precisions})
    model.eval()
    recipe = VARRecipe(model)
    pipeline._prepare_out(out, force)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    facts = Path(tempfile.mkdtemp(prefix="vqedge-var-source-"))
    try:
        work = tmp / "work"
        work.mkdir()
        with torch.no_grad():
            variants, results = _build(recipe, work, precisions, log)
        for path in work.glob("*.onnx"):
            _inline_shape_data(path)
        log("writing the bundle: each weight once per precision")
        # this pipeline reads the checkpoint's name and hash from a folder's model.safetensors
        ckpt = facts / (Path(source["checkpoint"]).stem if source["checkpoint"] else "var-vqvae")
        ckpt.mkdir()
        (ckpt / "model.safetensors").write_bytes(b"")
        manifest = pipeline._write_bundle(recipe, ckpt, tmp, work, variants, results)
        manifest["export"]["checkpoint_sha256"] = source["sha256"]
        manifest["source"] = source
        manifest["export"]["seconds"] = round(time.perf_counter() - t0, 1)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        pipeline._move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(facts, ignore_errors=True)
    log(f"bundle written to {out} ({FAMILY}, patch_nums {list(model.patch_nums)})")
    return manifest


def _inline_shape_data(path: Path) -> None:
    """Turn the initializers Resize reads as roi / scales / sizes into Constant nodes, so
    that moving weights to external data leaves them where shape inference reads them."""
    m = onnx.load(str(path))
    names = {i for n in m.graph.node if n.op_type == "Resize" for i in n.input[1:] if i}
    moved = [t for t in m.graph.initializer if t.name in names]
    if not moved:
        return
    for t in moved:
        m.graph.initializer.remove(t)
        const = onnx.helper.make_node("Constant", [], [t.name], name=f"{t.name}_const", value=t)
        m.graph.node.insert(0, const)
    onnx.save(m, str(path))


def _build(
    recipe: VARRecipe, work: Path, precisions: tuple[str, ...], log
) -> tuple[dict[str, dict[str, Any]], list[dict]]:
    """pipeline._build with the int8 figures reported instead of gated."""
    paths = pipeline._trace(recipe, work, log)
    log("validating against PyTorch, scale by scale")
    passed, report, results = recipe.validate(paths)
    log(report)
    if not passed:
        raise ExportValidationError(report)
    calib = recipe.calibration(paths)
    variants: dict[str, dict[str, Any]] = {"fp32": {"graphs": dict(paths)}}
    kept = {n: p for n, p in paths.items() if n not in pipeline.REDUCED}
    if "fp16" in precisions:
        log("converting fp16 (fp32 weights cast at load)")
        graphs = dict(kept)
        for name in pipeline.REDUCED:
            graphs[name] = work / pipeline.graph_file(name, "fp16")
            onnx.save(to_fp16(onnx.load(str(paths[name]))), str(graphs[name]))
        variants["fp16"] = {"graphs": graphs}
    if "int8" in precisions:
        log("quantizing int8 (static QDQ, calibrated on training photos)")
        graphs = dict(kept)
        for name in pipeline.REDUCED:
            graphs[name] = work / pipeline.graph_file(name, "int8")
            to_int8(paths[name], graphs[name], *calib[name])
        variants["int8"] = {"graphs": graphs}
    pipeline._cpu_decoders(work, variants, calib[DECODER], log)

    log("measuring held-out quality of each variant, per scale")
    fp32_idx = None
    for prec, v in variants.items():
        q, idx = recipe.quality(v["graphs"], fp32_idx)
        if prec == "fp32":
            fp32_idx = idx
        if "cpu_graphs" in v:
            q["cpu"] = recipe.decoder_quality(v["graphs"], v["cpu_graphs"][DECODER], idx)
        v["quality"] = q
        log(_quality_line(prec, q))
    fp32_psnr = variants["fp32"]["quality"]["held_out_psnr"]
    for prec, v in variants.items():
        drop = fp32_psnr - v["quality"]["held_out_psnr"]
        v["quality"]["psnr_drop_vs_fp32"] = drop
        if prec == "int8" and drop > pipeline.INT8_MAX_PSNR_DROP:
            log(
                f"  int8 kept, below vqedge's own bar: {drop:.2f} dB under fp32 "
                f"(bar {pipeline.INT8_MAX_PSNR_DROP} dB); recorded in the manifest"
            )
    return variants, results


def _quality_line(prec: str, q: dict[str, Any]) -> str:
    scales = " ".join(f"{a:.3f}" for a in q["token_agreement_per_scale"])
    fit = "fit" if q["fit_for_generator_training"] else "NOT fit"
    return (
        f"  {prec}: held-out PSNR {q['held_out_psnr']:.2f} dB; tokens agree with fp32 per "
        f"scale [{scales}]; {fit} for training a generator"
    )
