"""Training loop behind ``vqedge train``: random crops, AdamW, MSE (+L1) + VQ loss."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vqedge.models.checkpoint import load_model, load_training, resolve_checkpoint, save_checkpoint
from vqedge.models.data import (
    CropSampler,
    default_train_paths,
    held_out_paths,
    load_images,
    uint8_to_tensor,
)
from vqedge.models.multiscale import build_model
from vqedge.models.vqvae import VQVAE
from vqedge.runtime.config import VQVAEConfig
from vqedge.runtime.images import fit_square
from vqedge.runtime.inputs import find_images
from vqedge.runtime.metrics import codebook_stats, psnr, to_uint8


@dataclass
class TrainConfig:
    # image folder (recursive); None trains on the default photos
    data: str | None = None
    # run folder: checkpoints, 'latest', history
    out: str = "runs/vqvae"
    # total optimizer steps (a resumed run continues up to this)
    steps: int = 5000
    batch_size: int = 16
    # side of the square random crops (a multi-scale model needs its resolution)
    crop: int = 64
    # crops also cut from regions up to this many times larger, downsized (1: no zoom)
    max_zoom_out: float = 1.0
    lr: float = 4e-4
    # linear warm-up steps, then cosine decay to lr * min_lr_ratio
    warmup: int = 200
    min_lr_ratio: float = 0.1
    weight_decay: float = 1e-4
    # weight of an extra L1 reconstruction term (0: MSE only)
    l1_weight: float = 0.0
    seed: int = 0
    eval_every: int = 500
    ckpt_every: int = 250
    # torch intra-op threads; None keeps torch's default
    threads: int | None = None
    # end this invocation (with a checkpoint) after this step; --resume continues
    stop_at: int | None = None
    model: VQVAEConfig = field(default_factory=VQVAEConfig)


def lr_at(tc: TrainConfig, step: int) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    t = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * cos)


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return to_uint8(img[0].permute(1, 2, 0).numpy())


@torch.no_grad()
def evaluate(model: VQVAE, images: list[np.ndarray]) -> dict[str, Any]:
    """Held-out quality: mean PSNR (dB, uint8), codes used, perplexity.

    Single-scale models see each photo at full size; a multi-scale model sees it fitted to
    its resolution (fit_square) and also reports the PSNR after each prefix of scales.
    """
    was_training = model.training
    model.eval()
    multiscale = model.config.is_multiscale
    psnrs, indices, prefix = [], [], []
    for img in images:
        if multiscale:
            img = fit_square(img, model.config.resolution)
        x = uint8_to_tensor(img)
        recon, _, idx = model(x)
        psnrs.append(psnr(_to_uint8(recon), img))
        indices.append(idx.numpy().ravel())
        if multiscale:
            each = model.idxBl_to_img(model.config.split_scales(idx), last_one=False)
            prefix.append([psnr(_to_uint8(r), img) for r in each])
    model.train(was_training)
    stats = codebook_stats(np.concatenate(indices), model.codebook_size)
    out = {"psnr": float(np.mean(psnrs)), "psnr_each": psnrs, **stats}
    if multiscale:
        out["psnr_per_prefix"] = [float(v) for v in np.mean(prefix, axis=0)]
    return out


# what a resumed run may change; everything else continues as the run was started
RESUME_OVERRIDES = ("out", "steps", "stop_at", "threads", "eval_every", "ckpt_every")


def _resumed_config(given: TrainConfig, state: dict[str, Any]) -> TrainConfig:
    saved = dict(state["train_config"])
    saved["model"] = VQVAEConfig.from_dict(saved["model"])
    saved.update({k: getattr(given, k) for k in RESUME_OVERRIDES})
    return TrainConfig(**saved)


def _rng_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"torch": torch.get_rng_state(), "sampler": gen.get_state()}


def train(tc: TrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a VQVAE; return the final held-out evaluation."""
    start, state = 0, {"history": [], "wall_seconds": 0.0}
    if resume:
        model, ckpt = load_model(resolve_checkpoint(tc.out))
        tc = _resumed_config(tc, json.loads((ckpt / "train_state.json").read_text()))
        tc.model = model.config
    else:
        torch.manual_seed(tc.seed)
        model = build_model(tc.model)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    gen = torch.Generator().manual_seed(tc.seed)
    paths = find_images(tc.data) if tc.data else default_train_paths()
    if tc.model.is_multiscale and tc.crop != tc.model.resolution:
        raise ValueError(
            f"a multi-scale model trains on {tc.model.resolution}x{tc.model.resolution} crops "
            f"(its one resolution), got crop {tc.crop}"
        )
    sampler = CropSampler(load_images(paths), tc.crop, gen, tc.max_zoom_out)
    held_out = load_images(held_out_paths())
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=tc.lr, weight_decay=tc.weight_decay
    )
    if resume:
        state, rng = load_training(ckpt, opt)
        start = state["step"]
        torch.set_rng_state(rng["torch"])
        gen.set_state(rng["sampler"])
    model.train()

    def checkpoint(step: int) -> None:
        state["train_config"] = dataclasses.asdict(tc) | {"model": tc.model.to_dict()}
        save_checkpoint(tc.out, step, model, opt, state, _rng_state(gen))

    # Ctrl-C finishes the step in flight, writes a checkpoint, then exits; a second one
    # interrupts at once.
    interrupted = []

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.append(signum)
        signal.signal(signal.SIGINT, previous)

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    end = min(tc.steps, tc.stop_at) if tc.stop_at else tc.steps
    bar = tqdm(range(start, end), initial=start, total=tc.steps, disable=not progress)
    t0 = time.perf_counter()
    try:
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(tc, step)
            x = sampler.sample(tc.batch_size)
            recon, vq_loss, idx = model(x)
            mse = F.mse_loss(recon, x)
            loss = mse + vq_loss
            if tc.l1_weight:
                loss = loss + tc.l1_weight * F.l1_loss(recon, x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 10 == 0:
                bar.set_postfix(
                    loss=f"{loss.item():.4f}",
                    psnr=f"{10 * math.log10(4.0 / max(mse.item(), 1e-12)):.2f}",
                    codes=f"{int(idx.unique().numel())}/{model.codebook_size}",
                )
            done = step + 1
            if done % tc.eval_every == 0 or done == tc.steps:
                ev = evaluate(model, held_out)
                state["history"].append({"step": done, **ev})
                bar.write(
                    f"step {done}: held-out PSNR {ev['psnr']:.2f} dB, codes used "
                    f"{ev['codes_used']}/{model.codebook_size}, perplexity {ev['perplexity']:.0f}"
                )
            if done % tc.ckpt_every == 0 or done in (tc.steps, end) or interrupted:
                state["wall_seconds"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                checkpoint(done)
            if interrupted:
                bar.close()
                print(f"\ninterrupted: checkpoint written at step {done}", file=sys.stderr)
                raise KeyboardInterrupt
    finally:
        if in_main and signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, previous)
    bar.close()
    return state["history"][-1] if state["history"] else evaluate(model, held_out)
