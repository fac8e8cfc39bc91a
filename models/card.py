"""Publish a trained run as a shipped checkpoint: weights, config and a model card.

``python -m vqedge.models.card RUN_DIR DEST_DIR [QUALITY_JSON]`` copies the latest
checkpoint's weights and config (not the optimizer) and writes MODEL_CARD.md from the run's
recorded history, so the card's numbers are the ones training measured; QUALITY_JSON
(``python -m vqedge.benchmarks.quality``) adds the exported bundle's figures per set.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vqedge.models.checkpoint import CONFIG, STATE, WEIGHTS, resolve_checkpoint
from vqedge.models.data import COLLECTION, DEFAULT_TRAIN, HELD_OUT, TRAIN
from vqedge.runtime.atomic import write_bytes_atomic
from vqedge.runtime.config import VQVAEConfig


def _data_summary(tc: dict) -> str:
    """The card's data row: a folder, the default collection, or (runs started before the
    collection existed, which record no ``work_side``) scikit-image's photos."""
    held = ", ".join(p for _, p in HELD_OUT)
    if tc["data"]:
        return f"the images under {tc['data']}; held out, never trained on: {held}"
    if "work_side" not in tc:
        names = ", ".join(Path(p).stem for _, p in DEFAULT_TRAIN)
        return (
            f"the colour photos shipped in scikit-image ({len(DEFAULT_TRAIN)} images: {names}); "
            f"held out, never trained on: {held}"
        )
    train = [c for c in COLLECTION if c.split == TRAIN]
    photos = sum(c.kind == "photo" for c in train)
    side = tc["work_side"]
    return (
        f"the default collection: {len(train)} images ({photos} photographs, "
        f"{len(train) - photos} illustrations{f', longer side shrunk to {side}' if side else ''}"
        f"; sources and licences below); held out, never trained on: {held} and the "
        "held-out illustrations below"
    )


def data_sources() -> str:
    """A markdown table of every image of the default collection: source, licence, split."""
    rows = "\n".join(
        f"| {c.split} | {c.kind} | `{c.path}` | {c.package} | {c.licence} | {c.author} |"
        for c in sorted(COLLECTION, key=lambda c: (c.split != TRAIN, c.split, c.package, c.path))
    )
    return f"""## Data sources

Paths under /usr/share come from the Debian packages (`make train-data`); `package:path` files
ship inside that Python package. Licences as each package's copyright file (or, for
scikit-image and scikit-learn, the data's documentation) states them.

| split | kind | file | package | licence | author |
| --- | --- | --- | --- | --- | --- |
{rows}
"""


def _curve(history: list[dict]) -> str:
    # runs from before the validation split evaluated the held-out photos as they went
    return "\n".join(
        f"| {h['step']} | {h.get('split', 'held-out')} | {h['psnr']:.2f} | {h['codes_used']} | "
        f"{h['perplexity']:.0f} |"
        for h in history
    )


def _warm_start(state: dict) -> tuple[str, str]:
    """The card's warm-start row and section for a run started with ``init_from``."""
    init = state.get("init")
    if not init:
        return "", ""
    prev = init.get("state")
    if not prev:
        return f"\n| warm start | the weights of `{init['from']}` (no training record) |", ""
    tc, last = prev["train_config"], prev["history"][-1]
    row = (
        f"\n| warm start | the weights of `{init['from']}`: {prev['step']} steps of batch "
        f"{tc['batch_size']} on {_data_summary(tc).split(';')[0]}, "
        f"{prev['wall_seconds'] / 60:.0f} minutes, held-out {last['psnr']:.2f} dB |"
    )
    section = f"""
## Curve of the run it started from (`{init["from"]}`)

| step | evaluated on | PSNR (dB) | codes used | perplexity |
| --- | --- | --- | --- | --- |
{_curve(prev["history"])}
"""
    return row, section


def _quality_section(quality: dict | None) -> str:
    """The bundle's figures from ``python -m vqedge.benchmarks.quality`` (its JSON entry for
    this model): per set and precision, then per image at fp32."""
    if not quality:
        return ""
    precs = list(quality)
    fp32 = quality[precs[0]]
    sets = [s for s in fp32 if "psnr_each" in fp32[s]]
    rows = "\n".join(
        f"| {s} | {len(fp32[s]['psnr_each'])} | "
        + " | ".join(f"{quality[p][s]['psnr']:.2f}" for p in precs)
        + " |"
        for s in sets
    )
    each = "\n".join(
        f"| {s} | {name} | {v:.2f} |" for s in sets for name, v in fp32[s]["psnr_each"].items()
    )
    usage = ""
    every = next((v for v in fp32.values() if "psnr_each" not in v), None)
    if every:
        usage = (
            f"\nCodes used over all {every['images']} images ({every['tokens']} tokens): "
            f"{every['codes_used']} ({100 * every['usage']:.1f}%), perplexity "
            f"{every['perplexity']:.0f}.\n"
        )
    return f"""
## The exported bundle on four sets

Through the runtime (onnxruntime, CPU provider), `python -m vqedge.benchmarks.quality`; the
out-of-set images come from Debian packages in none of the training splits (sources, sizes and
licences in `benchmarks/results/quality.md`). PSNR in dB:

| set | images | {" | ".join(precs)} |
| --- | ---: |{" ---: |" * len(precs)}
{rows}
{usage}
| set | image | PSNR (fp32) |
| --- | --- | ---: |
{each}
"""


