"""Image bytes -> the graph's `pixels` input: a checked decode, then open_clip's eval transform.

The transform itself is `steerpatch.pixels.to_pixels`, shared with the Spark executors.

This module is the one place that decides whether untrusted image bytes may be decoded at all
(the server and the studio both call `decode_image`): width, height, aspect ratio and pixel count
are read from the file header and checked before a single pixel is decoded, because a few hundred
bytes of PNG can declare an image whose decode or resize needs gigabytes.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from steerpatch.compile.metadata import Preprocessing
from steerpatch.pixels import to_pixels

MAX_PIXELS = 64_000_000
MAX_SIDE = 16_384
# a shortest-side resize scales the long side by size/short: at 1x60,000 that is a 224x13,440,000
# image, so the ratio (not only the pixel count) must be bounded
MAX_ASPECT = 20.0
# formats people send; the rest of Pillow's decoders are attack surface with no use here
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")


@dataclass(frozen=True)
class ImageLimits:
    """What an untrusted image may declare before it is decoded.

    Attributes:
        max_pixels: width x height at most this.
        max_side: width and height each at most this.
        max_aspect: long side / short side at most this.
    """

    max_pixels: int = MAX_PIXELS
    max_side: int = MAX_SIDE
    max_aspect: float = MAX_ASPECT


class ImageRejected(ValueError):
    """An upload that is not a decodable image (status 400) or is too large to decode (status 413)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def check_image_size(width: int, height: int, limits: ImageLimits) -> None:
    """Refuse a declared image size that `limits` do not allow.

    Raises:
        ImageRejected: status 413 naming the size, the limit and the fix.

    Example:
        >>> check_image_size(1, 60_000, ImageLimits())
        Traceback (most recent call last):
        ...
        steerpatch.serve.preprocess.ImageRejected: the image is 1x60000 pixels, over the 16384 pixel side limit; send a smaller image
    """
    if width < 1 or height < 1:
        raise ImageRejected(f"the image is {width}x{height} pixels; send an image with at least one pixel")
    if max(width, height) > limits.max_side:
        raise ImageRejected(
            f"the image is {width}x{height} pixels, over the {limits.max_side} pixel side limit; send a smaller image",
            413,
        )
    if width * height > limits.max_pixels:
        raise ImageRejected(
            f"the image is {width}x{height} pixels, over the {limits.max_pixels} pixel limit; send a smaller image",
            413,
        )
    if max(width, height) > limits.max_aspect * min(width, height):
        raise ImageRejected(
            f"the image is {width}x{height} pixels, an aspect ratio over the {limits.max_aspect:g}:1 limit; "
            "crop it closer to square",
            413,
        )


def decode_image(data: bytes, *, max_pixels: int | None = None, limits: ImageLimits | None = None) -> Image.Image:
    """Open image bytes, refusing non-images and oversized declarations before decoding pixels.

    Args:
        data: the file's bytes.
        max_pixels: shorthand for `ImageLimits(max_pixels=...)`.
        limits: every limit (default `ImageLimits()`); `max_pixels`, when given, overrides its pixel limit.

    Returns:
        The decoded image (any mode; `to_pixels` converts to RGB).

    Raises:
        ImageRejected: status 400 for undecodable bytes, 413 for an image over a limit.
    """
    limits = limits or ImageLimits()
    if max_pixels is not None:
        limits = ImageLimits(max_pixels=max_pixels, max_side=limits.max_side, max_aspect=limits.max_aspect)
    if not data:
        raise ImageRejected("the image is empty; send the bytes of a PNG, JPEG or other image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size  # from the header: nothing is decoded yet
            check_image_size(width, height, limits)
            image.load()
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageRejected(f"the image is too large to decode safely: {error}", 413) from error
    except Exception as error:  # noqa: BLE001 - PIL raises many types for corrupt or foreign data
        raise ImageRejected(f"the upload is not a decodable image ({type(error).__name__}: {error})") from error
    return image


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from an image file's header, None when the bytes are no image of `FORMATS`."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            return image.size
    except Exception:  # noqa: BLE001 - PIL raises many types for foreign data; `decode_image` names them
        return None


def image_to_pixels(data: bytes, spec: Preprocessing, *, max_pixels: int | None = None,
                    limits: ImageLimits | None = None) -> np.ndarray:
    """Image file bytes -> (1, 3, size, size) float32.

    Raises:
        ImageRejected: see `decode_image`.
    """
    return to_pixels(decode_image(data, max_pixels=max_pixels, limits=limits), spec)[None]
