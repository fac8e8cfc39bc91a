"""Training data: the default collection, image folders, and random crops.

The default training collection is the colour photos that ship inside scikit-image plus the
wallpapers of two Debian packages, ``plasma-workspace-wallpapers`` and ``mate-backgrounds``
(photographs and illustrations; ``make train-data`` installs them, nothing is downloaded by
vqedge). Three photos are held out and never trained on (every reported quality figure is
measured on them, once, on the final checkpoint), three illustrations form a second held-out
split, and a validation split of three wallpapers, also never trained on, is what training
evaluates as it goes and selects checkpoints by. ``difference_hash`` lets the tests check by
content, not by name, that no held-out or out-of-set image is a copy of a training image.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from vqedge.runtime.images import uint8_to_float
from vqedge.runtime.inputs import read_image

# The Debian packages that hold the rest of the default collection.
DEBIAN_PACKAGES = ("plasma-workspace-wallpapers", "mate-backgrounds")
INSTALL_HINT = (
    f"install them with `sudo apt-get install {' '.join(DEBIAN_PACKAGES)}` "
    "(or `make train-data`), or pass an image folder"
)
# Longer side that training images are shrunk to once, when read: wallpapers are 2-18 MP,
# and crops of a few hundred pixels learn as much from a downsized copy at far less memory.
WORK_SIDE = 1024


class CollectionImage(NamedTuple):
    """One image of the default collection and where it comes from."""

    path: str
    package: str
    kind: str  # "photo" or "illustration"
    licence: str  # as the package's copyright file (or docstring) states it
    author: str
    split: str = "train"  # "train", "validation", "held-out" or "held-out-illustrations"


_W = "/usr/share/wallpapers"
_M = "/usr/share/backgrounds/mate"
_PLASMA, _MATE = DEBIAN_PACKAGES
# plasma-workspace-wallpapers' copyright file gives GPL-2+ for every file; each wallpaper's
# own metadata names the upstream licence, kept beside it for attribution.
_PLASMA_LICENCE = "GPL-2+ (upstream: {})"


def _plasma(name: str, size: str, kind: str, upstream: str, author: str, split: str = "train"):
    # one folder per wallpaper, one file per screen size (most are links to the largest):
    # the largest is the one kept
    return CollectionImage(
        f"{_W}/{name}/contents/images/{size}",
        _PLASMA,
        kind,
        _PLASMA_LICENCE.format(upstream),
        author,
        split,
    )


def _mate(rel: str, kind: str, author: str, licence: str = "GPL-2+", split: str = "train"):
    return CollectionImage(f"{_M}/{rel}", _MATE, kind, licence, author, split)


def _packaged(package: str, rel: str, kind: str, licence: str, author: str, split: str):
    return CollectionImage(f"{package}:{rel}", package, kind, licence, author, split)


PHOTO, ILLUSTRATION = "photo", "illustration"
P, ILL = PHOTO, ILLUSTRATION
COLLECTION: list[CollectionImage] = [
    # scikit-image's colour photos (licences as its data docstrings state them)
    _packaged("skimage", "data/astronaut.png", P, "public domain (NASA)", "NASA", "train"),
    _packaged("skimage", "data/coffee.png", P, "CC0", "Rachel Michetti", "train"),
    _packaged("skimage", "data/hubble_deep_field.jpg", P, "public domain (NASA)", "NASA", "train"),
    _packaged("skimage", "data/ihc.png", P, "no known copyright restrictions", "CMMI", "train"),
    _packaged(
        "skimage",
        "data/motorcycle_left.png",
        P,
        "BSD-3-Clause (scikit-image)",
        "Middlebury 2014 stereo",
        "train",
    ),
    _packaged(
        "skimage",
        "data/motorcycle_right.png",
        P,
        "BSD-3-Clause (scikit-image)",
        "Middlebury 2014 stereo",
        "train",
    ),
    _packaged("skimage", "data/retina.jpg", P, "CC0", "Mikael Häggström", "train"),
    _packaged("skimage", "data/rocket.jpg", P, "public domain (SpaceX)", "SpaceX", "train"),
    # held out: never trained on
    _packaged("sklearn", "datasets/images/china.jpg", P, "CC-BY-2.0", "danielbuechele", "held-out"),
    _packaged("sklearn", "datasets/images/flower.jpg", P, "CC-BY-2.0", "vultilion", "held-out"),
    _packaged("skimage", "data/chelsea.png", P, "CC0", "Stefan van der Walt", "held-out"),
    # plasma-workspace-wallpapers: photographs
    _plasma("BytheWater", "2560x1600.jpg", P, "LGPLv3", "Maciej Wiklo"),
    _plasma("ColdRipple", "2560x1600.jpg", P, "LGPLv3", "Risto Saukonpää"),
    _plasma("ColorfulCups", "2560x1600.jpg", P, "LGPLv3", "Dmitri Popov"),
    _plasma("DarkestHour", "2560x1600.jpg", P, "LGPLv3", "Risto Saukonpää"),
    _plasma("EveningGlow", "2560x1600.jpg", P, "LGPLv3", "Ian Hex"),
    _plasma("FallenLeaf", "2560x1600.jpg", P, "LGPLv3", "Martin Klapetek"),
    _plasma("Grey", "2560x1600.jpg", P, "LGPLv3", "Sigi Sagi"),
    _plasma("Kite", "2560x1600.jpg", P, "LGPLv3", "Risto Saukonpää", "validation"),
    _plasma("OneStandsOut", "2560x1600.jpg", P, "LGPLv3", "Risto Saukonpää"),
    _plasma("Path", "2560x1600.jpg", P, "LGPLv3", "Risto Saukonpää"),
    _plasma("summer_1am", "2560x1600.jpg", P, "LGPLv3", "Risto Saukonpää"),
    # plasma-workspace-wallpapers: illustrations and renders
    _plasma("Autumn", "2560x1600.jpg", ILL, "LGPLv3", "RJ Quiralta"),
    _plasma("Canopee", "3840x2160.png", ILL, "LGPLv3", "Ken Vermette"),
    _plasma("Cascade", "3840x2160.png", ILL, "LGPLv3", "Ken Vermette"),
    _plasma("Cluster", "3840x2160.png", ILL, "LGPLv3", "Ken Vermette"),
    _plasma("Elarun", "2560x1600.png", ILL, "LGPLv3", "Nuno Pinheiro"),
    _plasma("Flow", "5120x2880.jpg", ILL, "CC-BY-SA-4.0", "Sandra Smukaste"),
    _plasma("Honeywave", "5120x2880.jpg", ILL, "CC-BY-SA-4.0", "Ken Vermette"),
    _plasma("IceCold", "5120x2880.png", ILL, "CC-BY-SA-4.0", "Santiago Cézar"),
    _plasma("Kay", "5120x2880.png", ILL, "CC-BY-SA-4.0", "ruvkr"),
    _plasma("Kokkini", "3840x2160.png", ILL, "LGPLv3", "Ken Vermette"),
    _plasma("MilkyWay", "5120x2880.png", ILL, "CC-BY-SA-4.0", "ruvkr"),
    _plasma("Opal", "3840x2160.png", ILL, "LGPLv3", "Ken Vermette", "validation"),
    _plasma("PastelHills", "3200x2000.jpg", ILL, "LGPLv3", "Lionel"),
    _plasma("Patak", "5120x2880.png", ILL, "CC-BY-SA-4.0", "Áron Kovács"),
    _plasma("SafeLanding", "5120x2880.jpg", ILL, "CC-BY-SA-4.0", "Louis Durrant"),
    _plasma("Shell", "5120x2880.jpg", ILL, "CC-BY-SA-4.0", "Lucas Andrade"),
    _plasma("Volna", "5120x2880.jpg", ILL, "CC-BY-SA-4.0", "Nikita Babin"),
    # held out: flat-colour graphics (a low-poly landscape, a cartoon, a logo with lettering)
    _plasma(
        "Altai", "5120x2880.png", ILL, "CC-BY-SA-4.0", "Alesya Khoteeva", "held-out-illustrations"
    ),
    _plasma(
        "FlyingKonqui", "2560x1600.png", ILL, "LGPLv3", "Timothée Giet", "held-out-illustrations"
    ),
    # mate-backgrounds: photographs
    _mate("nature/Aqua.jpg", P, "Charles Barbin"),
    _mate("nature/Blinds.jpg", P, "Lennart Poettering, Andrea Cimitan"),
    _mate("nature/Dune.jpg", P, "Marco Cogoni, Hylke Bons"),
    _mate("nature/FreshFlower.jpg", P, "Jens Ansorg"),
    _mate("nature/Garden.jpg", P, "Charles Barbin"),
    _mate("nature/GreenMeadow.jpg", P, "Timothy Schellhase, Lapo Calamandrei"),
    _mate("nature/LadyBird.jpg", P, "Charles Barbin"),
    _mate("nature/RainDrops.jpg", P, "blackcombwhistler07"),
    _mate("nature/Storm.jpg", P, "Sergey Nazarov", split="validation"),
    _mate("nature/TwoWings.jpg", P, "Charles Barbin, Hylke Bons"),
    _mate("nature/Wood.jpg", P, "Jean-François Fortin Tam"),
    _mate("nature/YellowFlower.jpg", P, "Charles Barbin"),
    # mate-backgrounds: illustrations. Left out: the transparent overlays (Arc-Colors,
    # Flow, Gulp, Silk, Spring, Waves, MATE-Stripes-Light), blank once put on white, and
    # the other colourings of Ubuntu-Mate (near duplicates of Cold).
    _mate("abstract/Elephants_5640x3172.jpg", ILL, "Wyng Stancikaite"),
    _mate("desktop/Float-into-MATE.png", ILL, "François Vogelweith, Joseph Krieger"),
    _mate("desktop/GreenTraditional.jpg", ILL, "l0r4n0n"),
    _mate("desktop/Stripes.png", ILL, "Jakub Steiner"),
    _mate("desktop/Ubuntu-Mate-Cold-no-logo.png", ILL, "Goce Mitevski", "CC-BY-SA-4.0"),
    _mate("desktop/MATE-Stripes-Dark.png", ILL, "Adam Erdman", split="held-out-illustrations"),
]
del P, ILL

# (package, path inside the package): the colour photos. The grayscale ones are left out:
# they taught an early model that colour is not worth its bits (it reconstructed in grey).
DEFAULT_TRAIN = [
    tuple(c.path.split(":", 1)) for c in COLLECTION if ":" in c.path and c.split == "train"
]
# Never trained on: the held-out split for every reported quality figure.
HELD_OUT = [tuple(c.path.split(":", 1)) for c in COLLECTION if c.split == "held-out"]

TRAIN, HELD_OUT_SPLIT, HELD_OUT_ILLUSTRATIONS = "train", "held-out", "held-out-illustrations"
# Evaluated during training and used to select checkpoints, so that the held-out photos
# stay unseen by every decision and are measured once, at the end.
VALIDATION = "validation"
SPLITS = (TRAIN, VALIDATION, HELD_OUT_SPLIT, HELD_OUT_ILLUSTRATIONS)
# An image folder given to ``vqedge train`` gives every this-many-th file (sorted by path) to
# validation when it holds at least this many files.
FOLDER_VALIDATION_EVERY = 10
# Where the Debian packages' files are looked for: "/" on a machine that installed them, or
# a folder holding a copy made by ``export_collection`` (a machine that cannot install them).
ROOT_ENV = "VQEDGE_COLLECTION_ROOT"


class CollectionMissing(FileNotFoundError):
    """The default collection's Debian packages are not installed."""


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


