"""One export pipeline for every bundle kind: trace, gate, variants, calibration, quality,
weights, manifest, atomic write.

What differs between kinds is a recipe (``vqedge.export.recipe.Recipe``), looked up from the
model's class in ``RECIPES``. Everything is written into a temporary folder beside the output
and moved into place only when every check passed, so a failed export leaves the output path
as it was.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from vqedge.export.check_set import check_file_facts, check_set
from vqedge.export.family_recipe import FamilySingleScaleRecipe
from vqedge.export.graphs import EXPORTER, OPSET, export_graph
from vqedge.export.group_norm import group_norm_from_channel_stats
from vqedge.export.lookup_free_recipe import LookupFreeRecipe
from vqedge.export.multi_scale_recipe import MultiScaleRecipe
from vqedge.export.output import move_into_place, prepare_out
from vqedge.export.recipe import Graphs, Recipe, session
from vqedge.export.single_scale_recipe import SingleScaleRecipe
from vqedge.export.validate import TOLERANCES, ExportValidationError
from vqedge.export.var_recipe import VARRecipe
from vqedge.export.variants import INT8_RECIPE, phase_convolutions, to_fp16, to_int8
from vqedge.export.weights import READS_FP32, WeightStore, externalize, read_external
from vqedge.models.checkpoint import DEFAULT_PRETRAINED, load_model
from vqedge.models.lookup_free import FSQVQVAE
from vqedge.models.multiscale import MultiScaleVQVAE
from vqedge.models.open_magvit2 import OpenMagvit2
from vqedge.models.single_scale import SingleScaleVQ
from vqedge.models.var import VARVQVAE
from vqedge.models.vqvae import VQVAE
from vqedge.runtime.config import VQVAEConfig
from vqedge.runtime.fidelity import TOKENS_MIN_AGREEMENT
from vqedge.runtime.kind import kind_of
from vqedge.runtime.manifest import (
    DECODER,
    ENCODER,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    PRECISIONS,
    sha256_file,
)

# model class -> its recipe, for the models that do not name their kind (``bundle_kind``);
# the most specific class of a model wins (its MRO order)
RECIPES: dict[type, type[Recipe]] = {
    MultiScaleVQVAE: MultiScaleRecipe,
    VQVAE: SingleScaleRecipe,
    SingleScaleVQ: FamilySingleScaleRecipe,
    VARVQVAE: VARRecipe,
    OpenMagvit2: LookupFreeRecipe,
    FSQVQVAE: LookupFreeRecipe,
}
# the int8 variant may lose at most this much held-out PSNR against fp32
INT8_MAX_PSNR_DROP = 0.5
# the CPU-provider decoder computes the same sums in another order: rounding only
CPU_DECODER_ATOL = 1e-4
# bytes per weight of each precision: what the manifest's sizes compare a bundle with
BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "int8": 1}
# the oldest onnxruntime the runtime declares; opset and IR version must load there
MIN_ONNXRUNTIME = "1.19"
MAX_IR_VERSION = 10
MAX_OPSET = 21
CPU_DECODER = "decoder_cpu"
# the graphs that get reduced-precision forms; every other graph is fp32 in every variant
REDUCED = (ENCODER, DECODER)
CODEBOOK = "codebook.npy"


def recipe_for(model: torch.nn.Module) -> Recipe:
    """The export recipe of ``model``'s kind: the recipe of the kind the model names in
    ``bundle_kind`` (the table of kinds, ``vqedge.runtime.kind``), else the one ``RECIPES``
    gives its class.

    Raises
    ------
    ValueError
        No recipe exports this model class.
    BundleError
        The model names a kind that is not in the table.
    """
    kind = getattr(model, "bundle_kind", None)
    if kind is not None:
        return kind_of(kind).recipe_class()(model)
    for cls in type(model).__mro__:
        if cls in RECIPES:
            return RECIPES[cls](model)
    known = ", ".join(c.__name__ for c in RECIPES)
    raise ValueError(f"no export recipe for {type(model).__name__}; known: {known}")


def graph_file_name(graph: str, precision: str) -> str:
    """A graph's file name in the bundle, e.g. ``encoder.fp32.onnx``."""
    return f"{graph}.{precision}.onnx"


