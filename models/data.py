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

from vqedge.runtime.images import uint8_to_float
from vqedge.runtime.inputs import read_image

# (package, path inside the package): the colour photos. The grayscale ones are left out:
# they taught an early model that colour is not worth its bits (it reconstructed in grey).
DEFAULT_TRAIN = [
    ("skimage", "data/astronaut.png"),
    ("skimage", "data/coffee.png"),
    ("skimage", "data/hubble_deep_field.jpg"),
    ("skimage", "data/ihc.png"),
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


def uint8_to_tensor(img_HWC: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(uint8_to_float(img_HWC))


def load_images(paths: list[Path]) -> list[np.ndarray]:
    """Load every readable image; unreadable ones are skipped with a warning naming them."""
    images = []
    for p in paths:
        try:
            images.append(read_image(p))
        except ValueError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
    if not images:
        raise ValueError(f"none of the {len(paths)} image files could be read")
    return images


class CropSampler:
    """Random crops with flips, drawn from one torch.Generator.

    All randomness comes from ``generator``, so a saved generator state resumes the exact
    same stream of batches. ``max_zoom_out`` > 1 also draws a scale per crop (log-uniform
    in [1, max_zoom_out]): a region that much larger is cut and downsized (antialiased) to
    the crop, so the model also sees whole-photo detail density, as a downsized photo has.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        crop: int,
        generator: torch.Generator,
        max_zoom_out: float = 1.0,
    ):
        self.images = [torch.tensor(im).permute(2, 0, 1).contiguous() for im in images]
        self.crop = crop
        self.g = generator
        self.max_zoom_out = max_zoom_out

    def _randint(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.g))

    def sample(self, batch: int) -> torch.Tensor:
        """A batch of crops, float [B, 3, crop, crop] in [-1, 1]."""
        out = []
        for _ in range(batch):
            img = self.images[self._randint(len(self.images))]
            _, H, W = img.shape
            side = self.crop
            if self.max_zoom_out > 1.0:
                u = float(torch.rand((), generator=self.g))
                side = min(H, W, round(self.crop * self.max_zoom_out**u))
            if side > self.crop:
                y, x = self._randint(H - side + 1), self._randint(W - side + 1)
                region = img[None, :, y : y + side, x : x + side].float()
                img = torch.nn.functional.interpolate(
                    region, size=(self.crop, self.crop), mode="bilinear", antialias=True
                )[0].clamp(0, 255)
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
            out.append(c)
        return torch.stack(out) / 127.5 - 1.0
