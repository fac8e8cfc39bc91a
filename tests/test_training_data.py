import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqedge.models.data import (
    COLLECTION,
    DEBIAN_PACKAGES,
    HELD_OUT_ILLUSTRATIONS,
    NEAR_DUPLICATE_BITS,
    ROOT_ENV,
    SPLITS,
    TRAIN,
    VALIDATION,
    CollectionMissing,
    CropBatches,
    collection,
    collection_paths,
    difference_hash,
    folder_split,
    held_out_paths,
    load_images,
)
from vqedge.models.train import TrainConfig, train
from vqedge.runtime.inputs import read_image

INSTALL = "sudo apt-get install plasma-workspace-wallpapers mate-backgrounds"
# `make test` installs the Debian packages and sets this: there the checks that need them
# fail instead of skipping, so a test run that claims them cannot pass without them
REQUIRE_ENV = "VQEDGE_REQUIRE_DATA"


def _installed() -> bool:
    try:
        for split in SPLITS:
            collection_paths(split)
    except CollectionMissing:
        return False
    return True


def _need_packages(what: str, hint: str) -> None:
    """Skip (or, under `make test`, fail) with what to install."""
    msg = f"{what} are not installed: {hint}"
    if os.environ.get(REQUIRE_ENV):
        pytest.fail(msg)
    pytest.skip(msg)


def test_collection_table_is_consistent():
    train_items = collection(TRAIN)
    assert len({c.path for c in train_items}) == len(train_items) >= 30
    assert {c.kind for c in COLLECTION} == {"photo", "illustration"}
    assert all(c.licence and c.author for c in COLLECTION)
    assert {c.package for c in COLLECTION} >= set(DEBIAN_PACKAGES)
    held = [c.path for c in COLLECTION if c.split != TRAIN]
    assert not set(held) & {c.path for c in train_items}
    names = {Path(c.path).name for c in collection("held-out")}
    assert names == {"china.jpg", "flower.jpg", "chelsea.png"}
    illus = collection(HELD_OUT_ILLUSTRATIONS)
    assert 2 <= len(illus) <= 3 and {c.kind for c in illus} == {"illustration"}


def test_collection_files_are_the_largest_of_each_wallpaper():
    """Every kept file exists, is the largest of its wallpaper's sizes, and no two entries are
    one file (what the message says without the packages: the test below)."""
    if not _installed():
        _need_packages("the training collection's Debian packages", f"{INSTALL} (make train-data)")
    paths = [p for split in SPLITS if split != "held-out" for p in collection_paths(split)]
    real = [p.resolve() for p in paths]
    assert len(set(real)) == len(real)
    assert not set(real) & {p.resolve() for p in held_out_paths()}
    for p in paths:
        if "/wallpapers/" in str(p):  # one folder per wallpaper, one file per screen size
            sizes = {q.resolve(): Image.open(q).size for q in p.parent.iterdir()}
            assert Image.open(p).size == max(sizes.values(), key=lambda s: s[0] * s[1]), p
    elephants = [p for p in paths if "Elephants" in p.name]
    assert [p.name for p in elephants] == ["Elephants_5640x3172.jpg"]


