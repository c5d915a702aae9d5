"""An image -> a graph's `pixels` input, reproducing open_clip's eval transform with PIL and numpy.

open_clip resizes the shortest side (bicubic by default), centre-crops, converts to RGB, scales to
[0, 1] and normalises; each step below is the same PIL call torchvision makes on PIL images, so the
model server, the Spark executors and the torch model see the same numbers.

No torch, and nothing from steerpatch: Spark ships this module to its executors by value together
with `steerpatch.spark.runner` (see `steerpatch.spark.session.ship_runner`), so a cluster needs only
numpy and pillow for it. Deciding whether untrusted bytes may be decoded at all is the server's
business (`steerpatch.serve.preprocess.decode_image`); this module starts from a decoded image.

One opt-in shortcut, never the default: `draft` lets a JPEG that is opened but not yet decoded decode
at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling), keeping its shorter side at least `DRAFT_FACTOR`
times the model's input size. The transform then runs as usual on the smaller image; the pixels are
close to, not equal to, open_clip's (measured in the README's benchmark table).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from PIL import Image

# open_clip's default normalisation (the OpenAI CLIP statistics)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# the draft's shorter side is kept >= DRAFT_FACTOR x the input size. Measured on 1024x768 photos for a
# 64-pixel model (bench/bench_validate_memory.py): factor 2 (1/4 scale) decodes and transforms 3.6x faster
# than exact, 4 (1/2 scale) 2.8x, both within 0.03 of the exact normalised pixels; 1 (1/8 scale) 0.10
DRAFT_FACTOR = 2
FAST_DECODING = f"jpeg-draft-{DRAFT_FACTOR}x"  # how a report and a cache key name pixels decoded this way
FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR,
           "nearest": Image.Resampling.NEAREST}


class PixelSpec(Protocol):
    """The fields of a compiled graph's `preprocessing` record that the transform reads."""

    @property
    def image_size(self) -> int: ...
    @property
    def mean(self) -> Sequence[float]: ...
    @property
    def std(self) -> Sequence[float]: ...
    @property
    def interpolation(self) -> str: ...
    @property
    def resize_mode(self) -> str: ...


def to_pixels(image: Image.Image, spec: PixelSpec) -> np.ndarray:
    """One decoded image -> float32 (3, size, size), normalised like open_clip's eval transform.

    Args:
        image: a decoded PIL image, any mode.
        spec: size, mean, std, interpolation ("bicubic", "bilinear", "nearest") and resize mode
            ("shortest": shorter side to size, then centre crop; "squash": straight to size x size).

    Returns:
        A C-contiguous float32 array, channels first.

    Example:
        >>> from types import SimpleNamespace
        >>> spec = SimpleNamespace(image_size=4, mean=OPENAI_MEAN, std=OPENAI_STD,
        ...                        interpolation="bicubic", resize_mode="shortest")
        >>> to_pixels(Image.new("RGB", (8, 6)), spec).shape
        (3, 4, 4)
    """
    size = spec.image_size
    resample = FILTERS[spec.interpolation]
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


def draft(image: Image.Image, size: int, *, factor: int = DRAFT_FACTOR) -> Image.Image:
    """Let a JPEG that is opened but not yet decoded decode at reduced scale: faster, pixels approximate.

    libjpeg scales by 1/2, 1/4 or 1/8 while decoding; the largest reduction is chosen whose shorter
    side is still at least `factor * size`, so the resize that follows only ever shrinks. Other
    formats, and images already decoded, are left as they are.

    Args:
        image: an image from `Image.open`, before `load()`.
        size: the model's input size (the transform's target).
        factor: how many times the target the draft's shorter side must keep.

    Returns:
        The same image object, to be decoded (`load()`) and transformed as usual.

    Example:
        >>> import io
        >>> buffer = io.BytesIO()
        >>> Image.new("RGB", (1024, 768)).save(buffer, format="JPEG")
        >>> image = draft(Image.open(buffer), 64)
        >>> image.size  # known before decoding: 1/4 scale keeps the shorter side >= 2 x 64
        (256, 192)
    """
    from PIL import JpegImagePlugin  # MPO (multi-picture phone photos) is a JpegImageFile too

    if isinstance(image, JpegImagePlugin.JpegImageFile) and size > 0 and factor > 0:
        image.draft(None, (factor * size, factor * size))  # mode None: keep the file's colour mode
    return image