def image_path(item: CollectionImage) -> Path:
    """Where one collection image is on this machine (it may not exist)."""
    if ":" in item.path:
        return package_file(*item.path.split(":", 1))
    return Path(os.environ.get(ROOT_ENV, "/")) / item.path.lstrip("/")


def collection(split: str = TRAIN) -> list[CollectionImage]:
    """The collection's entries of one split (one of ``SPLITS``)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
    return [c for c in COLLECTION if c.split == split]


def collection_paths(split: str = TRAIN) -> list[Path]:
    """Paths of one split of the default collection.

    Raises
    ------
    CollectionMissing
        Some of the Debian packages' images are absent; the message says what to install.
    """
    items = collection(split)
    paths = [image_path(c) for c in items]
    missing = sorted({c.package for c, p in zip(items, paths) if not p.is_file()})
    if missing:
        where = os.environ.get(ROOT_ENV)
        extra = f" under {ROOT_ENV}={where}" if where else ""
        raise CollectionMissing(
            f"the default training collection is missing: the images of {', '.join(missing)} "
            f"are not installed{extra}; {INSTALL_HINT}"
        )
    return paths


def default_train_paths() -> list[Path]:
    """The colour photos that ship in scikit-image (always installed with vqedge[train])."""
    return [package_file(pkg, rel) for pkg, rel in DEFAULT_TRAIN]


def held_out_paths() -> list[Path]:
    """The three held-out photos (china, flower, chelsea)."""
    return [package_file(pkg, rel) for pkg, rel in HELD_OUT]


def folder_split(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(train, validation) of an image folder's files: every ``FOLDER_VALIDATION_EVERY``-th
    file by path goes to validation; a smaller folder has no validation split."""
    paths = sorted(paths)
    if len(paths) < FOLDER_VALIDATION_EVERY:
        return paths, []
    val = set(paths[::FOLDER_VALIDATION_EVERY])
    return [p for p in paths if p not in val], sorted(val)


