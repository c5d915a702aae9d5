"""Hook-block activations of a whole dataset, computed once per (model, dataset, block) and reused.

Validating a candidate patch only needs the residual stream at the hook and the blocks after it; the
blocks before the hook do not depend on the patch. Caching their output makes each further candidate
cost a fraction of a full forward pass (see bench/bench_validate.py).

Memory stays bounded at any dataset size (see bench/bench_validate_memory.py): images are streamed
(decoded in parallel threads, preprocessed and dropped batch by batch; `activations.py` computes an
entry), and activations beyond the cache's memory budget are written as checksummed shards (`shards.py`)
to the cache folder, or to a temporary spill folder, and read back one shard at a time.

On disk an entry is a folder `<key>/` holding `index.json` (ids, undecodable images, shard checksums),
`features.safetensors` and `hidden-NNNNN.safetensors` shards. It is written under a temporary name and
renamed into place, so other processes see a whole entry or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch

from steerpatch.disk import check_cache_dir
from steerpatch.errors import DatasetError
from steerpatch.validate.activations import CachedActivations, compute_activations
from steerpatch.validate.shards import (
    CorruptShard,
    Shard,
    ShardedActivations,
    load_checked,
    row_batches,
    shard_rows,
    write_shard,
)

CACHE_FORMAT = 2
DEFAULT_MEMORY = 1 << 30  # bytes of activations held in memory before spilling to disk
INDEX = "index.json"
FEATURES = "features.safetensors"

__all__ = ["ActivationCache", "CachedActivations", "cache_key", "check_cache_dir", "compute_activations", "row_batches"]


def cache_key(model_fingerprint: str, dataset_fingerprint: str, block: int, *, fast_decode: bool = False) -> str:
    """The cache key: which weights, which images, which block (and approximate decoding, when asked for)."""
    from steerpatch.pixels import FAST_DECODING

    # approximately decoded pixels give other activations: they never share an entry with exact ones
    return f"{model_fingerprint[:16]}-{dataset_fingerprint[:16]}-b{block}" + (f"-{FAST_DECODING}" if fast_decode else "")


class ActivationCache:
    """Hook activations keyed by (model fingerprint, dataset fingerprint, block).

    Entries live in memory (the most recent `max_entries`, within `memory_budget` bytes) and, when
    `directory` is given, also as checksummed shard folders there, so a later process validating against
    the same data skips the prefix too. An entry larger than the budget stays on disk and is read a shard
    at a time; without `directory` it spills to a temporary folder under `spill_dir` (default: the
    system's temporary folder), removed when the entry is dropped.

    Args:
        directory: where entries persist between processes (checked writable now), or None.
        memory_budget: bytes of activations kept in memory.
        max_entries: entries kept in memory at most.
        spill_dir: parent of temporary spill folders when there is no `directory`.

    Raises:
        OutputError: `directory` cannot be written or is on a full disk.

    Example:
        >>> cache = ActivationCache("cache/", memory_budget=256 << 20)  # doctest: +SKIP
        >>> first = cache.get(loaded, data, block=3)   # runs blocks 0..3 over every image
        >>> again = cache.get(loaded, data, block=3)   # no model call
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        memory_budget: int = DEFAULT_MEMORY,
        max_entries: int = 4,
        spill_dir: str | Path | None = None,
    ) -> None:
        self.directory = check_cache_dir(directory) if directory is not None else None
        self.memory_budget = int(memory_budget)
        self.max_entries = max_entries
        self.spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._entries: OrderedDict[str, CachedActivations] = OrderedDict()
        self.misses = 0  # how many times the prefix was computed; tests and benchmarks read it
        self.corrupt = 0  # how many stored entries failed their checksums and were recomputed

    def file_hashes(self, *, rehash: bool = False):
        """The dataset-fingerprint memo beside this cache (in memory only without a directory)."""
        from steerpatch.data import FILE_HASHES, FileHashes

        return FileHashes(self.directory / FILE_HASHES if self.directory is not None else None, rehash=rehash)

    def get(
        self,
        loaded,
        dataset,
        block: int,
        *,
        batch_size: int = 64,
        on_undecodable: str = "skip",
        progress: bool = True,
        dataset_fingerprint: str | None = None,
        workers: int | None = None,
        fast_decode: bool = False,
    ) -> CachedActivations:
        """The activations of `dataset` at `block`, computing them on a miss.

        Args:
            loaded: a `LoadedModel`.
            dataset: an `ImageDataset`.
            block: the hook block.
            batch_size: images per forward pass.
            on_undecodable: "skip" or "fail" (see `steerpatch.data.iter_image_batches`).
            progress: show progress bars on stderr.
            dataset_fingerprint: `dataset.fingerprint()` when the caller already has it (it reads every file).
            workers: image decoding threads (None: `steerpatch.data.default_workers()`).
            fast_decode: decode JPEGs at reduced scale (`steerpatch.pixels.draft`; pixels approximate),
                cached under a key of their own.

        Returns:
            The cached activations.

        Raises:
            DatasetError: an unreadable image under `on_undecodable="fail"`.
            OutputError: the spill folder cannot be written or lacks space.
        """
        if dataset_fingerprint is None:
            dataset_fingerprint = dataset.fingerprint(hashes=self.file_hashes())
        key = cache_key(loaded.fingerprint, dataset_fingerprint, block, fast_decode=fast_decode)
        entry = self._entries.get(key)
        if entry is None and self.directory is not None:
            entry = self._read(key)
        if entry is None:
            self.misses += 1
            entry = self._compute(key, loaded, dataset, block, batch_size, on_undecodable, progress, workers,
                                  fast_decode)
        if on_undecodable == "fail" and entry.undecodable:
            item_id, reason = entry.undecodable[0]
            raise DatasetError(reason)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_entries
            or sum(e.memory_bytes for e in self._entries.values()) > self.memory_budget
        ):
            self._entries.popitem(last=False)
        return entry

    def _compute(self, key, loaded, dataset, block, batch_size, on_undecodable, progress, workers,
                 fast_decode=False) -> CachedActivations:
        if self.directory is not None:
            folder = Path(tempfile.mkdtemp(dir=self.directory, prefix=f".{key}.tmp-"))
        else:
            parent = check_cache_dir(self.spill_dir) if self.spill_dir is not None else None
            folder = Path(tempfile.mkdtemp(dir=parent, prefix="steerpatch-spill-"))
        try:
            entry = compute_activations(
                loaded, dataset, block, batch_size=batch_size, on_undecodable=on_undecodable, progress=progress,
                memory_budget=self.memory_budget, spill_folder=folder, workers=workers, fast_decode=fast_decode,
            )
            if self.directory is None:
                if entry.in_memory:
                    shutil.rmtree(folder, ignore_errors=True)
                return entry
            return self._publish(key, folder, entry)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / key

    def _read(self, key: str) -> CachedActivations | None:
        """A stored entry, checksums verified; None when absent, of another format, or corrupt."""
        folder = self._path(key)
        if not (folder / INDEX).is_file():
            return None
        try:
            info = json.loads((folder / INDEX).read_text(encoding="utf-8"))
            if not isinstance(info, dict) or info.get("format") != CACHE_FORMAT or info.get("key") != key:
                return None
            n, tokens, width = (int(v) for v in info["shape"])
            ids = [str(i) for i in info["ids"]]
            undecodable = [(str(a), str(b)) for a, b in info["undecodable"]]
            shards = [Shard(str(s["file"]), int(s["rows"]), str(s["sha256"])) for s in info["shards"]]
            if len(ids) != n or any(Path(s.file).name != s.file for s in shards):
                raise CorruptShard(f"{folder}: inconsistent index")
            feat = info["features"]
            features = load_checked(folder / FEATURES, str(feat["sha256"]), "features", (n, int(feat["dim"])))
            hidden = ShardedActivations(folder, shards, (n, tokens, width))
            loaded_hidden: torch.Tensor | ShardedActivations = hidden
            if hidden.nbytes <= self.memory_budget:
                loaded_hidden = torch.empty(n, tokens, width)
                for k, start in enumerate(hidden._starts[:-1]):
                    loaded_hidden[start : start + shards[k].rows] = hidden.shard(k)
            else:
                hidden.verify()
                loaded_hidden = hidden
        except (CorruptShard, OSError, ValueError, KeyError, TypeError):
            # a damaged entry is never read as data: drop it and compute it again
            self.corrupt += 1
            return None
        return CachedActivations(ids=ids, hidden=loaded_hidden, features=features, undecodable=undecodable)

    def _publish(self, key: str, folder: Path, entry: CachedActivations) -> CachedActivations:
        """Complete a computed entry's folder (shards, features, index) and rename it into place."""
        from safetensors.torch import save

        from steerpatch.io import atomic_write_bytes, atomic_write_text

        if entry.in_memory:
            assert isinstance(entry.hidden, torch.Tensor)
            rows = shard_rows(int(entry.hidden[0].numel()) * 4 if len(entry.hidden) else 1, 64)
            shards = [write_shard(folder, k, entry.hidden[s : s + rows]) for k, s in enumerate(range(0, len(entry.hidden), rows))]
        else:
            assert isinstance(entry.hidden, ShardedActivations)
            shards = entry.hidden.shards
        data = save({"features": entry.features.contiguous()})
        atomic_write_bytes(folder / FEATURES, data)
        index = {
            "format": CACHE_FORMAT, "key": key, "shape": list(entry.hidden.shape), "ids": entry.ids,
            "undecodable": entry.undecodable, "shards": [s.__dict__ for s in shards],
            "features": {"sha256": hashlib.sha256(data).hexdigest(), "dim": int(entry.features.shape[1])},
        }
        atomic_write_text(folder / INDEX, json.dumps(index))
        final = self._path(key)
        if final.exists():  # a damaged or older entry, or another process got there first: replace it
            trash = Path(tempfile.mkdtemp(dir=self.directory, prefix=f".{key}.old-"))
            with contextlib.suppress(OSError):
                os.replace(final, trash / key)
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(folder, final)
        except OSError:  # lost a race with another process; its entry is as good as ours
            shutil.rmtree(folder, ignore_errors=True)
            read = self._read(key)
            if read is None:
                raise
            return read
        if entry.in_memory:
            return entry
        n, tokens, width = (int(v) for v in entry.hidden.shape)
        return CachedActivations(
            ids=entry.ids, hidden=ShardedActivations(final, shards, (n, tokens, width)),
            features=entry.features, undecodable=entry.undecodable,
        )
