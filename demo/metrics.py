"""What the demo shows about a reconstruction, in numpy: SSIM, error map, token colours, sizes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# SSIM (Wang et al. 2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2
# ITU-R BT.601 luma weights (what SSIM on "Y" conventionally means)
LUMA = np.array([0.299, 0.587, 0.114])
# the error heatmap saturates at this RMS error in grey levels (fixed, so images compare)
HEATMAP_MAX = 48.0
# anchors of the "inferno" colour map, dark (no error) to bright (large error)
INFERNO = np.array(
    [[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99], [212, 72, 66], [245, 125, 21],
     [250, 193, 39], [252, 255, 164]],
    dtype=np.float64,
)  # fmt: skip
RAW_RGB_BPP = 24.0  # bits per pixel of uncompressed 8-bit RGB


def _gaussian(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size) - (size - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _filter_valid(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable filter of [H, W] by the 1-D window ``w``, 'valid' region only."""
    n = len(w)
    rows = sum(w[k] * x[k : x.shape[0] - n + 1 + k] for k in range(n))
    return sum(w[k] * rows[:, k : x.shape[1] - n + 1 + k] for k in range(n))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two uint8 RGB images [H, W, 3], on BT.601 luma.

    The mean of the SSIM map over the region where the 11x11 Gaussian window (sigma 1.5)
    fits, as in Wang et al. (2004) and ``skimage.metrics.structural_similarity(...,
    gaussian_weights=True, use_sample_covariance=False, data_range=255)``. Images with a side
    below 11 pixels use the largest odd window that fits.
    """
    if a.shape != b.shape or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"ssim needs two RGB images of one shape, got {a.shape} and {b.shape}")
    x, y = a.astype(np.float64) @ LUMA, b.astype(np.float64) @ LUMA
    size = min(SSIM_WINDOW, *x.shape)
    size -= 1 - size % 2  # odd
    w = _gaussian(size, SSIM_SIGMA)
    mx, my = _filter_valid(x, w), _filter_valid(y, w)
    vx = _filter_valid(x * x, w) - mx * mx
    vy = _filter_valid(y * y, w) - my * my
    cxy = _filter_valid(x * y, w) - mx * my
    s = ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / (
        (mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2)
    )
    return float(s.mean())


def colorize(values: np.ndarray, vmax: float) -> np.ndarray:
    """Map values in [0, vmax] (clipped) to uint8 RGB with the inferno colour map."""
    t = np.clip(values / vmax, 0.0, 1.0) * (len(INFERNO) - 1)
    stops = np.arange(len(INFERNO))
    rgb = [np.interp(t, stops, INFERNO[:, c]) for c in range(3)]
    return np.rint(np.stack(rgb, axis=-1)).astype(np.uint8)


def error_heatmap(a: np.ndarray, b: np.ndarray, vmax: float = HEATMAP_MAX) -> np.ndarray:
    """Per-pixel RMS error over RGB between two uint8 images, as an inferno-coloured image."""
    d = a.astype(np.float64) - b.astype(np.float64)
    return colorize(np.sqrt((d * d).mean(axis=-1)), vmax)


def code_palette(codebook: np.ndarray) -> np.ndarray:
    """One colour per code, uint8 [K, 3]: the codes' first three principal components.

    Codes with similar vectors get similar colours, so the token map reads like a picture.
    """
    c = codebook.astype(np.float64) - codebook.mean(axis=0)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    p = c @ vt[:3].T  # [K, 3] (fewer columns when C < 3)
    p = np.pad(p, ((0, 0), (0, 3 - p.shape[1])))
    lo, hi = np.percentile(p, 1, axis=0), np.percentile(p, 99, axis=0)
    return np.rint(np.clip((p - lo) / np.maximum(hi - lo, 1e-12), 0, 1) * 255).astype(np.uint8)


def token_image(idx: np.ndarray, palette: np.ndarray, f: int, size: tuple[int, int]) -> np.ndarray:
    """Token map [h, w] -> uint8 [H, W, 3]: each token an f x f block of its code's colour."""
    img = palette[idx].repeat(f, axis=0).repeat(f, axis=1)
    return np.ascontiguousarray(img[: size[0], : size[1]])


def png_bytes(img: np.ndarray) -> int:
    """Size in bytes of the image saved as PNG by Pillow (default compression level)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.tell()


def compression(n_tokens: int, bits_per_token: int, size: tuple[int, int], png: int) -> dict:
    """Bits per pixel of the token map and its compression ratios.

    Parameters
    ----------
    n_tokens, bits_per_token : int
        Tokens in the map and bits to store one (ceil(log2 K)).
    size : (H, W)
        The image size.
    png : int
        Bytes of the image as a PNG file.

    Returns
    -------
    dict
        ``bits_per_pixel``, ``png_bits_per_pixel``, ``ratio_vs_raw_rgb`` and ``ratio_vs_png``.
    """
    pixels = size[0] * size[1]
    bpp = n_tokens * bits_per_token / pixels
    png_bpp = 8 * png / pixels
    return {
        "bits_per_pixel": bpp,
        "png_bits_per_pixel": png_bpp,
        "ratio_vs_raw_rgb": RAW_RGB_BPP / bpp,
        "ratio_vs_png": png_bpp / bpp,
    }