# 16 rows of 16 left-right differences: a 256-bit difference hash
HASH_SIDE = 16
# At most this many of 256 bits apart counts as the same picture (recompressed, resized, or
# lightly retouched); unrelated photos lie around 128 bits apart, and dark, smooth pictures
# come closest (two unrelated ones among the wallpapers: 46 bits).
NEAR_DUPLICATE_BITS = 40


def difference_hash(path: str | Path) -> np.ndarray:
    """A 256-bit difference hash (bool [256]) of an image's content: grey levels at 17x16,
    each pixel compared with its right neighbour. Resizing and recompression leave it
    almost unchanged; it does not see through crops or mirroring."""
    from PIL import Image

    with Image.open(path) as im:
        im.draft("L", (4 * HASH_SIDE, 4 * HASH_SIDE))  # JPEGs decode at a fraction of size
        if "A" in im.getbands() or "transparency" in im.info:  # on white, as training sees it
            rgba = im.convert("RGBA")
            im = Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba)
        grey = im.convert("L").resize((HASH_SIDE + 1, HASH_SIDE), Image.LANCZOS)
    a = np.asarray(grey, dtype=np.int16)
    return (a[:, 1:] > a[:, :-1]).ravel()


def uint8_to_tensor(img_HWC: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(uint8_to_float(img_HWC))


# Files smaller than this decode about as fast as a cached array loads.
_CACHE_ABOVE_BYTES = 1 << 20


def _cached_read(path: Path, downscale_to: int | None, cache_dir: Path | None) -> np.ndarray:
    if cache_dir is None or downscale_to is None or path.stat().st_size < _CACHE_ABOVE_BYTES:
        return read_image(path, downscale_to=downscale_to)
    st = path.stat()
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{downscale_to}"
    cached = cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npy"
    if cached.is_file():
        try:
            return np.load(cached)
        except (OSError, ValueError):
            pass  # a damaged cache file is rebuilt below
    img = read_image(path, downscale_to=downscale_to)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, img)
    os.replace(tmp, cached)
    return img


