"""Training data: image folders, the default photo set, and random crops.

The default set is the photos that ship inside scikit-image and scikit-learn (nothing is
downloaded). Three of them are held out and never trained on.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")

# (package, path inside the package): natural photos, grayscale ones included as RGB.
DEFAULT_TRAIN = [
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/brick.png"),
    ("skimage", "data/camera.png"),
    ("skimage", "data/cell.png"),
    ("skimage", "data/clock_motion.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/coins.png"),
    ("skimage", "data/grass.png"),
    ("skimage", "data/gravel.png"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/ihc.png"),
    ("skimage", "data/moon.png"),
    ("skimage", "data/motorcycle_left.png"),
    ("skimage", "data/motorcycle_right.png"),
    ("skimage", "data/retina.jpg"),
    ("skimage", "data/rocket.jpg"),
]
# Never trained on: the held-out split for every reported quality figure.
HELD_OUT = [
    ("sklearn", "datasets/images/china.jpg"),
    ("sklearn", "datasets/images/flower.jpg"),
    ("skimage", "data/chelsea.png"),
]


def package_file(package: str, relpath: str) -> Path:
    """Path of a file shipped inside an installed package."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"package {package!r} is not installed; it ships the default photos "
            "(pip install 'vqedge[train]')"
        )
    path = Path(spec.origin).parent / relpath
    if not path.is_file():
        raise FileNotFoundError(f"{package} does not ship {relpath} (looked at {path})")
    return path


def default_train_paths() -> list[Path]:
    return [package_file(pkg, rel) for pkg, rel in DEFAULT_TRAIN]


def held_out_paths() -> list[Path]:
    return [package_file(pkg, rel) for pkg, rel in HELD_OUT]


def find_images(folder: str | Path) -> list[Path]:
    """Image files (PNG, JPEG, WebP) under ``folder``, recursively, in sorted order."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}")
    return paths


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB [H, W, 3]; a clear ValueError if it is unreadable."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from None


def uint8_to_tensor(img_HWC: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, H, W] in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(img_HWC)).permute(2, 0, 1).float()
    return (x / 127.5 - 1.0).unsqueeze(0)


def load_images(paths: list[Path]) -> list[np.ndarray]:
    """Load every readable image; unreadable ones are skipped with a warning naming them."""
    images = []
    for p in paths:
        try:
            images.append(load_rgb(p))
        except ValueError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
    if not images:
        raise ValueError(f"none of the {len(paths)} image files could be read")
    return images


class CropSampler:
    """Random crops with flips and channel permutations, drawn from one torch.Generator.

    All randomness comes from ``generator``, so a saved generator state resumes the exact
    same stream of batches.
    """

    def __init__(self, images: list[np.ndarray], crop: int, generator: torch.Generator):
        self.images = [torch.from_numpy(im).permute(2, 0, 1).contiguous() for im in images]
        self.crop = crop
        self.g = generator

    def _randint(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.g))

    def sample(self, batch: int) -> torch.Tensor:
        """A batch of crops, float [B, 3, crop, crop] in [-1, 1]."""
        out = []
        for _ in range(batch):
            img = self.images[self._randint(len(self.images))]
            _, H, W = img.shape
            if self.crop > H or self.crop > W:  # small image: edge-pad up to the crop size
                img = torch.nn.functional.pad(
                    img[None].float(),
                    (0, max(0, self.crop - W), 0, max(0, self.crop - H)),
                    mode="replicate",
                )[0]
                _, H, W = img.shape
            y, x = self._randint(H - self.crop + 1), self._randint(W - self.crop + 1)
            c = img[:, y : y + self.crop, x : x + self.crop].float()
            if self._randint(2):
                c = c.flip(2)
            if self._randint(2):
                c = c.flip(1)
            c = c[torch.randperm(3, generator=self.g)]  # colour variety from few photos
            out.append(c)
        return torch.stack(out) / 127.5 - 1.0