def export_bundle(
    checkpoint: str | Path | torch.nn.Module | None,
    out: str | Path,
    force: bool = False,
    precisions: tuple[str, ...] = PRECISIONS,
    log=print,
    source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Export a checkpoint to a validated bundle folder (format 2).

    Parameters
    ----------
    checkpoint : str, Path or torch.nn.Module, optional
        A checkpoint (see ``vqedge.models.load_pretrained``), or a model already built (an
        imported family's, see ``vqedge.export.families``); None exports the shipped default.
    out : str or Path
        The bundle folder to create. An existing one is refused unless ``force``.
    precisions : tuple of str
        Variants to write: fp32 always, and any of "fp16", "int8".
    log : callable
        Called with each progress line.
    source : dict, optional
        The manifest's ``source`` (family, checkpoint file name, its sha256, preset) for a
        model passed built; a checkpoint path gets it from the file.

    Returns
    -------
    dict
        The manifest that was written.

    Raises
    ------
    ExportValidationError
        The graphs do not match PyTorch, or a variant misses its quality bar (the message is
        the report); nothing is written.
    """
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        raise ValueError(f"unknown precisions {unknown}; expected some of {', '.join(PRECISIONS)}")
    precisions = tuple(p for p in PRECISIONS if p in {"fp32", *precisions})
    out = Path(out)
    # the checkpoint is read before anything is created, so bad input leaves no trace
    if isinstance(checkpoint, torch.nn.Module):
        model = checkpoint
        source = dict(source or {"family": type(model).__name__})
    else:
        model, ckpt = load_model(DEFAULT_PRETRAINED if checkpoint is None else checkpoint)
        source = {
            "family": "vqedge",
            "checkpoint": ckpt.name,
            "sha256": sha256_file(ckpt / "model.safetensors"),
            "preset": None,
        }
    model.eval()
    recipe = recipe_for(model)
    config = VQVAEConfig.from_dict(recipe.config_dict())
    prepare_out(out, force)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        work = tmp / "work"
        work.mkdir()
        variants, results = _build(recipe, work, precisions, log)
        log("writing the bundle: each weight once per precision")
        written = _write_graphs(recipe, config, tmp, work, variants)
        manifest = build_manifest(recipe, config, source, tmp, variants, results, written)
        manifest["check"] = check_set(tmp, manifest, log)
        name, digest, size = check_file_facts(tmp, manifest["check"])
        manifest["files"][name] = digest
        manifest["sizes"]["bundle_bytes"] += size
        manifest["export"]["seconds"] = round(time.perf_counter() - t0, 1)
        # written once, complete: the check set is measured from the manifest in memory
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"bundle written to {out} ({recipe.kind}, K={config.codebook_size}, {', '.join(variants)})")
    return manifest


# -- the sequence -----------------------------------------------------------------------------


def _build(
    recipe: Recipe, work: Path, precisions: tuple[str, ...], log
) -> tuple[dict[str, dict[str, Any]], list[dict]]:
    """Every graph of every variant in ``work`` (weights inline), gated and measured."""
    paths = _trace(recipe, work, log)
    exporters = _group_norm_from_channel_stats(paths, work, log)
    log("validating against PyTorch")
    passed, report, results = recipe.validate(paths)
    log(report)
    if not passed:
        raise ExportValidationError(report)

    calib = recipe.calibration(paths)
    variants: dict[str, dict[str, Any]] = {"fp32": {"graphs": dict(paths)}}
    kept = {n: p for n, p in paths.items() if n not in REDUCED}  # fp32 in every variant
    if "fp16" in precisions:
        log("converting fp16 (fp32 weights cast at load)")
        graphs = dict(kept)
        for name in REDUCED:
            graphs[name] = work / graph_file_name(name, "fp16")
            onnx.save(to_fp16(onnx.load(str(exporters[name]))), str(graphs[name]))
        variants["fp16"] = {"graphs": graphs}
    if "int8" in precisions:
        log("quantizing int8 (static QDQ, calibrated on training photos)")
        graphs = dict(kept)
        for name in REDUCED:
            graphs[name] = work / graph_file_name(name, "int8")
            to_int8(exporters[name], graphs[name], *calib[name])
        variants["int8"] = {"graphs": graphs, "recipe": INT8_RECIPE}
    _cpu_decoders(work, variants, calib[DECODER], log)

    log("measuring held-out quality of each variant")
    fp32_idx = None
    for prec, v in variants.items():
        q, idx = recipe.quality(v["graphs"], fp32_idx)
        if prec == "fp32":
            fp32_idx = idx
        if "cpu_graphs" in v:  # the same tokens, decoded by the CPU provider's decoder
            q["cpu"] = recipe.decoder_quality(v["graphs"], v["cpu_graphs"][DECODER], idx)
        # the tokens tier: a variant that keeps it may stand in for fp32 when tokenizing a
        # generator's training set
        q["fit_for_generator_training"] = (
            q["token_agreement"] is None or q["token_agreement"] >= TOKENS_MIN_AGREEMENT
        )
        v["quality"] = q
        log(
            f"  {prec}: held-out PSNR {q['held_out_psnr']:.2f} dB, "
            f"token agreement {q['token_agreement']}"
            + (f"; CPU-provider graphs {q['cpu']['held_out_psnr']:.2f} dB" if "cpu" in q else "")
        )
    if recipe.imported:
        for line in int8_report(variants):
            log(line)
    else:
        int8_gate(variants)
    return variants, results


def _trace(recipe: Recipe, work: Path, log) -> Graphs:
    """Trace each wrapper to ``work``; check every graph (onnx.checker, and loadable by the
    oldest onnxruntime declared)."""
    examples = recipe.examples()
    paths = {}
    for name, wrapper in recipe.wrappers.items():
        log(f"exporting {name}")
        paths[name] = work / graph_file_name(name, "fp32")
        export_graph(
            wrapper(recipe.model), examples[name], name, paths[name], recipe.io[name],
            recipe.dim_names,
        )  # fmt: skip
    for name, path in paths.items():
        onnx.checker.check_model(str(path), full_check=True)
        _check_compat(onnx.load(str(path)), name)
    return paths


def _group_norm_from_channel_stats(paths: Graphs, work: Path, log) -> Graphs:
    """Rewrite the encoder's and decoder's GroupNorms in place (``group_norm``): the fp32
    graphs the gate checks and every provider runs. -> each graph as the exporter wrote it,
    which the fp16 and int8 variants are made from (a squared deviation overflows fp16 once
    the deviation passes 256; int8's calibration and kernels were measured on it)."""
    exporters, counts = {}, []
    for name in REDUCED:
        model, count = group_norm_from_channel_stats(onnx.load(str(paths[name])))
        exporters[name] = paths[name]
        if count:
            exporters[name] = work / f"{name}.exporter.onnx"
            paths[name].rename(exporters[name])
            onnx.save(model, str(paths[name]))
            onnx.checker.check_model(str(paths[name]), full_check=True)
            _check_compat(model, name)
            counts.append(f"{count} in the {name}")
    if counts:
        log(f"GroupNorm from per-channel statistics: {', '.join(counts)}")
    return exporters


def _cpu_decoders(
    work: Path, variants: dict[str, dict[str, Any]], data: tuple[str, list[np.ndarray]], log
) -> None:
    """Give the fp32 and int8 variants their CPU-provider decoder (``phase_convolutions``),
    checked against the plain decoder on ``data`` (the decoder's int8 calibration inputs)
    and calibrated on them for int8: a variant's ``cpu_graphs``."""
    name, arrays = data
    plain = onnx.load(str(variants["fp32"]["graphs"][DECODER]))
    if not any(n.op_type == "ConvTranspose" for n in plain.graph.node):
        return  # nothing to rewrite: the plain decoder is the CPU provider's too
    log("CPU-provider decoders (each ConvTranspose as four phase convolutions)")
    fp32_dec = work / graph_file_name(CPU_DECODER, "fp32")
    # fp32: kernels computed from the decoder's own weights, so none is stored twice
    onnx.save(phase_convolutions(plain, derived=True), str(fp32_dec))
    s_plain, s_cpu = session(variants["fp32"]["graphs"][DECODER]), session(fp32_dec)
    worst = max(
        float(np.abs(s_plain.run(None, {name: x})[0] - s_cpu.run(None, {name: x})[0]).max())
        for x in arrays
    )
    if worst > CPU_DECODER_ATOL:
        raise ExportValidationError(
            f"phase-convolution decoder differs by {worst:.2e} (> {CPU_DECODER_ATOL})"
        )
    variants["fp32"]["cpu_graphs"] = {DECODER: fp32_dec}
    if "int8" in variants:
        # int8 quantizes the kernels, so they must be initializers here
        materialized = work / "decoder_cpu.materialized.onnx"
        onnx.save(phase_convolutions(plain, derived=False), str(materialized))
        int8_dec = work / graph_file_name(CPU_DECODER, "int8")
        to_int8(materialized, int8_dec, name, arrays)
        materialized.unlink()
        variants["int8"]["cpu_graphs"] = {DECODER: int8_dec}


def int8_report(variants: dict[str, dict[str, Any]]) -> list[str]:
    """For imported models: the int8 variant is kept and its losses stated, not refused
    (their owners decide; the manifest says which precisions are fit for training)."""
    if "int8" not in variants:
        return []
    fp32_psnr = variants["fp32"]["quality"]["held_out_psnr"]
    q8 = variants["int8"]["quality"]
    drop = fp32_psnr - q8["held_out_psnr"]
    verdict = "within" if drop <= INT8_MAX_PSNR_DROP else "MISSES"
    fit = "fit" if q8["fit_for_generator_training"] else "NOT fit"
    return [
        f"int8 kept: {drop:.2f} dB below fp32 ({verdict} the {INT8_MAX_PSNR_DROP} dB bar of "
        f"vqedge's own bundles), tokens agree {q8['token_agreement']:.2%}: {fit} for training "
        "a generator"
    ]


def int8_gate(variants: dict[str, dict[str, Any]]) -> None:
    """Refuse an int8 variant (either decoder form) more than INT8_MAX_PSNR_DROP below fp32."""
    if "int8" not in variants:
        return
    fp32_psnr = variants["fp32"]["quality"]["held_out_psnr"]
    q8 = variants["int8"]["quality"]
    for form, q in (("int8", q8), ("int8 (CPU-provider graphs)", q8.get("cpu"))):
        drop = fp32_psnr - q["held_out_psnr"] if q else 0.0
        if drop > INT8_MAX_PSNR_DROP:
            raise ExportValidationError(
                f"{form} held-out PSNR is {drop:.2f} dB below fp32 (bar: {INT8_MAX_PSNR_DROP} dB)"
            )


# -- writing ----------------------------------------------------------------------------------


@dataclass
class Written:
    """What ``_write_graphs`` wrote: per graph file its inputs and outputs and the weights
    files it reads."""

    io: dict[str, dict[str, Any]]
    reads: dict[str, list[str]]


def _write_graphs(
    recipe: Recipe,
    cfg: VQVAEConfig,
    tmp: Path,
    work: Path,
    variants: dict[str, dict[str, Any]],
) -> Written:
    """Move the graphs from ``work`` into the flat bundle ``tmp`` with shared external
    weights and the codebook, and check each one as written."""
    versions = _versions()
    facts = {
        "vqedge.format_version": str(FORMAT_VERSION),
        "vqedge.version": versions["vqedge"],
        "vqedge.config": json.dumps(cfg.to_dict()),
        "vqedge.downsample_factor": str(cfg.downsample_factor),
        "vqedge.codebook_size": str(cfg.codebook_size),
        "vqedge.code_dim": str(cfg.code_dim),
        "vqedge.kind": recipe.kind,
        "vqedge.input": f"RGB float32 NCHW in [-1, 1]; {recipe.size_policy()}",
    }
    # each work file once, fp32 first so that other precisions find its tensors
    files = {p for v in variants.values() for p in v["graphs"].values()}
    files |= {p for v in variants.values() for p in v.get("cpu_graphs", {}).values()}
    files = sorted(files, key=lambda p: (_weights_order(p.name), p.name))
    # fp32 graphs an int8 variant runs too (the lookup): their tensors stay in the graph file
    inline = {
        p for v, spec in variants.items() if v not in READS_FP32 for p in spec["graphs"].values()
    }
    inline = {p for p in inline if p.name.split(".")[1] in READS_FP32}
    stores = {prec: WeightStore(tmp, prec) for prec in PRECISIONS}
    io, reads = {}, {}
    try:
        for src in files:
            graph, prec = src.name.split(".")[:2]
            m = onnx.load(str(src))
            _strip_trace_metadata(m)
            for k, v in (facts | {"vqedge.graph": graph, "vqedge.precision": prec}).items():
                m.metadata_props.add(key=k, value=v)
            m.producer_name, m.producer_version = "vqedge", versions["vqedge"]
            reads[src.name] = [] if src in inline else externalize(m, stores, prec)
            io[src.name] = _io(m)
            onnx.save(m, str(tmp / src.name))
    finally:
        for store in stores.values():
            store.close()
    shutil.rmtree(work)
    for name in io:  # as written: external data resolved from the bundle folder
        onnx.checker.check_model(str(tmp / name), full_check=True)
        session(tmp / name)
    codebook = recipe.codebook()
    if codebook is not None:
        np.save(tmp / CODEBOOK, codebook)
    return Written(io, reads)


def _variant_entries(
    tmp: Path, variants: dict[str, dict[str, Any]], written: Written, file_sizes: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """The manifest's ``variants``: each one's graph files, weights files and quality."""
    out = {}
    for prec, v in variants.items():
        entry: dict[str, Any] = {}
        used: set[str] = set()
        for key in ("graphs", "cpu_graphs"):
            if key in v:
                # each graph's own weights files: a caller that runs some graphs fetches those
                entry[key] = {
                    n: {"file": p.name, **written.io[p.name], "weights": written.reads[p.name]}
                    for n, p in v[key].items()
                }
                used.update(p.name for p in v[key].values())
        weights = {w for f in used for w in written.reads[f]}
        entry["weights"] = sorted(weights, key=lambda w: (_weights_order(w), w))
        # what the variant reads: its graph files, the stored tensors they name, the codebook
        regions = {r for f in used for r in read_external(tmp / f).values()}
        read_bytes = sum(file_sizes[f] for f in (*used, CODEBOOK) if f in file_sizes)
        read_bytes += sum(length for _, _, length in regions)
        entry["quality"] = v["quality"] | {"size_bytes": read_bytes}
        if "recipe" in v:
            entry["recipe"] = v["recipe"]
        out[prec] = entry
    return out


def build_manifest(
    recipe: Recipe,
    cfg: VQVAEConfig,
    source: dict[str, Any],
    tmp: Path,
    variants: dict[str, dict[str, Any]],
    results: list[dict],
    written: Written,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of the bundle written in ``tmp``: the one place its fields are defined.
    ``extra`` adds top-level fields (before the file list). Every file in ``tmp`` when it is
    called is listed with its sha256 and counted in the sizes: write other files first."""
    file_sizes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    parameters = sum(p.numel() for p in recipe.model.parameters())
    any_model = onnx.load(str(tmp / graph_file_name(ENCODER, "fp32")), load_external_data=False)
    flops = _flops(recipe)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": _bundle_name(source),
        "kind": recipe.kind,
        "config": cfg.to_dict(),
        "input": {
            "color": "RGB",
            "layout": "NCHW",
            "dtype": "float32",
            "range": [-1.0, 1.0],
            "downsample_factor": cfg.downsample_factor,
            "codebook_size": cfg.codebook_size,
            "code_dim": cfg.code_dim,
            "size_policy": recipe.size_policy(),
            **recipe.input_extra(),
        },
        "export": {
            "exporter": EXPORTER,
            "opset": OPSET,
            "ir_version": any_model.ir_version,
            "min_onnxruntime": MIN_ONNXRUNTIME,
            "producers": _versions(),
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "checkpoint_sha256": source.get("sha256"),
        },
        "source": source,
        **(
            {"codebook": {"file": CODEBOOK, "shape": [cfg.codebook_size, cfg.code_dim]}}
            if (tmp / CODEBOOK).is_file()
            else {}
        ),
        "variants": _variant_entries(tmp, variants, written, file_sizes),
        "validation": {"passed": True, "tolerances": TOLERANCES, "cases": results},
        **recipe.manifest_extra(),
        **(extra or {}),
        "files": {name: sha256_file(tmp / name) for name in file_sizes},
        "sizes": {
            "parameters": parameters,
            # what the bundle's size is measured against: bytes per weight of each precision
            "weight_bytes": {p: parameters * BYTES_PER_WEIGHT[p] for p in variants},
            "weight_files": {n: s for n, s in file_sizes.items() if n.startswith("weights.")},
            "bundle_bytes": sum(file_sizes.values()),
            # multiply-adds x 2 of one image at the model's size, per graph and in all
            "gflop_per_image": {g: round(n / 1e9, 3) for g, n in flops.items()}
            | {"total": round(sum(flops.values()) / 1e9, 3)},
            "gflop_image_size": recipe.flop_size(),
        },
    }


def _flops(recipe: Recipe) -> dict[str, int]:
    """FLOPs of each graph's PyTorch wrapper run once at ``recipe.flop_inputs`` (a
    multiply-add is 2; convolutions, matrix products and attention), counted on fake
    tensors: nothing is computed."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    for g, shape in recipe.flop_inputs().items():
        wrapper = recipe.wrappers[g](recipe.model).eval()
        integer = recipe.io[g][0][0] == "indices"
        x = torch.zeros(shape, dtype=torch.int64 if integer else torch.float32)
        fake = FakeTensorMode(allow_non_fake_inputs=True)
        with torch.no_grad(), fake, FlopCounterMode(display=False) as counter:
            wrapper(x)
        out[g] = int(counter.get_total_flops())
    return out


def _bundle_name(source: dict[str, Any]) -> str:
    """vqedge's own: the checkpoint folder's name; another family's: family-checkpoint
    (a diffusers folder's name, or the file name without its suffix)."""
    ckpt = str(source.get("checkpoint") or "")
    if source.get("family") in (None, "vqedge"):
        return ckpt if ckpt not in ("", ".") else "vqvae"
    stem = Path(ckpt).parts[0] if "/" in ckpt else Path(ckpt).stem
    return f"{source['family']}-{stem}" if stem else str(source["family"])


def _strip_trace_metadata(model: onnx.ModelProto) -> None:
    """Drop what the exporter records per node and tensor (stack traces with this machine's
    paths, source names): most of a graph file's bytes, and nothing onnxruntime reads."""
    del model.metadata_props[:]
    g = model.graph
    for item in (*g.node, *g.value_info, *g.input, *g.output, *g.initializer):
        del item.metadata_props[:]


def _weights_order(name: str) -> int:
    """Precision order of a bundle file named NAME.PRECISION.EXT."""
    return PRECISIONS.index(name.split(".")[1])


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


def _versions() -> dict[str, str]:
    out = {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__}
    try:
        out["vqedge"] = metadata.version("vqedge")
    except metadata.PackageNotFoundError:
        out["vqedge"] = "unknown"
    return out


def _check_compat(model: onnx.ModelProto, name: str) -> None:
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if model.ir_version > MAX_IR_VERSION or opset > MAX_OPSET:
        raise ExportValidationError(
            f"{name}: IR {model.ir_version} / opset {opset} would not load in onnxruntime "
            f"{MIN_ONNXRUNTIME} (IR <= {MAX_IR_VERSION}, opset <= {MAX_OPSET})"
        )
