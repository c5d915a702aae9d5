"""Atomic file output: nothing a reader can see is ever half-written.

Every writer goes to a temporary sibling first and is renamed into place, so an interrupted run
leaves either the old file or the new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from steerpatch.errors import OutputError, SteerpatchError

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    # os.umask can only be read by setting it; the lock keeps two writers from seeing each other's 0
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _honour_umask(fd_or_path: int | str | Path, *, directory: bool = False) -> None:
    # mkstemp/mkdtemp create 0600/0700 whatever the umask; give the result the mode open() would have
    mode = (0o777 if directory else 0o666) & ~_umask()
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, mode)
    else:
        os.chmod(fd_or_path, mode)


def refuse_special_file(
    path: str | Path, *, what: str = "path", entries: bool = False, error: type[SteerpatchError] = SteerpatchError
) -> None:
    """Refuse a FIFO, socket or device where a file or folder is expected, before anything opens it.

    Opening a FIFO blocks until a writer appears and a device can stream forever, so these are
    refused by type. Missing paths are left for the caller to report.

    Args:
        path: the path about to be opened.
        what: how to name it in the message.
        error: the error class to raise (its exit code is 2).
        entries: for a folder, also check the entries directly inside it.

    Raises:
        SteerpatchError: naming the path and its type (exit code 2).
    """
    path = Path(path)
    candidates = [path]
    if entries and path.is_dir():
        with contextlib.suppress(OSError):
            candidates += sorted(path.iterdir())
    for candidate in candidates:
        try:
            mode = candidate.stat().st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            continue
        kind = (
            "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file"
        )  # fmt: skip
        raise error(f"{what} '{candidate}' is {kind}, not a regular file; give a regular file or folder")


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
        _honour_umask(fd)
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
    try:
        _honour_umask(fd)
    finally:
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
        _honour_umask(tmp, directory=True)
        yield tmp
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    refuse_special_file(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
