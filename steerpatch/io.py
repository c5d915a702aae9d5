"""Atomic file output: nothing a reader can see is ever half-written.

Every writer goes to a temporary sibling first and is renamed into place, so an interrupted run
leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from steerpatch.errors import OutputError


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder, then rename it into place.

    Args:
        path: destination file; its folder is created if missing.
        data: the bytes to write.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 `text` atomically (see `atomic_write_bytes`)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path for a writer that wants a filename (safetensors, onnx); rename on success.

    Example:
        >>> with atomic_file("out/model.onnx") as tmp:  # doctest: +SKIP
        ...     onnx.save(graph, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def ensure_empty_dir(path: str | Path, *, what: str = "output folder") -> Path:
    """Refuse a destination folder that exists and is not empty.

    Raises:
        OutputError: if `path` exists and has entries, or is a file.
    """
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise OutputError(
            f"{what} '{path}' already exists and is not empty; choose a new path or remove it first"
        )
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, what: str = "output folder") -> Iterator[Path]:
    """Build a folder under a temporary name beside `path` and rename it into place on success.

    The destination must not exist or must be empty. On failure the temporary folder is removed.
    """
    path = ensure_empty_dir(path, what=what)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        yield tmp
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
