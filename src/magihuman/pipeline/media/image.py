"""Conditioning image input (architecture.md §9.1): load upright RGB, centre crop, Lanczos resize to [-1, 1].

Also :func:`check_image_file`, the decode-level check the input boundary
(:mod:`magihuman.pipeline.validation`) runs before any model loads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageOps
import torch

__all__ = ["load_image", "center_crop_box", "preprocess_image", "check_image_file"]

# Spatial stride of the Wan2.2 VAE (2x2 patchify x 8x8 convolutions); diffusers' image processor floors
# the target size to a multiple of it, so we insist on multiples instead of silently changing the size.
_VAE_SCALE_FACTOR = 16


def load_image(image: str | os.PathLike | PIL.Image.Image, *, max_pixels: int | None = None) -> PIL.Image.Image:
    """Load the conditioning image upright and in RGB (architecture.md §9.1).

    The EXIF orientation tag is applied (``PIL.ImageOps.exif_transpose``) and the result is converted to
    ``RGB`` with ``Image.convert`` (an alpha channel is dropped, not composited; grayscale is replicated),
    like ``diffusers.utils.load_image`` that the reference calls.

    Args:
        image: path to an image file in any format Pillow reads, or a ``PIL.Image.Image`` (also transposed
            by its EXIF orientation and converted; the caller's object is not modified).
        max_pixels: refuse a file whose header declares more pixels than this, before decoding it
            (None: Pillow's own decompression-bomb limit only).

    Returns:
        A new, fully loaded ``PIL.Image.Image`` in mode ``"RGB"``, size ``(width, height)`` in pixels after
        orientation.

    Raises:
        ValueError: ``image`` is a URL (download it first), a folder, not an image Pillow can read, damaged,
            larger than ``max_pixels``, or of an unsupported type.
        FileNotFoundError: the path does not exist.
    """
    if isinstance(image, PIL.Image.Image):
        return _upright_rgb(image)
    if not isinstance(image, (str, os.PathLike)):
        raise ValueError(
            f"image must be a file path or a PIL.Image.Image, got {type(image).__name__}; "
            "pass the path of a PNG/JPEG file or an image opened with PIL.Image.open"
        )
    text = os.fspath(image)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if text.lower().startswith(("http://", "https://", "ftp://")):
        raise ValueError(
            f"image URLs are not supported (offline tool): {text!r}; download the file first and pass its "
            "local path"
        )
    path = Path(text).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"image file not found: {str(path)!r}; check the path (--image_path)")
    if path.is_dir():
        raise ValueError(f"image path is a folder, not a file: {str(path)!r}; pass an image file")
    try:
        with PIL.Image.open(path) as opened:
            if max_pixels is not None and opened.width * opened.height > max_pixels:
                raise ValueError(
                    f"image {str(path)!r} is {opened.width}x{opened.height} pixels, more than the "
                    f"{max_pixels:,} this tool decodes; scale it down (the model renders at most 1920x1088)"
                )
            return _upright_rgb(opened)
    except PIL.Image.DecompressionBombError as exc:
        raise ValueError(f"image {str(path)!r} is too large to decode safely ({exc}); scale it down") from exc
    except PIL.UnidentifiedImageError as exc:
        raise ValueError(
            f"not a readable image: {str(path)!r} ({exc}); pass a PNG, JPEG, WebP or another format "
            "Pillow can open"
        ) from exc
    except OSError as exc:  # truncated / corrupt data found while decoding
        raise ValueError(f"could not decode image {str(path)!r}: {exc}; the file may be damaged") from exc


def _upright_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """EXIF-transpose (returns a copy) and convert to RGB; always returns a new loaded image."""
    upright = PIL.ImageOps.exif_transpose(image)  # a new image; orientation tag removed from its EXIF
    if upright is None:  # only with in_place=True; kept for type checkers
        upright = image.copy()
    rgb = upright.convert("RGB")
    rgb.load()
    return rgb


def center_crop_box(
    width: int, height: int, target_width: int, target_height: int
) -> tuple[float, float, float, float]:
    """Float crop box that centres the target aspect ratio in an image (architecture.md §9.1).

    With ``(w, h)`` the image size and ``(tw, th)`` the target size: if ``h / w > th / tw`` the full width is
    kept and ``new_h = int(w * th / tw)``; otherwise the full height is kept and ``new_w = int(h * tw / th)``.
    The box is ``((w - new_w) / 2, (h - new_h) / 2, (w + new_w) / 2, (h + new_h) / 2)``. No resizing
    happens here. ``PIL.Image.crop`` rounds each coordinate with Python's ``round`` (half to even), so
    ``(0, 6.5, 101, 73.5)`` crops rows 6..74 (68 rows); architecture.md §9.1.

    Args:
        width: image width in pixels (> 0).
        height: image height in pixels (> 0).
        target_width: target width in pixels (> 0).
        target_height: target height in pixels (> 0).

    Returns:
        ``(left, upper, right, lower)`` as floats, in pixels; pass it to ``PIL.Image.Image.crop``.
        Example: 1280x720 to 448x256 gives ``(10.0, 0.0, 1270.0, 720.0)`` (a 1260x720 crop).

    Raises:
        ValueError: a size is not a positive integer.
    """
    for name, value in (
        ("width", width),
        ("height", height),
        ("target_width", target_width),
        ("target_height", target_height),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer number of pixels, got {value!r}")
    w, h, tw, th = int(width), int(height), int(target_width), int(target_height)
    if h / w > th / tw:
        new_w, new_h = w, int(w * th / tw)
    else:
        new_w, new_h = int(h * tw / th), h
    return ((w - new_w) / 2, (h - new_h) / 2, (w + new_w) / 2, (h + new_h) / 2)


def preprocess_image(image: str | os.PathLike | PIL.Image.Image, width: int, height: int) -> torch.Tensor:
    """Image to the VAE input: centre crop, Lanczos resize, scale to [-1, 1] (architecture.md §9.1).

    Steps: :func:`load_image` (EXIF orientation, RGB); crop with :func:`center_crop_box` unless the image
    already is exactly ``width`` x ``height``; then ``diffusers.video_processor.VideoProcessor(
    vae_scale_factor=16).preprocess`` (PIL Lanczos resize to ``(width, height)``, ``/255``, NCHW,
    ``2x - 1``), as the reference does. Reproduces the reference tensor bit for bit (golden
    ``codec_wan22_vae`` ``encode.preprocessed_image``). The bf16 cast and the time axis are the VAE's
    business (step 4), not done here.

    Args:
        image: path or ``PIL.Image.Image`` (see :func:`load_image`).
        width: target width in pixels, a positive multiple of 16 (e.g. 448).
        height: target height in pixels, a positive multiple of 16 (e.g. 256).

    Returns:
        ``torch.Tensor`` of shape ``[1, 3, height, width]``, dtype ``float32``, values in ``[-1, 1]``,
        channels RGB.

    Raises:
        ValueError: width/height not positive multiples of 16 (diffusers would silently floor them), or
            the image cannot be read (see :func:`load_image`).
        FileNotFoundError: the image path does not exist.
    """
    for name, value in (("width", width), ("height", height)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or value <= 0
            or value % _VAE_SCALE_FACTOR
        ):
            raise ValueError(
                f"{name} must be a positive multiple of {_VAE_SCALE_FACTOR} pixels (the video VAE stride), "
                f"got {value!r}; the pipeline uses multiples of 32 (e.g. 448x256)"
            )
    width, height = int(width), int(height)
    from diffusers.video_processor import VideoProcessor  # local: keeps `import magihuman.pipeline.media` light

    img = load_image(image)
    if img.size != (width, height):
        img = img.crop(center_crop_box(img.width, img.height, width, height))
    processor = VideoProcessor(vae_scale_factor=_VAE_SCALE_FACTOR)
    pixels = processor.preprocess(img, height=height, width=width)
    return pixels.to(torch.float32).contiguous()


def check_image_file(path: str | os.PathLike, *, max_pixels: int) -> tuple[int, int]:
    """Open and fully decode an image file to prove it usable; the input boundary's image check.

    Decoding every pixel (not only the header) is what finds a truncated or damaged file before any
    model loads, instead of minutes later in the image-encode stage.

    Args:
        path: the image file (``~`` is expanded).
        max_pixels: refuse images whose header declares more pixels than this, before decoding.

    Returns:
        ``(width, height)`` in pixels after EXIF orientation.

    Raises:
        FileNotFoundError: the path does not exist.
        ValueError: a folder, a URL, not an image, damaged or truncated, or too large (see :func:`load_image`).
    """
    return load_image(path, max_pixels=max_pixels).size
