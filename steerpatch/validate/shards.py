"""A disk-backed (N, tokens, width) activation tensor: checksummed safetensors shards, read one at a time.

When a dataset's hook activations do not fit the cache's memory budget they are written here in
shards of about `SHARD_BYTES`, each with its SHA-256 in the folder's `index.json`. Readers go through
the shards in order, so a candidate evaluation holds one shard at a time; every read checks the
shard's checksum, so a corrupted or truncated file is never read as data.
"""

from __future__ import annotations

import hashlib
import shutil
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from steerpatch.disk import NO_SPACE
from steerpatch.errors import OutputError

SHARD_BYTES = 32 << 20


class CorruptShard(Exception):
    """A shard's bytes do not match its recorded checksum or shape (the caller recomputes)."""


@dataclass(frozen=True)
class Shard:
    """One shard file: its name in the folder, its rows, and the SHA-256 of its bytes."""

    file: str
    rows: int
    sha256: str




def shard_rows(row_bytes: int, batch_size: int) -> int:
    """Rows per shard: about `SHARD_BYTES`, a multiple of the batch size so batches never straddle shards."""
    per_shard = max(1, SHARD_BYTES // max(row_bytes, 1))
    return max(batch_size, per_shard // batch_size * batch_size)


def write_shard(folder: Path, index: int, tensor: torch.Tensor) -> Shard:
    """Write rows as `hidden-<index>.safetensors` in `folder` and return its record."""
    from safetensors.torch import save

    data = save({"hidden": tensor.contiguous()})
    name = f"hidden-{index:05d}.safetensors"
    try:
        with open(folder / name, "wb") as handle:
            handle.write(data)
    except OSError as error:
        if error.errno in NO_SPACE:
            raise OutputError(f"cache folder '{folder.parent}' ran out of space; free some or pass another --cache-dir") from error
        raise
    return Shard(name, int(tensor.shape[0]), hashlib.sha256(data).hexdigest())


def read_checked(path: Path, sha256: str) -> bytes:
    """A file's bytes, checked against its SHA-256.

    Raises:
        CorruptShard: missing, truncated or changed.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CorruptShard(f"{path}: {error}") from error
    if hashlib.sha256(data).hexdigest() != sha256:
        raise CorruptShard(f"{path}: checksum mismatch")
    return data


def load_checked(path: Path, sha256: str, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The float32 tensor `name` of a checksummed safetensors file, with the expected shape.

    Raises:
        CorruptShard: a checksum, format, dtype or shape mismatch.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    data = read_checked(path, sha256)
    try:
        tensor = load(data).get(name)
    except (SafetensorError, ValueError) as error:
        raise CorruptShard(f"{path}: {error}") from error
    if tensor is None or tensor.dtype != torch.float32 or tuple(tensor.shape) != tuple(shape):
        raise CorruptShard(f"{path}: expected float32 '{name}' of shape {tuple(shape)}")
    return tensor


class ShardedActivations:
    """A read-only (N, tokens, width) float32 tensor kept in shard files.

    It answers what the validation code asks of a tensor: `shape`, `len`, row slices and row index
    lists; `batches` reads it front to back one shard at a time. Every read checks the checksum.

    Args:
        folder: the folder holding the shard files.
        shards: their records, in row order.
        shape: (N, tokens, width).
        cleanup: delete the folder when this object is garbage collected (a temporary spill).
    """

    dtype = torch.float32

    def __init__(self, folder: str | Path, shards: list[Shard], shape: tuple[int, int, int], *, cleanup: bool = False) -> None:
        self.folder = Path(folder)
        self.shards = list(shards)
        self.shape = torch.Size(shape)
        self._starts = [0]
        for shard in self.shards:
            self._starts.append(self._starts[-1] + shard.rows)
        if self._starts[-1] != self.shape[0]:
            raise CorruptShard(f"{self.folder}: shards hold {self._starts[-1]} rows, index says {self.shape[0]}")
        self._last: tuple[int, torch.Tensor] | None = None  # the shard read last, for row lookups within it
        if cleanup:
            weakref.finalize(self, shutil.rmtree, str(self.folder), True)

    def __len__(self) -> int:
        return int(self.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self.shape.numel()) * 4

    def shard(self, k: int) -> torch.Tensor:
        """Shard `k` as a tensor, checksum verified.

        Raises:
            CorruptShard: its file no longer matches its checksum.
        """
        if self._last is not None and self._last[0] == k:
            return self._last[1]
        shard = self.shards[k]
        tensor = load_checked(self.folder / shard.file, shard.sha256, "hidden", (shard.rows, *self.shape[1:]))
        self._last = (k, tensor)
        return tensor

    def verify(self) -> None:
        """Read every shard once, checking checksums and shapes.

        Raises:
            CorruptShard: the first bad shard.
        """
        for k in range(len(self.shards)):
            self._last = None
            self.shard(k)
        self._last = None

    def split(self, size: int) -> Iterator[torch.Tensor]:
        """Row batches of `size`, as `torch.Tensor.split` gives them (read lazily, in order)."""
        return self.batches(size)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Consecutive row batches of `batch_size` (the last may be shorter), reading shards in order."""
        carry: torch.Tensor | None = None
        for k in range(len(self.shards)):
            rows = self.shard(k)
            if carry is not None:
                rows = torch.cat([carry, rows])
                carry = None
            full = len(rows) // batch_size * batch_size
            for start in range(0, full, batch_size):
                yield rows[start : start + batch_size]
            if full < len(rows):
                carry = rows[full:]
        if carry is not None:
            yield carry

    def __getitem__(self, key) -> torch.Tensor:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[list(range(start, stop, step))]
            parts = []
            for k in range(len(self.shards)):
                lo, hi = self._starts[k], self._starts[k + 1]
                if hi <= start or lo >= stop:
                    continue
                parts.append(self.shard(k)[max(start, lo) - lo : min(stop, hi) - lo])
            return torch.cat(parts) if parts else torch.zeros(0, *self.shape[1:])
        if isinstance(key, int):
            return self[key : key + 1][0] if key >= 0 else self[len(self) + key]
        rows = torch.as_tensor(key, dtype=torch.long).reshape(-1)
        rows = torch.where(rows < 0, rows + len(self), rows)
        if len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        out = torch.empty(len(rows), *self.shape[1:])
        shard_of = torch.bucketize(rows, torch.tensor(self._starts[1:]), right=True)
        for k in shard_of.unique().tolist():
            mask = shard_of == k
            out[mask] = self.shard(k)[rows[mask] - self._starts[k]]
        return out


def row_batches(hidden, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive row batches of an in-memory tensor or a `ShardedActivations`, read sequentially."""
    if isinstance(hidden, ShardedActivations):
        yield from hidden.batches(batch_size)
        return
    for start in range(0, len(hidden), batch_size):
        yield hidden[start : start + batch_size]