def model_card(cfg: VQVAEConfig, state: dict, quality: dict | None = None) -> str:
    tc = state["train_config"]
    last = state["history"][-1]
    K, f = cfg.codebook_size, cfg.downsample_factor
    params = "; ".join(f"{k}={v}" for k, v in cfg.to_dict().items())
    curve = _curve(state["history"])
    warm_row, warm_section = _warm_start(state)
    each = ", ".join(f"{p:.2f}" for p in last["psnr_each"])
    if "illustrations" in last:
        ill = last["illustrations"]
        each_ill = ", ".join(f"{p:.2f}" for p in ill["psnr_each"])
        illus_row = f"\n| held-out illustrations PSNR | {ill['psnr']:.2f} dB (mean of {each_ill}) |"
    else:
        illus_row = ""
    if tc.get("device", "cpu").startswith("cuda"):
        compute = "on a CUDA GPU (bf16 autocast; the last device the run used)"
    else:
        compute = f"on a 2-core CPU (torch threads: {tc['threads']})"
    sources = "" if tc["data"] or "work_side" not in tc else "\n" + data_sources()
    if cfg.is_multiscale:
        R, L = cfg.resolution, cfg.scale_offsets[-1]
        title = f"vqedge multi-scale tokenizer (VAR-style, f={f}, K={K}, {R}x{R})"
        intro = (
            f"VAR's next-scale residual quantizer on a VQ-VAE: an {R}x{R} RGB image becomes one "
            f"token map per scale, {list(cfg.patch_nums)} on a side ({L} tokens in all), "
            f"indices into one codebook of {K} codes of dimension {cfg.code_dim}; "
            f"{cfg.bits_per_pixel:.3f} bits per pixel. Phi blend r = {cfg.quant_resi}, "
            f"{cfg.num_phi} shared Phi convolutions."
        )
        where = f"photos fitted to {R}x{R}: centre square, Lanczos"
        crops = (
            f"{tc['crop']}x{tc['crop']} random crops cut from regions up to "
            f"{tc.get('max_zoom_out', 1.0)}x larger (antialiased downsizing) with flips"
        )
        prefix = "\n".join(
            f"| {k + 1} | {pn}x{pn} | {cfg.scale_offsets[k + 1]} | {v:.2f} |"
            for k, (pn, v) in enumerate(zip(cfg.patch_nums, last["psnr_per_prefix"]))
        )
        extra = f"""
## Progressive reconstruction on held-out (final checkpoint)

Decoding only the first k scales (f_hat summed over scales 1..k):

| scales used | last map | tokens | PSNR (dB) |
| --- | --- | --- | --- |
{prefix}
"""
    else:
        title = f"vqedge default tokenizer (f={f}, K={K})"
        intro = (
            f"A single-scale VQ-VAE: an H x W RGB image becomes a ceil(H/{f}) x ceil(W/{f}) "
            f"map of indices\ninto {K} codes of dimension {cfg.code_dim}, "
            f"{cfg.bits_per_pixel:.3f} bits per pixel\n(log2 K / f^2)."
        )
        where = "full size, uint8"
        crops = f"{tc['crop']}x{tc['crop']} random crops with horizontal and vertical flips"
        extra = ""
    return f"""# {title}

{intro}

| | |
| --- | --- |
| config | {params} |
| data | {_data_summary(tc)} |
| training | {state["step"]} steps of batch {tc["batch_size"]}, {crops}; AdamW lr {tc["lr"]} (warm-up {tc["warmup"]}, cosine to {tc["min_lr_ratio"]}x), weight decay {tc["weight_decay"]}, MSE + VQ loss; seed {tc["seed"]} |
| wall time | {state["wall_seconds"] / 60:.0f} minutes {compute} |{warm_row}
| held-out PSNR | {last["psnr"]:.2f} dB (mean of {each}; {where}) |{illus_row}
| codes used on held-out | {last["codes_used"]} of {K} ({100 * last["usage"]:.1f}%) |
| perplexity on held-out | {last["perplexity"]:.0f} |
| bits per pixel | {cfg.bits_per_pixel:.3f} |

## Curve

Runs since the validation split evaluate it as they go and select the checkpoint by it (kept
in the run's `best/`); the held-out photos are evaluated once, on the final checkpoint. Older
runs evaluated the held-out photos as they went.

| step | evaluated on | PSNR (dB) | codes used | perplexity |
| --- | --- | --- | --- | --- |
{curve}
{warm_section}{extra}{_quality_section(quality)}{sources}"""


def publish(run_dir: str | Path, dest: str | Path, quality_json: str | Path | None = None) -> Path:
    """Copy a run's latest weights, config and state to ``dest`` and write its model card;
    with ``quality_json`` (``vqedge.benchmarks.quality``'s output), the card also shows the
    entry of the bundle named like ``dest``."""
    ckpt = resolve_checkpoint(run_dir)
    state = json.loads((ckpt / STATE).read_text())
    dest = Path(dest)
    quality = None
    if quality_json:
        quality = json.loads(Path(quality_json).read_text())["bundles"].get(dest.name)
    dest.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, CONFIG, STATE):
        write_bytes_atomic(dest / name, (ckpt / name).read_bytes())
    card = model_card(VQVAEConfig.load(ckpt / CONFIG), state, quality)
    write_bytes_atomic(dest / "MODEL_CARD.md", card.encode())
    return dest


if __name__ == "__main__":
    print(publish(*sys.argv[1:4]))
