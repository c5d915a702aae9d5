"""The dataset format steerpatch reads: an ImageFolder tree, optionally with a JSON-lines manifest.

Layout::

    root/
      <class>/<file>.png|.jpg|...     one folder per class; the folder name is the label
      manifest.jsonl                  optional; one row per image:
                                      {"path": "<class>/<file>.png", "label": "<class>", "attributes": {...}}

Without a manifest every image under a class folder is an item with no attributes. With one,
exactly the rows of the manifest are the items, in file order; `label` defaults to the first path
component and `attributes` to `{}`. Item ids are paths relative to the root, in POSIX form.
Attributes are free-form JSON (the concept world writes shape, colour, size, position,
background, watermark, shortcut, watermark_shortcut, caption, seed, split, index); `group_by`
options elsewhere name one of them.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerpatch.errors import DatasetError
from steerpatch.file_hashes import FILE_HASHES as FILE_HASHES  # re-exported: callers import them from here
from steerpatch.file_hashes import FileHashes

MANIFEST = "manifest.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Item:
    """One image of a dataset."""

    id: str  # path relative to the root, POSIX separators
    path: Path
    label: str
    attributes: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


class ImageDataset:
    """Items of an image folder (see module doc for the layout); images are read on demand."""

    def __init__(self, root: Path, items: list[Item], classes: list[str] | None = None) -> None:
        self.root = Path(root)
        self.items = list(items)
        self.classes = sorted(classes if classes is not None else {item.label for item in self.items})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Item:
        return self.items[index]

    def __iter__(self):
        return iter(self.items)

    def __repr__(self) -> str:
        return f"ImageDataset(root='{self.root}', items={len(self)}, classes={self.classes})"

    def load_image(self, item_or_index: Item | int, *, fast_decode: int | None = None):
        """Open one image as RGB.

        Args:
            item_or_index: the item, or its position.
            fast_decode: a model input size: decode a JPEG at reduced scale for it (`steerpatch.pixels.draft`;
                pixels approximate). None decodes exactly.

        Raises:
            DatasetError: the file is missing or cannot be decoded as an image.
        """
        from PIL import Image, UnidentifiedImageError

        item = self.items[item_or_index] if isinstance(item_or_index, int) else item_or_index
        try:
            with Image.open(item.path) as img:
                if fast_decode is not None:
                    from steerpatch.pixels import draft

                    draft(img, fast_decode)
                img.load()
                # convert() of an RGB image is a full copy: skip it (a 1024x768 photo is 2.4 MB)
                return img if img.mode == "RGB" else img.convert("RGB")
        except FileNotFoundError as error:
            raise DatasetError(
                f"image '{item.path}' (item '{item.id}') does not exist; restore it or remove its manifest row"
            ) from error
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise DatasetError(
                f"image '{item.path}' (item '{item.id}') cannot be decoded; replace it with a valid image "
                "or remove its manifest row"
            ) from error

    def fingerprint(self, *, hashes: FileHashes | None = None) -> str:
        """SHA-256 over the sorted (id, label, file SHA-256) of every item.

        Args:
            hashes: a `FileHashes` memo: files whose (path, size, mtime) it knows are not read again.
        """
        from steerpatch.io import sha256_file

        digest = hashlib.sha256()
        for item in sorted(self.items, key=lambda it: it.id):
            sha = hashes.sha256(item.path) if hashes is not None else sha256_file(item.path)
            digest.update(f"{item.id}\t{item.label}\t{sha}\n".encode())
        if hashes is not None:
            hashes.save()
        return digest.hexdigest()

    def filter(self, **attrs: Any) -> ImageDataset:
        """Items whose attributes (or `label`) equal every given value; classes are kept.

        Example:
            >>> data.filter(background="water", shortcut="conflicting")  # doctest: +SKIP
        """

        def keep(item: Item) -> bool:
            for key, value in attrs.items():
                actual = item.label if key == "label" else item.attributes.get(key)
                if actual != value:
                    return False
            return True

        return ImageDataset(self.root, [it for it in self.items if keep(it)], self.classes)

    def subset(self, ids: Iterable[str]) -> ImageDataset:
        """Items with the given ids, in the order given.

        Raises:
            DatasetError: an id is not in the dataset.
        """
        by_id = {item.id: item for item in self.items}
        wanted = list(ids)
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise DatasetError(
                f"ids not in dataset '{self.root}': {', '.join(missing[:5])}"
                + (f" (+{len(missing) - 5} more)" if len(missing) > 5 else "")
                + "; use ids as listed by the dataset (paths relative to its root)"
            )
        return ImageDataset(self.root, [by_id[i] for i in wanted], self.classes)

    def groups(self, attribute: str) -> dict[str, int]:
        """Item count per value of `attribute` (items without it count as `none`)."""
        counts: dict[str, int] = {}
        for item in self.items:
            key = str(item.attributes.get(attribute, "none"))
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))


def _scan_folders(root: Path) -> list[Item]:
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                rel = path.relative_to(root).as_posix()
                items.append(Item(id=rel, path=path, label=folder.name, attributes={}))
    return items


def _read_manifest(root: Path, manifest: Path) -> list[Item]:
    items: list[Item] = []
    problems: list[str] = []
    seen: set[str] = set()
    for lineno, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"line {lineno}: not JSON ({error.msg})")
            continue
        if not isinstance(row, dict) or not isinstance(row.get("path"), str):
            problems.append(f"line {lineno}: expected an object with a string 'path'")
            continue
        rel = Path(row["path"])
        if rel.is_absolute() or ".." in rel.parts:
            problems.append(f"line {lineno}: path '{row['path']}' must be relative to the dataset root")
            continue
        rel_id = rel.as_posix()
        path = root / rel
        if not path.is_file():
            problems.append(f"line {lineno}: image '{path}' does not exist")
            continue
        if rel_id in seen:
            problems.append(f"line {lineno}: duplicate path '{rel_id}'")
            continue
        seen.add(rel_id)
        label = row.get("label", rel.parts[0] if len(rel.parts) > 1 else None)
        if not isinstance(label, str) or not label:
            problems.append(f"line {lineno}: no label (give 'label' or put the image in a class folder)")
            continue
        attributes = row.get("attributes", {})
        if not isinstance(attributes, dict):
            problems.append(f"line {lineno}: 'attributes' must be an object")
            continue
        items.append(Item(id=rel_id, path=path, label=label, attributes=attributes))
    if problems:
        head = problems[0] if len(problems) == 1 else f"{problems[0]} (and {len(problems) - 1} more problems)"
        raise DatasetError(f"manifest '{manifest}': {head}; fix or remove those rows")
    return items


def load_dataset(root: str | Path, *, verify: bool = False) -> ImageDataset:
    """Open an image-folder dataset (see the module doc for the layout).

    Args:
        root: the dataset folder.
        verify: also decode every image now, so a broken file fails here instead of mid-run.

    Returns:
        The dataset; classes are the sorted class-folder names (plus any manifest label).

    Raises:
        DatasetError: missing folder, no images, a manifest row pointing at a missing file,
            an undecodable image (with `verify`), or a malformed manifest.

    Example:
        >>> data = load_dataset("world/test")  # doctest: +SKIP
        >>> data.filter(shortcut="conflicting")  # doctest: +SKIP
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(
            f"dataset folder '{root}' does not exist; create it with `steerpatch world generate {root} --split test` "
            "or point at an image folder (one sub-folder per class)"
        )
    manifest = root / MANIFEST
    items = _read_manifest(root, manifest) if manifest.is_file() else _scan_folders(root)
    if not items:
        raise DatasetError(
            f"dataset folder '{root}' holds no images; expected '{root}/<class>/<image>.png' files"
        )
    folder_classes = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    classes = sorted(folder_classes | {item.label for item in items})
    dataset = ImageDataset(root, items, classes)
    if verify:
        for item in items:
            dataset.load_image(item)
    return dataset


