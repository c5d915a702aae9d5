"""Disk checks that run before any work: byte sizes from the command line, and cache folders.

Kept free of torch so that the CLI can refuse a bad `--cache-memory` or an unwritable `--cache-dir`
in a fraction of a second, before a patch, a model or an image is read.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from steerpatch.errors import OutputError

MIN_FREE_BYTES = 64 << 20  # a cache folder with less free space than this is called full before any work
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def parse_size(text: str) -> int:
    """Bytes from a size such as `512MiB`, `2GB`, `1.5G` or `0`.

    Raises:
        ValueError: naming the text and the accepted forms.
    """
    units = {"": 1, "b": 1, "k": 1 << 10, "kb": 10**3, "kib": 1 << 10, "m": 1 << 20, "mb": 10**6, "mib": 1 << 20,
             "g": 1 << 30, "gb": 10**9, "gib": 1 << 30, "t": 1 << 40, "tb": 10**12, "tib": 1 << 40}
    value = text.strip().lower()
    number = value.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = value[len(number):].strip()
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in units or amount < 0:
        raise ValueError(f"size {text!r} is not a size; write a number with an optional unit, like 512MiB, 2GB or 0")
    return int(amount * units[unit])


def check_cache_dir(directory: str | Path, needed_bytes: int = MIN_FREE_BYTES) -> Path:
    """Refuse a cache folder that cannot be written or lacks free space, before any work.

    The folder is created if missing, and a probe file is written and removed.

    Args:
        directory: the cache (or spill) folder.
        needed_bytes: free space the coming writes need.

    Returns:
        The folder.

    Raises:
        OutputError: one line naming the folder, the problem and the fix.
    """
    path = Path(directory)
    fix = "free some space or pass another --cache-dir"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-") as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
        free = shutil.disk_usage(path).free
    except OSError as error:
        if error.errno in NO_SPACE:
            raise OutputError(f"cache folder '{path}' is on a full disk; {fix}") from error
        raise OutputError(
            f"cache folder '{path}' cannot be written ({error.strerror or error}); "
            "fix its permissions or pass another --cache-dir"
        ) from error
    if free < needed_bytes:
        raise OutputError(
            f"cache folder '{path}' has {free / 2**20:.0f} MiB free but needs {needed_bytes / 2**20:.0f} MiB; {fix} "
            "(or raise --cache-memory to keep the activations in memory)"
        )
    return path
