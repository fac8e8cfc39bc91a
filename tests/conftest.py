from pathlib import Path

import numpy as np
import pytest

from vqedge.runtime.config import VQVAEConfig


@pytest.fixture(scope="session", autouse=True)
def verdict_cache(tmp_path_factory) -> Path:
    """load()'s on-device verdicts go to a folder of this run, not the user's cache (the
    CLI's subprocesses inherit it)."""
    import os

    path = tmp_path_factory.mktemp("vqedge-cache")
    os.environ["VQEDGE_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_config() -> VQVAEConfig:
    """A VQVAE small enough to train a few steps in a second (frozen: safe to share)."""
    return VQVAEConfig(
        base_channels=8,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        num_mid_blocks=1,
        codebook_size=32,
        code_dim=4,
    )


@pytest.fixture
def photo_folder(tmp_path):
    """A folder of small real photo crops (from the packaged photos), PNG and JPEG."""
    from PIL import Image

    from vqedge.models.data import default_train_paths

    out = tmp_path / "photos"
    (out / "sub").mkdir(parents=True)
    for i, p in enumerate(default_train_paths()[:4]):
        im = Image.open(p).convert("RGB").resize((48, 40))
        target = out / "sub" if i % 2 else out
        im.save(target / f"img{i}.{'png' if i % 2 else 'jpg'}")
    return out


# -- one tiny multi-scale model and its bundle, shared by the model, export and runtime tests -


@pytest.fixture(scope="session")
def ms_config() -> VQVAEConfig:
    """A multi-scale config with VAR's scheme at a tiny size: 5 scales, 103 tokens, 32x32."""
    return VQVAEConfig(
        base_channels=8,
        channel_mult=(1, 1, 2),
        num_res_blocks=1,
        num_mid_blocks=0,
        codebook_size=64,
        code_dim=4,
        patch_nums=(1, 2, 3, 5, 8),
    )


@pytest.fixture(scope="session")
def ms_model(ms_config):
    """A tiny model with a codebook spread like a trained one (random, not near zero)."""
    import torch

    from vqedge.models.multiscale import build_model

    torch.manual_seed(0)
    model = build_model(ms_config).eval()
    with torch.no_grad():
        model.quantize.vq.embedding.weight.normal_(0, 0.5)
    return model


@pytest.fixture(scope="session")
def images(ms_config):
    """The held-out photos fitted to the tiny model's size, float [3, 3, R, R] in [-1, 1]."""
    import torch

    from vqedge.models.data import held_out_paths
    from vqedge.runtime.images import fit_square, uint8_to_float
    from vqedge.runtime.inputs import read_image

    R = ms_config.resolution
    photos = [fit_square(read_image(p), R) for p in held_out_paths()]
    return torch.from_numpy(uint8_to_float(np.stack(photos)))


@pytest.fixture(scope="session")
def bundle(tmp_path_factory, ms_model) -> Path:
    """The tiny multi-scale model exported (fp32, fp16): read-only for every test."""
    from vqedge.export import export_bundle
    from vqedge.models.checkpoint import save_checkpoint

    ckpt = save_checkpoint(tmp_path_factory.mktemp("ms"), 0, ms_model)
    out = tmp_path_factory.mktemp("msb") / "bundle"
    export_bundle(ckpt, out, precisions=("fp32", "fp16"), log=lambda _m: None)
    return out