def _training_side_files() -> list[Path]:
    """Every image file of what training reads: each training image and, for a Plasma
    wallpaper, every other size and the screenshot in its folder (the same picture)."""
    files = set()
    for p in collection_paths(TRAIN):
        folder = p.parents[2] if p.parent.name == "images" else None  # NAME/contents/images
        files |= {q.resolve() for q in folder.rglob("*")} if folder else {p.resolve()}
    return sorted(p for p in files if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def test_no_held_out_validation_or_out_of_set_image_is_a_training_image_by_content():
    """A 256-bit difference hash of every image on the other side against every file the
    training split could hold: names say nothing (Plasma names its files by size)."""
    from vqedge.benchmarks.quality import EVAL_PACKAGES, INSTALL_HINT, OUT_OF_SET

    if not _installed():
        _need_packages("the training collection's Debian packages", f"{INSTALL} (make train-data)")
    if not all(Path(o.path).is_file() for o in OUT_OF_SET):
        _need_packages(f"the out-of-set images ({', '.join(EVAL_PACKAGES)})", INSTALL_HINT)
    others = {
        **{f"held-out {p.name}": p for p in held_out_paths()},
        **{f"{s} {p}": p for s in SPLITS[1:] if s != "held-out" for p in collection_paths(s)},
        **{f"out-of-set {o.path}": Path(o.path) for o in OUT_OF_SET},
    }  # fmt: skip
    train_files = _training_side_files()
    assert len(train_files) > 60  # every size of every wallpaper, not only the kept ones
    train_hashes = np.stack([difference_hash(p) for p in train_files])
    nearest = {}
    for name, path in others.items():
        bits = (train_hashes != difference_hash(path)).sum(axis=1)
        k = int(bits.argmin())
        nearest[name] = (int(bits[k]), train_files[k].name)
    close = {n: v for n, v in nearest.items() if v[0] <= NEAR_DUPLICATE_BITS}
    assert not close, close


def test_difference_hash_sees_a_resized_copy_and_tells_other_pictures_apart(tmp_path):
    photo = read_image(held_out_paths()[0])
    Image.fromarray(photo).save(tmp_path / "a.png")
    small = Image.fromarray(photo).resize((photo.shape[1] // 3, photo.shape[0] // 3))
    small.save(tmp_path / "a_small.jpg", quality=70)
    Image.fromarray(read_image(held_out_paths()[1])).save(tmp_path / "b.png")
    a, a_small, b = (difference_hash(tmp_path / n) for n in ("a.png", "a_small.jpg", "b.png"))
    assert a.shape == (256,) and a.dtype == bool
    assert (a != a_small).sum() <= NEAR_DUPLICATE_BITS < (a != b).sum()


def test_validation_split_is_apart_from_training_and_held_out():
    val = collection(VALIDATION)
    assert len(val) == 3 and {c.kind for c in val} == {"photo", "illustration"}
    others = {c.path for c in COLLECTION if c.split != VALIDATION}
    assert not {c.path for c in val} & others
    # a folder of ten or more images gives every tenth file to validation
    paths = [Path(f"/x/{i:02d}.png") for i in range(21)]
    train_paths, val_paths = folder_split(paths)
    assert val_paths == [paths[0], paths[10], paths[20]]
    assert sorted(train_paths + val_paths) == paths and not set(train_paths) & set(val_paths)
    assert folder_split(paths[:9]) == (paths[:9], [])


def test_training_selects_on_validation_and_measures_held_out_once_at_the_end(
    tiny_config, tmp_path
):
    rng = np.random.default_rng(2)
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(10):  # file 00 goes to validation
        Image.fromarray(rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)).save(
            folder / f"{i:02d}.png"
        )
    tc = TrainConfig(data=str(folder), out=str(tmp_path / "run"), steps=4, batch_size=2,
                     crop=16, warmup=1, eval_every=2, ckpt_every=4, threads=1,
                     model=tiny_config)  # fmt: skip
    ev = train(tc, progress=False)
    state = json.loads((tmp_path / "run" / "ckpt-0000004" / "train_state.json").read_text())
    splits = [(h["step"], h["split"]) for h in state["history"]]
    assert splits == [(2, "validation"), (4, "validation"), (4, "held-out")], splits
    assert len(state["history"][0]["psnr_each"]) == 1  # the one validation image
    assert ev["split"] == "held-out" and len(ev["psnr_each"]) == 3
    best = state["best"]
    assert best["step"] in (2, 4)
    best_ckpt = tmp_path / "run" / "best" / f"ckpt-{best['step']:07d}"
    assert (tmp_path / "run" / "best" / "latest").read_text().strip() == best_ckpt.name
    # the kept checkpoint carries its own record, up to its evaluation, for a model card
    kept = json.loads((best_ckpt / "train_state.json").read_text())
    assert kept["history"][-1]["step"] == best["step"]
    assert kept["history"][-1]["split"] == "validation" and kept["train_config"]


def test_missing_collection_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv(ROOT_ENV, str(tmp_path))
    with pytest.raises(CollectionMissing, match="make train-data") as e:
        collection_paths(TRAIN)
    assert INSTALL in str(e.value) and str(tmp_path) in str(e.value)


def test_cli_train_without_collection_is_one_line(tmp_path):
    env = os.environ | {ROOT_ENV: str(tmp_path / "nowhere")}
    r = subprocess.run(
        [sys.executable, "-m", "vqedge.commands.main", "train", "--out", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and INSTALL in lines[0] and "Traceback" not in r.stderr


def test_large_images_are_downsized_once_and_cached(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "big.png"
    Image.fromarray(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8)).save(src)
    assert src.stat().st_size > 1 << 20  # noise does not compress: a file worth caching
    cache = tmp_path / "cache"
    first = load_images([src], downscale_to=300, cache_dir=cache)[0]
    assert first.shape == (225, 300, 3)
    [cached] = cache.glob("*.npy")
    again = load_images([src], downscale_to=300, cache_dir=cache)[0]
    assert np.array_equal(first, again)
    # another size is another entry; a damaged entry is rebuilt, not trusted
    load_images([src], downscale_to=200, cache_dir=cache)
    assert len(list(cache.glob("*.npy"))) == 2
    cached.write_bytes(b"not an array")
    assert np.array_equal(load_images([src], downscale_to=300, cache_dir=cache)[0], first)


def _photos(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8) for i in range(n)]


def test_each_step_has_its_own_batch():
    a = CropBatches(_photos(), crop=16, batch_size=4, seed=0, start=0, end=6)
    b = CropBatches(_photos(), crop=16, batch_size=4, seed=0, start=3, end=6)
    first = list(a)
    assert len(first) == 6 and first[0].shape == (4, 3, 16, 16)
    # a run that starts at step 3 (a resume) draws the same batches as one that got there
    for x, y in zip(first[3:], b):
        assert torch.equal(x, y)
    assert not torch.equal(first[0], first[1])
    other_seed = CropBatches(_photos(), crop=16, batch_size=4, seed=1, start=0, end=1)
    assert not torch.equal(first[0], next(iter(other_seed)))


def test_dataloader_workers_keep_step_order():
    data = CropBatches(_photos(), crop=16, batch_size=2, seed=0, start=0, end=7)
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    for step, x in enumerate(loader):
        assert torch.equal(x, data.batch(step)), step
    assert step == 6


def test_cuda_device(tiny_config, photo_folder, tmp_path):
    """Without a CUDA GPU, --device cuda is a clear error; with one, it trains."""
    tc = TrainConfig(
        data=str(photo_folder),
        out=str(tmp_path / "run"),
        steps=2,
        crop=16,
        warmup=1,
        device="cuda",
        model=tiny_config,
    )
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            train(tc, progress=False)
        return
    ev = train(tc, progress=False)
    assert (tmp_path / "run" / "latest").read_text().strip() == "ckpt-0000002"
    assert 0 < ev["psnr"] < 60


def _state(tiny_config, **tc) -> dict:
    ev = {"step": 2, "psnr": 20.0, "psnr_each": [19.0, 20.0, 21.0], "codes_used": 30}
    ev |= {"usage": 0.9, "perplexity": 20.0}
    config = dict(data=None, batch_size=16, crop=16, lr=4e-4, warmup=1, min_lr_ratio=0.1)
    config |= dict(weight_decay=1e-4, seed=0, threads=1)
    return {"step": 2, "wall_seconds": 60.0, "history": [ev], "train_config": config | tc}


def test_model_card_lists_the_collection(tiny_config):
    from vqedge.models.card import model_card

    card = model_card(tiny_config, _state(tiny_config, work_side=1024))
    assert "## Data sources" in card and "default collection: " in card
    for c in COLLECTION:
        assert f"`{c.path}`" in card
    old = model_card(tiny_config, _state(tiny_config))  # a run from before the collection
    assert "scikit-image" in old and "## Data sources" not in old


def test_model_card_shows_the_warm_start(tiny_config):
    from vqedge.models.card import model_card

    earlier = _state(tiny_config) | {"step": 4500, "wall_seconds": 3240.0}
    state = _state(tiny_config, work_side=1024) | {"init": {"from": "vqvae-f4", "state": earlier}}
    card = model_card(tiny_config, state)
    assert "| warm start | the weights of `vqvae-f4`: 4500 steps of batch 16" in card
    assert "54 minutes, held-out 20.00 dB" in card
    assert "## Curve of the run it started from (`vqvae-f4`)" in card
    assert "warm start" not in model_card(tiny_config, _state(tiny_config, work_side=1024))


def test_publish_writes_the_bundle_quality_into_the_card(tiny_config, tmp_path):
    from vqedge.models.card import publish
    from vqedge.models.checkpoint import save_checkpoint
    from vqedge.models.vqvae import VQVAE

    model = VQVAE(tiny_config)
    save_checkpoint(tmp_path / "run", 2, model, train_state=_state(tiny_config, work_side=1024))
    entry = {"psnr": 27.5, "psnr_each": {"china.jpg": 25.0, "chelsea.png": 30.0}}
    every = {"images": 2, "tokens": 99, "codes_used": 30, "usage": 0.9375, "perplexity": 20.0}
    sets = {"held-out photos": entry, "all sets": every}
    quality = {"bundles": {"tiny": {"fp32": sets, "int8": sets}}}
    (tmp_path / "q.json").write_text(json.dumps(quality))
    dest = publish(tmp_path / "run", tmp_path / "tiny", tmp_path / "q.json")
    card = (dest / "MODEL_CARD.md").read_text()
    assert "| held-out photos | 2 | 27.50 | 27.50 |" in card
    assert "| held-out photos | chelsea.png | 30.00 |" in card
    assert "Codes used over all 2 images (99 tokens): 30 (93.8%)" in card
    assert (dest / "model.safetensors").is_file() and not list(dest.glob(".tmp*"))
