"""Training loop behind ``vqedge train``: random crops, AdamW, MSE (+L1) + VQ loss.

Runs on the CPU or a CUDA GPU (bf16 autocast, batches built by DataLoader workers). Each
step's batch is drawn from its own seeded generator, so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
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

from vqedge.models.checkpoint import (
    load_model,
    load_pretrained,
    load_training,
    resolve_checkpoint,
    save_checkpoint,
    training_record,
)
from vqedge.models.data import (
    HELD_OUT_ILLUSTRATIONS,
    VALIDATION,
    WORK_SIDE,
    CropBatches,
    collection_paths,
    default_cache_dir,
    folder_split,
    held_out_paths,
    load_images,
    uint8_to_tensor,
)
from vqedge.models.multiscale import build_model
from vqedge.models.vqvae import VQVAE
from vqedge.runtime.config import VQVAEConfig
from vqedge.runtime.images import fit_square, float_to_uint8
from vqedge.runtime.inputs import find_images
from vqedge.runtime.metrics import codebook_stats, psnr


@dataclass
class TrainConfig:
    # image folder (recursive); None trains on the default collection
    data: str | None = None
    # run folder: checkpoints, 'latest', history
    out: str = "runs/vqvae"
    # total optimizer steps (a resumed run continues up to this)
    steps: int = 5000
    # None: 16 on the CPU, 64 on a GPU
    batch_size: int | None = None
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
    # "cpu" or "cuda" (bf16 autocast); a resumed run may move between them
    device: str = "cpu"
    # DataLoader worker processes building batches; None: none on the CPU, up to 8 on a GPU
    workers: int | None = None
    # training images are shrunk once to this longer side (None: used at full size)
    work_side: int | None = WORK_SIDE
    # warm start: weights and architecture (``model`` is then ignored) from this checkpoint,
    # run folder or shipped model name; optimizer, schedule and step start afresh
    init_from: str | None = None
    model: VQVAEConfig = field(default_factory=VQVAEConfig)


def lr_at(tc: TrainConfig, step: int) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    t = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * cos)


DEFAULT_BATCH = {"cpu": 16, "cuda": 64}


def _to_uint8(img: torch.Tensor) -> np.ndarray:
    return float_to_uint8(img[0].float().cpu().numpy())


@torch.no_grad()
def evaluate(model: VQVAE, images: list[np.ndarray]) -> dict[str, Any]:
    """Held-out quality: mean PSNR (dB, uint8), codes used, perplexity.

    Single-scale models see each photo at full size; a multi-scale model sees it fitted to
    its resolution (fit_square) and also reports the PSNR after each prefix of scales.
    """
    was_training = model.training
    model.eval()
    multiscale = model.config.is_multiscale
    device = next(model.parameters()).device
    psnrs, indices, prefix = [], [], []
    for img in images:
        if multiscale:
            img = fit_square(img, model.config.resolution)
        x = uint8_to_tensor(img).to(device)
        recon, _, idx = model(x)
        psnrs.append(psnr(_to_uint8(recon), img))
        indices.append(idx.cpu().numpy().ravel())
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
RESUME_OVERRIDES = (
    "out",
    "steps",
    "stop_at",
    "threads",
    "eval_every",
    "ckpt_every",
    "device",
    "workers",
)


def _resumed_config(given: TrainConfig, state: dict[str, Any]) -> TrainConfig:
    saved = dict(state["train_config"])
    saved["model"] = VQVAEConfig.from_dict(saved["model"])
    # runs started before images were downsized trained on them at full size
    saved.setdefault("work_side", None)
    saved.update({k: getattr(given, k) for k in RESUME_OVERRIDES})
    return TrainConfig(**saved)


def _device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"--device {name}: torch {torch.__version__} sees no CUDA GPU (a CPU-only "
                "build, or no GPU on this machine); train with --device cpu, or install a "
                "CUDA build of torch"
            )
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}: expected 'cpu' or 'cuda'")


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    # The batches are seeded per step; torch's global generators drive the codebook's
    # dead-code restarts.
    rng = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _ignore_sigint(worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the workers keep serving batches while the
    # main process finishes its step and writes the checkpoint.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _fp32_forward(forward: Any, device_type: str) -> Any:
    """``forward`` run with autocast off and float32 inputs: the nearest-code argmax and
    the EMA codebook sums need full precision."""

    def run(z: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(device_type, enabled=False):
            return forward(z.float(), *args, **kwargs)

    return run


def _batches(
    tc: TrainConfig, images: list[np.ndarray], start: int, end: int, device: torch.device
) -> torch.utils.data.DataLoader:
    data = CropBatches(
        images, tc.crop, tc.batch_size, tc.seed, start, end, max_zoom_out=tc.max_zoom_out
    )
    workers = tc.workers
    if workers is None:
        workers = 0 if device.type == "cpu" else min(8, max(1, (os.cpu_count() or 2) - 1))
    return torch.utils.data.DataLoader(
        data,
        batch_size=None,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=_ignore_sigint if workers else None,
        prefetch_factor=4 if workers else None,
        # its own generator: the loader's seed draw must not move torch's global one
        generator=torch.Generator().manual_seed(tc.seed),
    )


def _train_images(tc: TrainConfig) -> tuple[list[np.ndarray], ...]:
    """The training images, the validation images and the held-out illustrations (the last
    from the default collection only)."""
    cache = default_cache_dir() if tc.work_side == WORK_SIDE else None
    if tc.data:
        train_paths, val_paths = folder_split(find_images(tc.data))
        return load_images(train_paths, tc.work_side, cache), _whole(val_paths), []
    val = _whole(collection_paths(VALIDATION))
    illus = load_images(collection_paths(HELD_OUT_ILLUSTRATIONS), WORK_SIDE, default_cache_dir())
    return load_images(collection_paths(), tc.work_side, cache), val, illus


def _whole(paths: list) -> list[np.ndarray]:
    # validation images are evaluated whole, as the held-out illustrations are: at WORK_SIDE
    return load_images(paths, WORK_SIDE, default_cache_dir()) if paths else []


def _eval_line(ev: dict[str, Any], codebook_size: int) -> str:
    ill = ev.get("illustrations")
    return (
        f"{ev['split']} PSNR {ev['psnr']:.2f} dB"
        + (f" (illustrations {ill['psnr']:.2f} dB)" if ill else "")
        + f", codes used {ev['codes_used']}/{codebook_size}, perplexity {ev['perplexity']:.0f}"
    )


def _start(tc: TrainConfig, resume: bool) -> tuple[Any, TrainConfig, dict[str, Any], Any]:
    """(model, the config it trains under, the training state, the checkpoint resumed or
    None): a resumed run, one initialized from a pretrained model, or a fresh one."""
    state: dict[str, Any] = {"history": [], "wall_seconds": 0.0}
    ckpt = None
    if resume:
        model, ckpt = load_model(resolve_checkpoint(tc.out))
        tc = _resumed_config(tc, json.loads((ckpt / "train_state.json").read_text()))
        tc.model = model.config
    else:
        torch.manual_seed(tc.seed)
        if tc.init_from:
            model = load_pretrained(tc.init_from)
            tc.model = model.config
            # the earlier training travels with the run: the source may be replaced later
            state["init"] = {"from": tc.init_from, "state": training_record(tc.init_from)}
        else:
            model = build_model(tc.model)
    return model, tc, state, ckpt


def _step(
    tc: TrainConfig, model: Any, opt: torch.optim.Optimizer, x: torch.Tensor, autocast: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimizer step on batch ``x``; returns (loss, reconstruction MSE, indices)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        recon, vq_loss, idx = model(x)
    recon = recon.float()
    mse = F.mse_loss(recon, x)
    loss = mse + vq_loss
    if tc.l1_weight:
        loss = loss + tc.l1_weight * F.l1_loss(recon, x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss, mse, idx


def train(tc: TrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) a VQVAE; return the last evaluation (the held-out one at the end).

    Every ``eval_every`` steps the validation split is evaluated (history entries with
    ``"split": "validation"``), and the checkpoint with the best validation PSNR so far is
    kept in ``OUT/best``: that is the model selection. The held-out photos (and, on the
    default collection, the held-out illustrations under ``"illustrations"``) are evaluated
    once, on the final checkpoint (``"split": "held-out"``), so no decision sees them.
    """
    start = 0
    model, tc, state, ckpt = _start(tc, resume)
    device = _device(tc.device)
    if tc.batch_size is None:
        tc.batch_size = DEFAULT_BATCH[device.type]
    if tc.threads:
        torch.set_num_threads(tc.threads)
    if tc.model.is_multiscale and tc.crop != tc.model.resolution:
        raise ValueError(
            f"a multi-scale model trains on {tc.model.resolution}x{tc.model.resolution} crops "
            f"(its one resolution), got crop {tc.crop}"
        )
    images, validation, illustrations = _train_images(tc)
    held_out = load_images(held_out_paths())
    model.to(device)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=tc.lr, weight_decay=tc.weight_decay
    )
    if resume:
        state, rng = load_training(ckpt, opt)
        start = state["step"]
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], device)
    autocast = device.type == "cuda"
    if autocast:
        torch.backends.cudnn.benchmark = True  # one crop size: pick the fastest kernels once
        model.quantize.forward = _fp32_forward(model.quantize.forward, device.type)
    model.train()

    def checkpoint(step: int) -> None:
        state["train_config"] = dataclasses.asdict(tc) | {"model": tc.model.to_dict()}
        save_checkpoint(tc.out, step, model, opt, state, _rng_state(device))

    def keep_best(step: int) -> None:
        # weights and the record a model card reads, without the optimizer: for publishing
        state["train_config"] = dataclasses.asdict(tc) | {"model": tc.model.to_dict()}
        save_checkpoint(os.path.join(tc.out, "best"), step, model, train_state=state, keep=1)

    def held_out_eval() -> dict[str, Any]:
        ev = {"split": "held-out", **evaluate(model, held_out)}
        if illustrations:
            ill = evaluate(model, illustrations)
            ev["illustrations"] = {"psnr": ill["psnr"], "psnr_each": ill["psnr_each"]}
        return ev

    def validation_eval(step: int) -> dict[str, Any]:
        ev = {"split": "validation", **evaluate(model, validation)}
        state["history"].append({"step": step, **ev})
        if ev["psnr"] > state.get("best", {}).get("psnr", -math.inf):
            state["best"] = {"step": step, "psnr": ev["psnr"]}
            keep_best(step)
        return ev

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
    batches = iter(_batches(tc, images, start, end, device))
    t0 = time.perf_counter()
    try:
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = lr_at(tc, step)
            t_data = time.perf_counter()
            x = next(batches).to(device, non_blocking=True)
            state["data_wait_seconds"] = state.get("data_wait_seconds", 0.0) + (
                time.perf_counter() - t_data
            )
            loss, mse, idx = _step(tc, model, opt, x, autocast)
            if step % 10 == 0:
                bar.set_postfix(
                    loss=f"{loss.item():.4f}",
                    psnr=f"{10 * math.log10(4.0 / max(mse.item(), 1e-12)):.2f}",
                    codes=f"{int(idx.unique().numel())}/{model.codebook_size}",
                )
            done = step + 1
            if validation and (done % tc.eval_every == 0 or done == tc.steps):
                ev = validation_eval(done)
                bar.write(f"step {done}: {_eval_line(ev, model.codebook_size)}")
            if done == tc.steps:
                ev = held_out_eval()
                state["history"].append({"step": done, **ev})
                bar.write(f"step {done}, final: {_eval_line(ev, model.codebook_size)}")
            if done % tc.ckpt_every == 0 or done in (tc.steps, end) or interrupted:
                state["wall_seconds"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                checkpoint(done)
            if interrupted:
                bar.close()
                print(f"\ninterrupted: checkpoint written at step {done}", file=sys.stderr)
                raise KeyboardInterrupt
    finally:
        del batches  # stops the DataLoader's workers
        if in_main and signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, previous)
    bar.close()
    return state["history"][-1] if state["history"] else held_out_eval()
