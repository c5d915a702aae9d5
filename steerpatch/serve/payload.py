"""A `/predict` body -> a (B, 3, S, S) float32 batch, with every limit checked before the work it guards.

JSON is checked as text before it is parsed (nesting depth, the length of every number, the number
of elements), a tensor's shape is checked on the parsed lists before numpy copies them, and an
image's size is checked from its header before it is decoded (`steerpatch.serve.preprocess`).
Everything here is synchronous CPU work; the app runs it in its worker pool, off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from steerpatch.compile.metadata import Preprocessing
from steerpatch.serve.preprocess import ImageLimits, ImageRejected, image_to_pixels

MAX_BATCH = 64
# {"tensor": [B][3][S][S]} is 5 levels; anything deeper is not a payload this server takes
MAX_JSON_DEPTH = 8
# float32 needs 9 significant digits; 64 characters leave room for exponents and padding zeros
MAX_NUMBER_CHARS = 64

# a JSON string literal, unrolled so the regex engine runs one tight loop per string
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
# bytes.translate + find runs in C at memory speed; a regex over 16 MB of numbers takes a second
_NUMBER_BYTES = bytes(ord("1") if i in b"-+0123456789.eE" else ord(" ") for i in range(256))
_LONG_RUN = b"1" * (MAX_NUMBER_CHARS + 1)


class BadPayload(ValueError):
    """A request the server refuses; carries its HTTP status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class PayloadLimits:
    """What one `/predict` request may carry.

    Attributes:
        max_batch: most images in one `{"tensor": ...}` request.
        image: limits on an image's declared size, checked before decoding.
        max_json_depth: deepest nesting of JSON arrays and objects.
    """

    max_batch: int = MAX_BATCH
    image: ImageLimits = field(default_factory=ImageLimits)
    max_json_depth: int = MAX_JSON_DEPTH


def json_depth(skeleton: str) -> int:
    """The deepest nesting of `[`/`{` in JSON text whose string literals were already blanked."""
    brackets = _NOT_BRACKET.sub("", skeleton).encode("ascii")
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int64)
    return int(np.cumsum(steps).max())


