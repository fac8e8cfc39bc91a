import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vqedge.models import VQVAE
from vqedge.models.checkpoint import load_model, load_pretrained, save_checkpoint
from vqedge.models.data import CropSampler, load_images
from vqedge.models.train import TrainConfig, train
from vqedge.runtime.inputs import find_images

TINY_ARGS = [
    "--base-channels",
    "8",
    "--channel-mult",
    "1",
    "2",
    "2",
    "--res-blocks",
    "1",
    "--mid-blocks",
    "1",
    "--codebook-size",
    "32",
    "--code-dim",
    "4",
    "--crop",
    "16",
    "--batch-size",
    "4",
]


def _tc(tiny_config, folder, out, **kw) -> TrainConfig:
    base = dict(
        data=str(folder),
        out=str(out),
        steps=6,
        batch_size=4,
        crop=16,
        warmup=2,
        eval_every=1000,
        ckpt_every=1000,
        threads=1,
        model=tiny_config,
    )
    return TrainConfig(**(base | kw))


def test_few_steps_reduce_loss(tiny_config, photo_folder):
    torch.manual_seed(0)
    model = VQVAE(tiny_config).train()
    sampler = CropSampler(load_images(find_images(photo_folder)), 16, torch.Generator())
    x = sampler.sample(8)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(40):
        recon, vq_loss, _ = model(x)
        loss = torch.nn.functional.mse_loss(recon, x) + vq_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.75 * losses[0]


def test_checkpoint_round_trip(tiny_config, tmp_path):
    model = VQVAE(tiny_config).eval()
    path = save_checkpoint(tmp_path / "run", 7, model)
    assert (tmp_path / "run" / "latest").read_text().strip() == path.name
    loaded = load_pretrained(tmp_path / "run")
    assert not loaded.training and loaded.config == tiny_config
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])
    assert not list((tmp_path / "run").glob(".tmp-*"))


def test_resume_is_exact(tiny_config, photo_folder, tmp_path):
    train(_tc(tiny_config, photo_folder, tmp_path / "a"), progress=False)
    train(_tc(tiny_config, photo_folder, tmp_path / "b", stop_at=3), progress=False)
    assert (tmp_path / "b" / "latest").read_text().strip() == "ckpt-0000003"
    # a resumed run keeps its own hyperparameters (the lr given here is not used)
    train(_tc(tiny_config, photo_folder, tmp_path / "b", lr=1.0), resume=True, progress=False)
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    opt_a = (tmp_path / "a" / "ckpt-0000006" / "optimizer.safetensors").read_bytes()
    opt_b = (tmp_path / "b" / "ckpt-0000006" / "optimizer.safetensors").read_bytes()
    assert opt_a == opt_b


def test_dataloader_workers_train_the_same_run(tiny_config, photo_folder, tmp_path):
    # batches built by worker processes arrive in step order: the same weights as in-process
    train(_tc(tiny_config, photo_folder, tmp_path / "a", steps=4), progress=False)
    train(_tc(tiny_config, photo_folder, tmp_path / "b", steps=4, workers=2), progress=False)
    a, _ = load_model(tmp_path / "a")
    b, _ = load_model(tmp_path / "b")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_training_reports_held_out_metrics(tiny_config, photo_folder, tmp_path):
    ev = train(_tc(tiny_config, photo_folder, tmp_path / "r", steps=2), progress=False)
    assert len(ev["psnr_each"]) == 3  # china, flower, chelsea at full size
    assert 0 < ev["psnr"] < 60
    assert 1 <= ev["codes_used"] <= 32 and 1.0 <= ev["perplexity"] <= 32


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        find_images(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        find_images(tmp_path / "missing")


def test_corrupt_file_is_skipped_with_warning(photo_folder):
    bad = photo_folder / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.warns(UserWarning, match="broken.png"):
        images = load_images(find_images(photo_folder))
    assert len(images) == 4


def test_only_corrupt_files_is_an_error(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"nope")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="could be read"):
        load_images(find_images(tmp_path))


def test_corrupt_or_mismatched_checkpoint(tiny_config, tmp_path):
    path = save_checkpoint(tmp_path / "run", 1, VQVAE(tiny_config))
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        load_model(path)
    path = save_checkpoint(tmp_path / "run2", 1, VQVAE(tiny_config))
    (path / "config.json").write_text('{"codebook_size": 64, "code_dim": 4}')
    with pytest.raises(ValueError, match="does not match"):
        load_model(path)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_model(tmp_path / "nowhere")


def test_cli_ctrl_c_writes_checkpoint(photo_folder, tmp_path):
    out = tmp_path / "run"
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "vqedge.commands.main",
        "train",
        str(photo_folder),
        "--out",
        str(out),
        "--steps",
        "100000",
        "--ckpt-every",
        "100000",
        "--threads",
        "1",
        *TINY_ARGS,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.time() + 60
        buf = b""
        while b"1/100000" not in buf and time.time() < deadline:  # training has started
            buf += os.read(proc.stderr.fileno(), 4096)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert rc == 130
    latest = Path(out / "latest").read_text().strip()
    model, _ = load_model(out)
    assert int(latest.split("-")[1]) >= 1
    assert model.config.codebook_size == 32


def test_init_from_starts_a_new_run_from_other_weights(tiny_config, photo_folder, tmp_path):
    train(_tc(tiny_config, photo_folder, tmp_path / "a", steps=3), progress=False)
    a, _ = load_model(tmp_path / "a")
    other = dataclasses.replace(tiny_config, codebook_size=16)  # replaced by the source's
    # lr 0: AdamW leaves the weights alone, so they must be the source's exactly
    tc = _tc(other, photo_folder, tmp_path / "b", steps=2, lr=0.0, init_from=str(tmp_path / "a"))
    train(tc, progress=False)
    b, ckpt = load_model(tmp_path / "b")
    assert ckpt.name == "ckpt-0000002" and b.config == tiny_config
    for k, v in a.encoder.state_dict().items():
        assert torch.equal(v, b.encoder.state_dict()[k]), k
    state = json.loads((ckpt / "train_state.json").read_text())
    assert state["init"]["from"] == str(tmp_path / "a")
    assert state["init"]["state"]["step"] == 3 and "optimizer" not in state["init"]["state"]


def test_cli_init_from_with_resume_is_refused(tmp_path):
    cmd = [sys.executable, "-m", "vqedge.commands.main", "train", "--resume"]
    r = subprocess.run(
        [*cmd, "--init-from", "vqvae-f4", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "give one of them" in r.stderr
    assert "Traceback" not in r.stderr
