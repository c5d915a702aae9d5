"""Images in and out of the studio: checked uploads and PNG bytes.

Uploads come from a browser and may be anything, so they are size-checked (bytes, then the declared
width, height, aspect ratio and pixels) before decoding; every failure is a `StudioInputError` that
the app turns into a 4xx.
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image

from steerpatch.errors import SteerpatchError
from steerpatch.serve.preprocess import ImageLimits, ImageRejected, decode_image

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096
UPLOAD_LIMITS = ImageLimits(max_pixels=MAX_UPLOAD_PIXELS, max_side=8192)


class StudioInputError(SteerpatchError):
    """A request to the studio carries a value it cannot use; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, filename: str = "upload") -> Image.Image:
    """Decode uploaded bytes into an RGB image, refusing non-images and oversized files.

    The declared width, height, aspect ratio and pixel count are checked from the header before
    decoding, by the same code the model server uses (`steerpatch.serve.preprocess.decode_image`).

    Args:
        data: the raw file bytes.
        filename: the name the browser sent, used in messages only.

    Returns:
        The decoded image, converted to RGB.

    Raises:
        StudioInputError: 413 when the file or its declared size is too large, 400 when it is empty
            or not a decodable image.
    """
    if len(data) > MAX_UPLOAD_BYTES:
        raise StudioInputError(
            f"upload '{filename}' is {len(data) / 1e6:.1f} MB; the limit is {MAX_UPLOAD_BYTES // (1024 * 1024)} MB, "
            "send a smaller image",
            status=413,
        )
    if not data:
        raise StudioInputError(f"upload '{filename}' is empty; choose a PNG or JPEG image")
    try:
        image = decode_image(data, limits=UPLOAD_LIMITS)
        return image.convert("RGB")
    except ImageRejected as error:
        if error.status == 413:
            raise StudioInputError(f"upload '{filename}': {error}", status=413) from None
        cause = type(error.__cause__).__name__ if error.__cause__ is not None else error
        raise StudioInputError(
            f"upload '{filename}' is not a readable image ({cause}); choose a PNG or JPEG file"
        ) from None


def image_sha256(image: Image.Image) -> str:
    """SHA-256 of an image's PNG encoding, used to name uploads and record them in provenance."""
    return hashlib.sha256(png_bytes(image)).hexdigest()


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