def parse_json(body: bytes, *, max_depth: int = MAX_JSON_DEPTH, max_elements: int | None = None) -> Any:
    """Parse a JSON body after checking, on the text alone, what parsing it would cost.

    Args:
        body: the raw request body (UTF-8).
        max_depth: deepest nesting of arrays and objects allowed.
        max_elements: most commas + 1 allowed outside strings (bounds the list objects built).

    Returns:
        The parsed value; integers come back as floats, so no huge int is ever built.

    Raises:
        BadPayload: 400 for text that is not JSON, 413 for a nesting, number or element count over a limit.

    Example:
        >>> parse_json(b'{"tensor": [1, 2.5]}')
        {'tensor': [1.0, 2.5]}
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadPayload(f"the body is not valid JSON ({error}); send UTF-8 JSON") from error
    skeleton = _STRING.sub('""', text)
    depth = json_depth(skeleton)
    if depth > max_depth:
        raise BadPayload(f"the JSON is nested {depth} levels deep; the limit is {max_depth}", 413)
    raw = skeleton.encode("utf-8")
    start = raw.translate(_NUMBER_BYTES).find(_LONG_RUN)
    if start >= 0:
        raise BadPayload(
            f"the JSON holds a number over {MAX_NUMBER_CHARS} characters ({raw[start:start + 20].decode()}...); "
            "send plain float32 values",
            413,
        )
    if max_elements is not None and (count := skeleton.count(",") + 1) > max_elements:
        raise BadPayload(f"the JSON holds {count} elements; the limit is {max_elements}", 413)
    try:
        return json.loads(text, parse_int=float)
    except (ValueError, RecursionError) as error:  # JSONDecodeError is a ValueError
        raise BadPayload(f"the body is not valid JSON ({error})") from error


def _nested_shape(value: Any) -> list[int]:
    # the shape the first elements imply; np.asarray then finds any ragged row
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def tensor_pixels(value: Any, size: int, max_batch: int) -> np.ndarray:
    """Check a `{"tensor": ...}` value's shape, then convert it to a (B, 3, S, S) float32 batch.

    Raises:
        BadPayload: 422 for a wrong shape, a ragged list, non-numbers, too many images or non-finite values.
    """
    expected = (3, size, size)
    shape = _nested_shape(value)
    if shape[-3:] != list(expected) or len(shape) not in (3, 4):
        raise BadPayload(
            f"'tensor' has shape {shape}; expected {list(expected)} or [batch, {', '.join(map(str, expected))}] "
            "(preprocessed pixels)",
            422,
        )
    if len(shape) == 4 and not 1 <= shape[0] <= max_batch:
        raise BadPayload(f"'tensor' holds {shape[0]} images; send between 1 and {max_batch}", 422)
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # past-float32 values become inf, refused below
            array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as error:
        raise BadPayload(f"'tensor' must be a nested list of numbers with a regular shape ({error})", 422) from error
    if array.shape != tuple(shape):
        raise BadPayload(f"'tensor' must be a nested list of numbers with a regular shape (got {array.shape})", 422)
    if array.ndim == 3:
        array = array[None]
    if not np.isfinite(array).all():
        raise BadPayload("'tensor' holds NaN or infinite values (or numbers past float32); send finite pixels", 422)
    return np.ascontiguousarray(array)


def b64_image_pixels(value: Any, spec: Preprocessing, limits: ImageLimits) -> np.ndarray:
    """Decode an `{"image": "<base64>"}` value (a data: URL is accepted too) into a (1, 3, S, S) batch.

    Raises:
        BadPayload: 400 for bad base64 or image bytes, 413 for an image over a limit, 422 for a non-string.
    """
    if not isinstance(value, str):
        raise BadPayload("'image' must be a base64 string of an image file", 422)
    try:
        data = base64.b64decode(value.split(",", 1)[-1] if value.startswith("data:") else value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadPayload(f"'image' is not valid base64 ({error})") from error
    return image_pixels(data, spec, limits)


def image_pixels(data: bytes, spec: Preprocessing, limits: ImageLimits) -> np.ndarray:
    """Image file bytes -> (1, 3, S, S), refusing by header before decoding.

    Raises:
        BadPayload: 400 or 413, with `ImageRejected`'s message.
    """
    try:
        return image_to_pixels(data, spec, limits=limits)
    except ImageRejected as error:
        raise BadPayload(str(error), error.status) from error


def small_image(data: bytes, max_pixels: int) -> bool:
    """Whether image bytes declare at most `max_pixels` pixels (read from the header; nothing is decoded).

    False for anything that is not a readable image header: the full, guarded decode then refuses it.
    """
    from steerpatch.serve.preprocess import declared_size

    size = declared_size(data)
    return size is not None and size[0] * size[1] <= max_pixels


def json_pixels(body: bytes, spec: Preprocessing, limits: PayloadLimits) -> np.ndarray:
    """A JSON `/predict` body (`{"image": ...}` or `{"tensor": ...}`) -> (B, 3, S, S).

    Raises:
        BadPayload: naming what was wrong and the fix.
    """
    per_image = 3 * spec.image_size * spec.image_size
    payload = parse_json(body, max_depth=limits.max_json_depth, max_elements=limits.max_batch * per_image + 16)
    if not isinstance(payload, dict) or ("image" in payload) == ("tensor" in payload):
        raise BadPayload('send a JSON object with exactly one of "image" (base64) or "tensor" (pixels)', 422)
    if "tensor" in payload:
        return tensor_pixels(payload["tensor"], spec.image_size, limits.max_batch)
    return b64_image_pixels(payload["image"], spec, limits.image)
