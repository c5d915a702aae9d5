"""SHA-256 of a dataset's files, remembered by (path, size, mtime) so unchanged files are read once.

`ImageDataset.fingerprint` hashes every file; with a `FileHashes` memo (kept beside an activation cache
as `file-hashes.json`) a later run reads only the files that changed. `steerpatch.data` re-exports both names.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

FILE_HASHES = "file-hashes.json"  # the fingerprint memo's name beside a cache
_SHA256 = re.compile(r"[0-9a-f]{64}")


class FileHashes:
    """SHA-256 of files remembered by (path, size, mtime), so a dataset's unchanged files are read once.

    A file whose size and modification time (nanoseconds) are as recorded is trusted to hold the same
    bytes, as make and rsync trust them; `rehash=True` reads every file again and rewrites the memo.
    The memo is a JSON file (usually `file-hashes.json` beside an activation cache); one that is
    unreadable or malformed is ignored, since it is only a shortcut.

    Example:
        >>> hashes = FileHashes("cache/file-hashes.json")  # doctest: +SKIP
        >>> load_dataset("world/test").fingerprint(hashes=hashes)  # doctest: +SKIP
    """

    def __init__(self, path: str | Path | None = None, *, rehash: bool = False) -> None:
        self.path = Path(path) if path is not None else None
        self.rehash = rehash
        self._known: dict[str, list] = {} if rehash or self.path is None else self._load()
        self._dirty = rehash
        self.hashed = 0  # files read (not taken from the memo); tests and benchmarks read it

    def _load(self) -> dict[str, list]:
        assert self.path is not None
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        files = data.get("files") if isinstance(data, dict) and data.get("format") == 1 else None
        if not isinstance(files, dict):
            return {}
        return {
            key: row for key, row in files.items()
            if isinstance(row, list) and len(row) == 3 and all(type(v) is int for v in row[:2])
            and isinstance(row[2], str) and _SHA256.fullmatch(row[2])
        }

    def sha256(self, path: str | Path) -> str:
        """The file's SHA-256, read from the memo when its size and mtime are unchanged."""
        from steerpatch.io import sha256_file

        key = os.path.abspath(path)
        before = os.stat(key)
        known = self._known.get(key)
        if known is not None and known[0] == before.st_size and known[1] == before.st_mtime_ns:
            return known[2]
        sha = sha256_file(key)
        self.hashed += 1
        after = os.stat(key)
        if (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns):  # not written meanwhile
            self._known[key] = [after.st_size, after.st_mtime_ns, sha]
            self._dirty = True
        return sha

    def save(self) -> None:
        """Write the memo atomically (nothing when there is no file or nothing new)."""
        from steerpatch.io import atomic_write_text

        if self.path is None or not self._dirty:
            return
        atomic_write_text(self.path, json.dumps({"format": 1, "files": self._known}))
        self._dirty = False
