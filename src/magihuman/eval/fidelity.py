"""First-frame fidelity: PSNR and SSIM of the generated first frame against the given image.

The given image is brought to the clip's size as the pipeline conditions on it (architecture.md §9.1:
centre crop to the aspect ratio, Lanczos resize), then compared in 8-bit RGB. SSIM follows Wang et al.
(2004): Gaussian window sigma 1.5 (11 taps), K1 = 0.01, K2 = 0.03, data range 255, population
statistics, per channel, averaged over the image less a 5-pixel border (where the window is complete)
and over the channels (scikit-image's ``gaussian_weights=True`` convention).
"""

from __future__ import annotations

import os

import numpy as np
from scipy.ndimage import gaussian_filter

__all__ = ["psnr", "ssim", "conditioning_image", "first_frame_fidelity"]

_SIGMA, _TRUNCATE, _K1, _K2, _RANGE = 1.5, 3.5, 0.01, 0.03, 255.0


def _pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(f"images must share one shape [H, W] or [H, W, C], got {a.shape} and {b.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB for 8-bit images (peak 255); ``inf`` for identical images.

    Raises:
        ValueError: shapes differ or are not 2-D/3-D.
    """
    a, b = _pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(_RANGE ** 2 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity in [-1, 1] of two 8-bit images (module docstring for the constants).

    Raises:
        ValueError: shapes differ, are not 2-D/3-D, or are smaller than 11x11.
    """
    a, b = _pair(a, b)
    if min(a.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {a.shape[:2]}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    c1, c2 = (_K1 * _RANGE) ** 2, (_K2 * _RANGE) ** 2
    pad = int(_TRUNCATE * _SIGMA + 0.5)
    values = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch], b[..., ch]

        def blur(z: np.ndarray) -> np.ndarray:
            return gaussian_filter(z, _SIGMA, truncate=_TRUNCATE)

        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        index = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        values.append(index[pad:-pad, pad:-pad].mean())
    return float(np.mean(values))


def conditioning_image(image: str | os.PathLike | np.ndarray, width: int, height: int) -> np.ndarray:
    """The given first frame as the pipeline sees it: centre crop, Lanczos resize; ``uint8 [H, W, 3]``."""
    from PIL import Image

    from magihuman.pipeline.media import center_crop_box, load_image

    img = Image.fromarray(np.asarray(image, dtype=np.uint8)) if isinstance(image, np.ndarray) else load_image(image)
    if img.size != (width, height):
        img = img.crop(center_crop_box(img.width, img.height, width, height))
        img = img.resize((width, height), Image.LANCZOS)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def first_frame_fidelity(image: str | os.PathLike | np.ndarray, frame: np.ndarray) -> dict[str, float]:
    """``{"psnr_db", "ssim"}`` of ``frame`` (``uint8 [H, W, 3]``) against the given ``image``."""
    reference = conditioning_image(image, frame.shape[1], frame.shape[0])
    return {"psnr_db": psnr(reference, frame), "ssim": ssim(reference, frame)}