@dataclass
class ImageBatch:
    """One batch of a streamed dataset.

    Attributes:
        items: the items that decoded, in dataset order.
        pixels: their transformed images stacked, (len(items), ...), or None when none decoded.
        undecodable: (id, reason) of the batch's items that could not be read.
    """

    items: list[Item]
    pixels: Any
    undecodable: list[tuple[str, str]]


def default_workers() -> int:
    """Decoding threads when none are asked for: the cores, at most four."""
    return max(1, min(4, os.cpu_count() or 1))


def _decode_batch(load: Callable[[Any], Any], items: list, transform: Callable, on_undecodable: str) -> ImageBatch:
    import torch

    kept, pixels, bad = [], [], []
    for item in items:
        try:
            image = load(item)
        except DatasetError as error:
            if on_undecodable == "fail":
                raise
            bad.append((getattr(item, "id", str(item)), str(error)))
            continue
        if image.mode != "RGB":
            image = image.convert("RGB")
        pixels.append(transform(image))
        del image  # the decoded image dies here; only its transformed tensor lives on
        kept.append(item)
    return ImageBatch(kept, torch.stack(pixels) if pixels else None, bad)


def iter_image_batches(
    dataset: ImageDataset | Callable[[Any], Any],
    transform: Callable[[Any], Any],
    *,
    items: Iterable[Any] | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    on_undecodable: str = "skip",
    fast_decode: int | None = None,
) -> Iterator[ImageBatch]:
    """Decode, transform and stack a dataset's images batch by batch, in dataset order.

    Batches are decoded by `workers` threads (PIL releases the GIL while decoding and resizing) while
    the caller works on the previous one. A decoded image lives only between its decode and its
    `transform`, so at most `workers` are alive at once, and at most `workers + 1` batches of
    transformed pixels wait: memory does not grow with the dataset.

    Args:
        dataset: the `ImageDataset` to read, or a function key -> PIL image (then `items` are its keys).
        transform: RGB PIL image -> tensor (a model's preprocess).
        items: the items (or keys) to read; default: all items of the dataset.
        batch_size: items per batch.
        workers: decoding threads; 0 decodes in the calling thread; None uses `default_workers()`.
        on_undecodable: "skip" reports unreadable images in `ImageBatch.undecodable`; "fail" raises.
        fast_decode: the model's input size, to decode an `ImageDataset`'s JPEGs at reduced scale for it
            (see `ImageDataset.load_image`; pixels approximate); None (the default) decodes exactly.

    Yields:
        `ImageBatch` per `batch_size` items (fewer pixels where images did not decode).

    Raises:
        DatasetError: the first unreadable image, in dataset order, under `on_undecodable="fail"`.

    Example:
        >>> for batch in iter_image_batches(data, loaded.preprocess, batch_size=64):  # doctest: +SKIP
        ...     features = loaded.model.encode_image(batch.pixels)
    """
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial

    load = dataset.load_image if isinstance(dataset, ImageDataset) else dataset
    if fast_decode is not None:  # only then: the default path calls load_image exactly as before
        if not isinstance(dataset, ImageDataset):
            raise TypeError("fast_decode needs an ImageDataset; a loading function decodes as it likes")
        load = partial(dataset.load_image, fast_decode=fast_decode)
    chosen = list(dataset.items if items is None and isinstance(dataset, ImageDataset) else items or [])
    chunks = (chosen[start : start + batch_size] for start in range(0, len(chosen), batch_size))
    workers = default_workers() if workers is None else workers
    if workers <= 0:
        for chunk in chunks:
            yield _decode_batch(load, chunk, transform, on_undecodable)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="steerpatch-decode")
    pending: deque = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(_decode_batch, load, chunk, transform, on_undecodable))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
