"""Reading foreign weight files without unpickling: safetensors by magic, torch files weights-only."""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import Any

import torch

from steerpatch.errors import SAEError


def head(path: Path, n: int = 16) -> bytes:
    """The first `n` bytes of a file."""
    with open(path, "rb") as handle:
        return handle.read(n)


def is_safetensors(path: Path) -> bool:
    """True when the file starts like safetensors: an 8-byte header length, then a JSON object."""
    start = head(path, 9)
    if len(start) < 9:
        return False
    (length,) = struct.unpack("<Q", start[:8])
    return 0 < length <= path.stat().st_size - 8 and start[8:9] == b"{"


def starts_with_json_line(path: Path) -> bool:
    """True when the file starts with `{` (saev's JSON header line)."""
    return head(path, 1) == b"{"


def describe_magic(path: Path) -> str:
    """What the first bytes say the file is, for error messages."""
    start = head(path, 4)
    if start.startswith(b"PK\x03\x04"):
        return "it is a torch zip/pickle archive"
    if start[:1] == b"\x80":
        return "it is a Python pickle"
    if not start:
        return "it is empty"
    return f"it starts with bytes {start!r}"


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file after checking its magic, so a renamed pickle is named as such.

    Raises:
        SAEError: not safetensors, or corrupt.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not is_safetensors(path):
        raise SAEError(
            f"{path} is not a safetensors file ({describe_magic(path)}); pickles are never loaded, "
            "convert it with safetensors.torch.save_file(state_dict, ...)"
        )
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise SAEError(f"{path} is a corrupt safetensors file ({error}); re-export it") from None


def read_torch_weights(data: bytes, *, source: str, fix: str) -> Any:
    """`torch.load(weights_only=True)` over bytes: tensors and plain containers, never arbitrary objects.

    Args:
        data: the torch.save payload.
        source: the file, for messages.
        fix: what to do when the payload holds pickled objects.

    Raises:
        SAEError: when weights-only loading refuses or cannot parse the payload.
    """
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as error:  # torch raises several types for refused or corrupt payloads
        first = (str(error).splitlines() or [""])[0][:160]
        raise SAEError(
            f"{source}: the weights could not be read with weights-only loading "
            f"({type(error).__name__}: {first}); {fix}"
        ) from None


def tensor_dict(value: Any, *, source: str, fix: str) -> dict[str, torch.Tensor]:
    """Check that a loaded payload is a flat dict of tensors.

    Raises:
        SAEError: naming the file and the fix.
    """
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    ):
        raise SAEError(f"{source}: the payload is not a dict of named tensors; {fix}")
    return value
