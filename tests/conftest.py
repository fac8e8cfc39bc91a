import pytest

from vqedge.runtime.config import VQVAEConfig


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
