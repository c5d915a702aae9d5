"""Images in and out of the studio: checked uploads and PNG bytes.

Uploads come from a browser and may be anything, so they are size-checked before decoding and
decoded with Pillow's own checks; every failure is a `StudioInputError` that the app turns into a 4xx.
"""

from __future__ import annotations

import hashlib
import io

from PIL import Image, UnidentifiedImageError

from steerpatch.errors import SteerpatchError

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_UPLOAD_PIXELS = 4096 * 4096


class StudioInputError(SteerpatchError):
    """A request to the studio carries a value it cannot use; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_upload(data: bytes, filename: str = "upload") -> Image.Image:
    """Decode uploaded bytes into an RGB image, refusing non-images and oversized files.

    Args:
        data: the raw file bytes.
        filename: the name the browser sent, used in messages only.

    Returns:
        The decoded image, converted to RGB.

    Raises:
        StudioInputError: 413 when the file or its pixel count is too large, 400 when it is empty
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
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
            if width * height > MAX_UPLOAD_PIXELS:
                raise StudioInputError(
                    f"upload '{filename}' is {width}x{height} pixels; the limit is {MAX_UPLOAD_PIXELS} pixels, "
                    "resize it first",
                    status=413,
                )
            probe.load()
            return probe.convert("RGB")
    except StudioInputError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise StudioInputError(
            f"upload '{filename}' is not a readable image ({type(error).__name__}); choose a PNG or JPEG file"
        ) from None


def image_sha256(image: Image.Image) -> str:
    """SHA-256 of an image's PNG encoding, used to name uploads and record them in provenance."""
    return hashlib.sha256(png_bytes(image)).hexdigest()


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
