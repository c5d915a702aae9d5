"""Computing a dataset's hook-block activations: images streamed through the tower, activations collected.

The image tower runs up to the hook block over every image, batch by batch (decoded in parallel threads by
`steerpatch.data.iter_image_batches`), and the rest of the tower once for the unpatched embeddings. The
activations are collected in one preallocated tensor when they fit the memory budget, else written as
checksummed shards (`shards.py`) while they are computed. `cache.py` keys, stores and reuses the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from steerpatch.disk import check_cache_dir
from steerpatch.models.tower import encode_prefix, encode_suffix, residual_width, vision_tower
from steerpatch.validate.shards import Shard, ShardedActivations, shard_rows, write_shard

__all__ = ["CachedActivations", "compute_activations"]


@dataclass
class CachedActivations:
    """One dataset's activations at one hook block.

    Attributes:
        ids: ids of the images that decoded, in dataset order.
        hidden: residual stream after the hook block, (N, tokens, width), float32: a tensor, or a
            `ShardedActivations` on disk when it did not fit the memory budget (read it with `row_batches`).
        features: unpatched image embeddings, (N, embed_dim).
        undecodable: (id, reason) for every image that could not be read.
    """

    ids: list[str]
    hidden: torch.Tensor | ShardedActivations
    features: torch.Tensor
    undecodable: list[tuple[str, str]]

    @property
    def in_memory(self) -> bool:
        return isinstance(self.hidden, torch.Tensor)

    @property
    def memory_bytes(self) -> int:
        """Bytes this entry holds in memory (spilled activations count nothing)."""
        hidden = self.hidden.numel() * self.hidden.element_size() if isinstance(self.hidden, torch.Tensor) else 0
        return hidden + self.features.numel() * self.features.element_size()


class _HiddenSink:
    """Collects hidden batches in order: in one preallocated tensor within the budget, else as shards on disk."""

    def __init__(self, n_max: int, budget: int, folder: Path | None, batch_size: int) -> None:
        self.n_max, self.budget, self.folder, self.batch_size = n_max, budget, folder, batch_size
        self.memory: torch.Tensor | None = None
        self.shards: list[Shard] = []
        self.pending: list[torch.Tensor] = []
        self.rows = 0
        self.shape: tuple[int, int] | None = None

    def add(self, x: torch.Tensor) -> None:
        if self.shape is None:
            self.shape = (int(x.shape[1]), int(x.shape[2]))
            projected = self.n_max * x[0].numel() * 4
            if projected <= self.budget or self.folder is None:
                self.memory = torch.empty(self.n_max, *self.shape)
            else:
                check_cache_dir(self.folder, projected)
                self.per_shard = shard_rows(x[0].numel() * 4, self.batch_size)
        if self.memory is not None:
            self.memory[self.rows : self.rows + len(x)] = x
        else:
            self.pending.append(x.float().contiguous())
            if sum(len(p) for p in self.pending) >= self.per_shard:
                self._flush()
        self.rows += len(x)

    def _flush(self) -> None:
        if self.pending:
            assert self.folder is not None
            self.shards.append(write_shard(self.folder, len(self.shards), torch.cat(self.pending)))
            self.pending = []

    def finish(self, width: int) -> torch.Tensor | ShardedActivations:
        if self.shape is None:
            return torch.zeros(0, 0, width)
        if self.memory is not None:
            return self.memory[: self.rows]
        self._flush()
        assert self.folder is not None
        return ShardedActivations(self.folder, self.shards, (self.rows, *self.shape), cleanup=True)


@torch.no_grad()
def compute_activations(
    loaded,
    dataset,
    block: int,
    *,
    batch_size: int = 64,
    on_undecodable: str = "skip",
    progress: bool = True,
    memory_budget: int | None = None,
    spill_folder: str | Path | None = None,
    workers: int | None = None,
    fast_decode: bool = False,
) -> CachedActivations:
    """Run the image tower up to `block` over a dataset, and the rest once for the unpatched embeddings.

    Images are decoded in `workers` threads while the model runs, and dropped once preprocessed.

    Args:
        loaded: a `LoadedModel`.
        dataset: an `ImageDataset`.
        block: the hook block.
        batch_size: images per forward pass.
        on_undecodable: "skip" or "fail" (see `steerpatch.data.iter_image_batches`).
        progress: show progress bars on stderr.
        memory_budget: bytes of activations to hold in memory; beyond it they are written as shards to
            `spill_folder` (None: no limit).
        spill_folder: an existing folder for the shards.
        workers: image decoding threads (None: `steerpatch.data.default_workers()`).
        fast_decode: decode JPEGs at reduced scale for the model's input size (`steerpatch.pixels.draft`):
            faster, pixels approximate.

    Returns:
        The activations, in dataset order, without the unreadable images.

    Raises:
        DatasetError: an unreadable image under `on_undecodable="fail"`.
        OutputError: the spill folder cannot be written or lacks space.
    """
    from steerpatch.data import iter_image_batches

    budget = memory_budget if memory_budget is not None else 1 << 62
    sink = _HiddenSink(len(dataset), budget, Path(spill_folder) if spill_folder is not None else None, batch_size)
    ids: list[str] = []
    features, bad = [], []
    bar = tqdm(total=len(dataset), desc=f"caching block {block}", unit="img", disable=not progress)
    for batch in iter_image_batches(
        dataset, loaded.preprocess, batch_size=batch_size, workers=workers, on_undecodable=on_undecodable,
        fast_decode=loaded.image_size if fast_decode else None,
    ):
        bad.extend(batch.undecodable)
        if batch.pixels is not None:
            x = encode_prefix(loaded.model, batch.pixels, block)
            sink.add(x)
            features.append(encode_suffix(loaded.model, x, block))
            ids.extend(item.id for item in batch.items)
        bar.update(len(batch.items) + len(batch.undecodable))
    bar.close()
    return CachedActivations(
        ids=ids,
        hidden=sink.finish(residual_width(loaded)),
        features=torch.cat(features) if features else torch.zeros(0, vision_tower(loaded).output_dim),
        undecodable=bad,
    )