def default_cache_dir() -> Path:
    """Where downsized training images are kept between runs (``$XDG_CACHE_HOME/vqedge``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vqedge" / f"train-images-{WORK_SIDE}"


def load_images(
    paths: list[Path], downscale_to: int | None = None, cache_dir: Path | None = None
) -> list[np.ndarray]:
    """Load every readable image; unreadable ones are skipped with a warning naming them.

    Parameters
    ----------
    paths : list of Path
    downscale_to : int, optional
        Shrink each image whose longer side exceeds this (Lanczos, aspect kept).
    cache_dir : Path, optional
        Keep each large file's downsized array here, so the next run loads it at once
        (keyed by the file's path, size, modification time and ``downscale_to``).
    """
    images = []
    for p in paths:
        try:
            images.append(_cached_read(Path(p), downscale_to, cache_dir))
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


def step_seed(seed: int, step: int) -> int:
    """The generator seed of one training step's batch (independent of every other step)."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0] >> 1)


class CropBatches(torch.utils.data.IterableDataset):
    """The batches of steps ``start`` .. ``end`` - 1, each from its own seeded generator.

    Batch ``step`` depends only on (images, seed, step), so a resumed run draws exactly the
    batches an uninterrupted one would, and DataLoader workers can build batches in parallel:
    worker k of n builds steps start + k, start + k + n, ... and the DataLoader hands them
    back in step order.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        crop: int,
        batch_size: int,
        seed: int,
        start: int,
        end: int,
        max_zoom_out: float = 1.0,
    ):
        super().__init__()
        self.sampler = CropSampler(images, crop, torch.Generator(), max_zoom_out)
        self.batch_size, self.seed, self.start, self.end = batch_size, seed, start, end

    def batch(self, step: int) -> torch.Tensor:
        """The batch of one step, float [B, 3, crop, crop] in [-1, 1]."""
        self.sampler.g = torch.Generator().manual_seed(step_seed(self.seed, step))
        return self.sampler.sample(self.batch_size)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        k, n = (info.id, info.num_workers) if info else (0, 1)
        for step in range(self.start + k, self.end, n):
            yield self.batch(step)

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def export_collection(dest: str | Path, side: int = WORK_SIDE) -> Path:
    """Copy the Debian packages' images, downsized to ``side``, to a folder.

    The copy keeps each file's absolute path under ``dest`` (so ``VQEDGE_COLLECTION_ROOT=dest``
    finds it) and its format: JPEGs at quality 95 without chroma subsampling, PNGs lossless.
    It is what a machine that cannot install the packages (a lent GPU machine) trains on.
    """
    dest = Path(dest)
    for split in (TRAIN, VALIDATION, HELD_OUT_ILLUSTRATIONS):
        for item, src in zip(collection(split), collection_paths(split)):
            if ":" in item.path:
                continue  # the pip packages' photos are installed wherever vqedge is
            out = dest / item.path.lstrip("/")
            out.parent.mkdir(parents=True, exist_ok=True)
            from PIL import Image

            img = Image.fromarray(read_image(src, downscale_to=side))
            if out.suffix.lower() in (".jpg", ".jpeg"):
                img.save(out, quality=95, subsampling=0)
            else:
                img.save(out, optimize=True)
    return dest


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "export":
        sys.exit("usage: python -m vqedge.models.data export DEST_DIR")
    print(export_collection(sys.argv[2]))
