"""Image bytes -> the graph's `pixels` input, reproducing open_clip's eval transform without torch.

open_clip resizes the shortest side (bicubic by default), centre-crops, converts to RGB, scales to
[0, 1] and normalises; each step below is the same PIL call torchvision makes on PIL images, so the
server and the torch model see the same numbers.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from steerpatch.compile.metadata import Preprocessing

_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
            "nearest": Image.Resampling.NEAREST}
MAX_PIXELS = 64_000_000


class ImageRejected(ValueError):
    """An upload that is not a decodable image (status 400) or is too large to decode (status 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open image bytes, refusing non-images and decompression bombs before decoding pixels.

    Raises:
        ImageRejected: status 400 for undecodable bytes, 413 for an image over `max_pixels`.
    """
    if not data:
        raise ImageRejected("the image is empty; send the bytes of a PNG, JPEG or other image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected(
                    f"the image is {width}x{height} pixels, over the {max_pixels} pixel limit; send a smaller image",
                    413,
                )
            image.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(f"the image is too large to decode safely: {error}", 413) from error
    except Exception as error:  # noqa: BLE001 - PIL raises many types for corrupt or foreign data
        raise ImageRejected(f"the upload is not a decodable image ({type(error).__name__}: {error})") from error
    return image


def to_pixels(image: Image.Image, spec: Preprocessing) -> np.ndarray:
    """One image -> float32 (3, size, size), normalised like open_clip's eval transform."""
    size = spec.image_size
    resample = _FILTERS[spec.interpolation]
    width, height = image.size
    if spec.resize_mode == "squash":
        if image.size != (size, size):
            image = image.resize((size, size), resample)
    else:
        short, long = min(width, height), max(width, height)
        new_long = int(size * long / short)
        target = (size, new_long) if width <= height else (new_long, size)
        if image.size != target:
            image = image.resize(target, resample)
        width, height = image.size
        top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    if image.mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    array = array.transpose(2, 0, 1)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((array - mean) / std, dtype=np.float32)


def image_to_pixels(data: bytes, spec: Preprocessing, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Image file bytes -> (1, 3, size, size) float32.

    Raises:
        ImageRejected: see `decode_image`.
    """
    return to_pixels(decode_image(data, max_pixels=max_pixels), spec)[None]
