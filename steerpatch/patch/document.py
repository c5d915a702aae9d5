"""Reading and writing patch files, with every problem of a document collected into one PatchError.

Patch files are hand-edited, so a bad one must produce a message a person can act on: each problem
names its field path (`edits[2].value`) and the fix, and all problems come out at once
(`format.validate_document`, worded by `problems.py`). This module adds strict JSON parsing,
size limits and atomic writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from steerpatch.errors import PatchError
from steerpatch.io import atomic_write_text, refuse_special_file
from steerpatch.patch.format import MAX_D_SAE, Patch, validate_document

MAX_PATCH_BYTES = 10 * 1024 * 1024

# no patch field needs a longer integer (d_sae < 2**27); longer ones are refused while parsing,
# before Python's int() meets a 5,000-digit number
MAX_INT_DIGITS = 20


class _Duplicates:
    """object_pairs_hook that records repeated keys, which json.loads would silently overwrite."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                self.keys.append(key)
            out[key] = value
        return out


class _LongInteger(ValueError):
    def __init__(self, digits: int) -> None:
        super().__init__(digits)
        self.digits = digits


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise _LongInteger(len(text.lstrip("-")))
    return int(text)


def parse_json(text: str, *, source: str = "patch") -> Any:
    """Parse patch JSON strictly: syntax errors with line and column, repeated keys refused.

    NaN and Infinity literals parse to non-finite floats so that validation can name the field
    they sit in; no patch field accepts them.

    Raises:
        PatchError: for malformed JSON or repeated keys.
    """
    duplicates = _Duplicates()
    try:
        data = json.loads(text, object_pairs_hook=duplicates, parse_int=_parse_int)
    except json.JSONDecodeError as error:
        raise PatchError(
            f"{source} is not valid JSON",
            [f"line {error.lineno}, column {error.colno}: {error.msg}; fix the JSON syntax there"],
        ) from None
    except _LongInteger as error:
        raise PatchError(
            f"{source} is invalid",
            [
                f"(document): an integer has {error.digits:,} digits; no patch field needs more than "
                f"{MAX_INT_DIGITS} (latents < {MAX_D_SAE:,})"
            ],
        ) from None
    except RecursionError:
        raise PatchError(
            f"{source} is not valid JSON", ["(document): nesting is too deep; a patch is a flat object"]
        ) from None
    if duplicates.keys:
        problems = [
            f"(document): key {k!r} appears twice in one object; keep one"
            for k in dict.fromkeys(duplicates.keys)
        ]
        raise PatchError(
            f"{source} is invalid ({len(problems)} problem{'s' if len(problems) != 1 else ''})", problems
        )
    return data


def _size_error(source: str, size: int) -> PatchError:
    return PatchError(
        f"{source} is {size} bytes, over the {MAX_PATCH_BYTES // (1024 * 1024)} MB limit for patches; "
        "move bulky provenance out of the patch"
    )


def _decode(text: str | bytes, source: str) -> str:
    if len(text) > MAX_PATCH_BYTES:
        raise _size_error(source, len(text))
    if isinstance(text, str):
        return text
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PatchError(f"{source} is not UTF-8 text (byte {error.start}); save it as UTF-8 JSON") from None


def _read(path: Path) -> tuple[str, str]:
    source = f"patch file '{path}'"
    refuse_special_file(path, what="patch file", error=PatchError)
    if not path.is_file():
        raise PatchError(f"{source} does not exist or is not a file; check the path")
    size = path.stat().st_size
    if size > MAX_PATCH_BYTES:  # refuse before reading it into memory
        raise _size_error(source, size)
    return _decode(path.read_bytes(), source), source


def patch_from_json(text: str | bytes, *, source: str = "patch") -> Patch:
    """Parse and validate a patch document.

    Args:
        text: the JSON text (str or UTF-8 bytes).
        source: how to name the document in error messages.

    Returns:
        The validated Patch.

    Raises:
        PatchError: listing every problem (syntax, size, keys, types, values, hash).
    """
    return validate_document(parse_json(_decode(text, source), source=source), source=source)


def load_patch(path: str | os.PathLike[str]) -> Patch:
    """Read and validate a patch file.

    Args:
        path: a `.json` patch file.

    Returns:
        The validated Patch.

    Raises:
        PatchError: if the file is missing, over 10 MB, or invalid (all problems listed).

    Example:
        >>> patch = load_patch("registry/patches/water-shortcut.json")  # doctest: +SKIP
        >>> patch.ref  # doctest: +SKIP
        'water-shortcut@1.0.0'
    """
    text, source = _read(Path(path))
    return validate_document(parse_json(text, source=source), source=source)


def dumps_patch(patch: Patch) -> str:
    """The on-disk text of a patch: indented JSON in field order, with a trailing newline."""
    return json.dumps(patch.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def save_patch(patch: Patch, path: str | os.PathLike[str], *, overwrite: bool = True) -> Path:
    """Write a patch atomically after re-checking it.

    Args:
        patch: the patch to write.
        path: destination file.
        overwrite: if False, refuse an existing file.

    Returns:
        The destination path.

    Raises:
        PatchError: if the patch does not validate or would exceed the size limit.
        OutputError: if `path` exists and `overwrite` is False.
    """
    from steerpatch.errors import OutputError

    path = Path(path)
    if not overwrite and path.exists():
        raise OutputError(f"'{path}' already exists; choose another path or pass --force to replace it")
    checked = validate_document(patch.to_dict(), source=f"patch {patch.ref}")
    text = dumps_patch(checked)
    if len(text.encode()) > MAX_PATCH_BYTES:
        raise PatchError(
            f"patch {patch.ref} would be over the 10 MB limit; move bulky provenance out of the patch"
        )
    return atomic_write_text(path, text)


def rehash_file(path: str | os.PathLike[str]) -> Patch:
    """Recompute the content hash of a hand-edited patch file and write it back.

    Every other check still applies; only a hash mismatch is repaired.

    Raises:
        PatchError: if the document has problems other than its hash (the file is left as it was).
    """
    text, source = _read(Path(path))
    data = parse_json(text, source=source)
    if isinstance(data, dict):
        data = {**data, "content_hash": "0" * 64}
    patch = validate_document(data, source=source, rehash=True)
    save_patch(patch, path)
    return patch
