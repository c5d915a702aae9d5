"""Hook-block activations of a whole dataset, computed once per (model, dataset, block) and reused.

Validating a candidate patch only needs the residual stream at the hook and the blocks after it; the
blocks before the hook do not depend on the patch. Caching their output makes each further candidate
cost a fraction of a full forward pass (see bench/bench_validate.py).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from steerpatch.attribute.forward import encode_prefix, encode_suffix
from steerpatch.errors import DatasetError

CACHE_FORMAT = 1


@dataclass
class CachedActivations:
    """One dataset's activations at one hook block.

    Attributes:
        ids: ids of the images that decoded, in dataset order.
        hidden: residual stream after the hook block, (N, tokens, width), float32.
        features: unpatched image embeddings, (N, embed_dim).
        undecodable: (id, reason) for every image that could not be read.
    """

    ids: list[str]
    hidden: torch.Tensor
    features: torch.Tensor
    undecodable: list[tuple[str, str]]


def cache_key(model_fingerprint: str, dataset_fingerprint: str, block: int) -> str:
    """The cache key: which weights, which images, which block."""
    return f"{model_fingerprint[:16]}-{dataset_fingerprint[:16]}-b{block}"


def read_images(dataset, *, on_undecodable: str = "skip", progress: bool = True, desc: str = "reading"):
    """Decode every image of a dataset, collecting the ones that cannot be read.

    Args:
        dataset: an `ImageDataset`.
        on_undecodable: "skip" records unreadable images and goes on; "fail" raises at the first.
        progress: show a progress bar on stderr.
        desc: the progress bar's label.

    Returns:
        (items that decoded, their PIL images, [(id, reason)] of those that did not).

    Raises:
        DatasetError: for the first unreadable image when `on_undecodable` is "fail".
    """
    items, images, bad = [], [], []
    for item in tqdm(dataset.items, desc=desc, unit="img", disable=not progress):
        try:
            images.append(dataset.load_image(item))
        except DatasetError as error:
            if on_undecodable == "fail":
                raise
            bad.append((item.id, str(error)))
            continue
        items.append(item)
    return items, images, bad


class ActivationCache:
    """Hook activations keyed by (model fingerprint, dataset fingerprint, block).

    Entries live in memory (the most recent `max_entries`) and, when `directory` is given, also as
    safetensors files there, so a later process validating against the same data skips the prefix too.

    Example:
        >>> cache = ActivationCache()  # doctest: +SKIP
        >>> first = cache.get(loaded, data, block=3)   # runs blocks 0..3 over every image
        >>> again = cache.get(loaded, data, block=3)   # no model call
    """

    def __init__(self, directory: str | Path | None = None, *, max_entries: int = 4) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.max_entries = max_entries
        self._entries: OrderedDict[str, CachedActivations] = OrderedDict()
        self.misses = 0  # how many times the prefix was computed; tests and benchmarks read it

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
    ) -> CachedActivations:
        """The activations of `dataset` at `block`, computing them on a miss.

        Args:
            loaded: a `LoadedModel`.
            dataset: an `ImageDataset`.
            block: the hook block.
            batch_size: images per forward pass.
            on_undecodable: "skip" or "fail" (see `read_images`).
            progress: show progress bars on stderr.
            dataset_fingerprint: `dataset.fingerprint()` when the caller already has it (it reads every file).

        Returns:
            The cached activations.

        Raises:
            DatasetError: an unreadable image under `on_undecodable="fail"`.
        """
        key = cache_key(loaded.fingerprint, dataset_fingerprint or dataset.fingerprint(), block)
        entry = self._entries.get(key)
        if entry is None and self.directory is not None:
            entry = self._read(key)
        if entry is None:
            self.misses += 1
            entry = compute_activations(
                loaded, dataset, block, batch_size=batch_size, on_undecodable=on_undecodable, progress=progress
            )
            if self.directory is not None:
                self._write(key, entry)
        if on_undecodable == "fail" and entry.undecodable:
            item_id, reason = entry.undecodable[0]
            raise DatasetError(reason)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return entry

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"{key}.safetensors"

    def _read(self, key: str) -> CachedActivations | None:
        from safetensors import safe_open

        path = self._path(key)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            if meta.get("format") != str(CACHE_FORMAT):
                return None
            info = json.loads(meta["index"])
            return CachedActivations(
                ids=info["ids"],
                hidden=handle.get_tensor("hidden"),
                features=handle.get_tensor("features"),
                undecodable=[tuple(x) for x in info["undecodable"]],
            )

    def _write(self, key: str, entry: CachedActivations) -> None:
        from safetensors.torch import save_file

        from steerpatch.io import atomic_file

        index = json.dumps({"ids": entry.ids, "undecodable": entry.undecodable})
        with atomic_file(self._path(key)) as tmp:
            save_file(
                {"hidden": entry.hidden.contiguous(), "features": entry.features.contiguous()},
                str(tmp),
                metadata={"format": str(CACHE_FORMAT), "index": index},
            )


@torch.no_grad()
def compute_activations(
    loaded, dataset, block: int, *, batch_size: int = 64, on_undecodable: str = "skip", progress: bool = True
) -> CachedActivations:
    """Run the image tower up to `block` over a dataset, and the rest once for the unpatched embeddings.

    Args:
        loaded: a `LoadedModel`.
        dataset: an `ImageDataset`.
        block: the hook block.
        batch_size: images per forward pass.
        on_undecodable: "skip" or "fail" (see `read_images`).
        progress: show progress bars on stderr.

    Returns:
        The activations, in dataset order, without the unreadable images.

    Raises:
        DatasetError: an unreadable image under `on_undecodable="fail"`.
    """
    from steerpatch.models import preprocess_batch

    items, images, bad = read_images(dataset, on_undecodable=on_undecodable, progress=progress)
    hidden, features = [], []
    bar = tqdm(total=len(images), desc=f"caching block {block}", unit="img", disable=not progress)
    for start in range(0, len(images), batch_size):
        pixels = preprocess_batch(loaded, images[start : start + batch_size])
        x = encode_prefix(loaded.model, pixels, block)
        hidden.append(x)
        features.append(encode_suffix(loaded.model, x, block))
        bar.update(len(pixels))
    bar.close()
    width = loaded.model.visual.transformer.width
    return CachedActivations(
        ids=[item.id for item in items],
        hidden=torch.cat(hidden) if hidden else torch.zeros(0, 0, width),
        features=torch.cat(features) if features else torch.zeros(0, loaded.model.visual.output_dim),
        undecodable=bad,
    )
