"""What a latent stands for, read from the SAE's stored statistics: its top images and its groups.

The top-activating held-out images are the exemplars a person looks at; the groups where the latent
fires far more often than on average ("background=water: 0.97, x3.9") say the same in words.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


class GroupLift(BaseModel):
    """How much more often a latent fires inside a group than overall."""

    model_config = ConfigDict(extra="forbid")

    group: str  # "attribute=value"
    rate: float  # firing rate inside the group
    lift: float  # rate / overall firing rate


def top_groups(stats, latent: int, *, k: int = 3, min_size: int = 5) -> list[GroupLift]:
    """The groups where a latent fires most above its overall rate.

    Args:
        stats: `LatentStats`.
        latent: the latent index.
        k: how many groups to return.
        min_size: ignore groups with fewer images than this.

    Returns:
        Up to k groups, highest lift first (empty when the latent never fires).
    """
    overall = float(stats.firing_rate[latent])
    if overall <= 0:
        return []
    rows = [
        GroupLift(group=g, rate=float(v[latent]), lift=float(v[latent]) / overall)
        for g, v in stats.firing_rate_by_group.items()
        if stats.group_sizes.get(g, min_size) >= min_size
    ]
    return sorted(rows, key=lambda r: (-r.lift, r.group))[:k]


def exemplar_ids(stats, latent: int, k: int = 8) -> list[str]:
    """Item ids of a latent's top-activating images, strongest first."""
    return list(stats.top_images.get(latent, []))[:k]


def exemplar_attributes(dataset, ids: list[str], *, max_values: int = 32) -> dict[str, dict[str, int]]:
    """Counts of each attribute value among the exemplars, for attributes that split the dataset in groups.

    Attributes with one value across the dataset (a seed) or too many (captions, indices) say nothing
    about a latent and are left out.

    Args:
        dataset: the `ImageDataset` the ids come from.
        ids: exemplar item ids.
        max_values: the most distinct values an attribute may have to count as a grouping.

    Returns:
        attribute -> value -> count, most common value first; ids missing from the dataset are skipped.
    """
    seen: dict[str, set[str]] = {}
    for item in dataset.items:
        for key, value in item.attributes.items():
            if isinstance(value, (str, bool, int)):
                seen.setdefault(key, set()).add(str(value))
    grouping = {k for k, values in seen.items() if 1 < len(values) <= max_values}
    by_id = {item.id: item for item in dataset.items}
    counts: dict[str, Counter] = {}
    for item_id in ids:
        if item_id not in by_id:
            continue
        for key, value in by_id[item_id].attributes.items():
            if key in grouping:
                counts.setdefault(key, Counter())[str(value)] += 1
    return {k: dict(c.most_common()) for k, c in sorted(counts.items())}


_WORLD_ID = re.compile(r"[a-z]+/(train|val|test)-(\d{5})\.png")


class WorldExemplars:
    """The concept-world items a set of statistics refers to, rendered on demand (no files).

    The statistics shipped with the default SAE were computed on the generated world's `val` split
    (seed 0, `steerpatch/zoo/concept-clip-sae/README.md`); the world is deterministic, so the same
    ids render the same images. Duck-types the parts of `ImageDataset` the exemplar code reads.
    """

    def __init__(self, split: str, n: int, seed: int = 0) -> None:
        from steerpatch.data import Item
        from steerpatch.world.sampling import make_sample

        self._samples = {}
        self.items = []
        for index in range(n):
            sample = make_sample(split, seed, index)
            item_id = f"{sample.shape}/{split}-{index:05d}.png"
            self._samples[item_id] = sample
            self.items.append(Item(item_id, Path(item_id), sample.label, sample.attributes()))

    def load_image(self, item: Any) -> Any:
        """Render one item's image (PIL RGB)."""
        return self._samples[item.id].render()


def exemplar_source(stats: Any, dataset_root: str | None = None) -> Any:
    """Where the statistics' exemplar images can be read: the recorded folder, else the concept world.

    Args:
        stats: `LatentStats`.
        dataset_root: the folder the statistics were computed on, as recorded (may be gone).

    Returns:
        An `ImageDataset`, a `WorldExemplars`, or None when the images are nowhere to be had.
    """
    if dataset_root and Path(dataset_root, "manifest.jsonl").is_file():
        from steerpatch.data import load_dataset

        return load_dataset(dataset_root)
    ids = {i for values in stats.top_images.values() for i in values}
    matches = [_WORLD_ID.fullmatch(i) for i in ids]
    if not ids or not all(matches):
        return None
    splits = {m.group(1) for m in matches if m}
    if len(splits) != 1:
        return None
    n = sum(stats.class_sizes.values()) if getattr(stats, "class_sizes", None) else 0
    n = max(n, 1 + max(int(m.group(2)) for m in matches if m))
    return WorldExemplars(splits.pop(), n)


def exemplar_montage(dataset, ids: list[str], path: str | Path, *, tile: int = 96) -> Path | None:
    """Write the exemplar images side by side as one PNG; None when none of the ids is in the dataset."""
    import io

    from PIL import Image

    from steerpatch.io import atomic_write_bytes

    by_id = {item.id: item for item in dataset.items}
    images: list[Any] = [dataset.load_image(by_id[i]) for i in ids if i in by_id]
    if not images:
        return None
    sheet = Image.new("RGB", (tile * len(images), tile), "white")
    for n, image in enumerate(images):
        sheet.paste(image.convert("RGB").resize((tile, tile), Image.Resampling.NEAREST), (n * tile, 0))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return atomic_write_bytes(path, buffer.getvalue())


def selective_latents(stats, group: str, *, min_margin: float = 0.28) -> list[int]:
    """Latents that fire on one attribute value much more than on any other value of that attribute.

    An SAE often splits one concept (a background texture, say) over many latents; suppressing the
    concept means suppressing all of them. A latent is selective for `group` ("attribute=value") when
    its firing rate there exceeds its highest firing rate on every sibling value by `min_margin`.

    Args:
        stats: `LatentStats`.
        group: "attribute=value", e.g. "background=water".
        min_margin: the smallest rate difference that counts as selective.

    Returns:
        Latent indices, most selective first.

    Raises:
        SteerpatchError: when the statistics have no such group or it has no sibling values.
    """
    import torch

    from steerpatch.errors import SteerpatchError

    attribute = group.split("=", 1)[0]
    siblings = [g for g in stats.firing_rate_by_group if g.split("=", 1)[0] == attribute and g != group]
    if group not in stats.firing_rate_by_group or not siblings:
        known = ", ".join(sorted(stats.firing_rate_by_group)[:12])
        raise SteerpatchError(f"no latent statistics for group '{group}' with sibling values; known groups: {known}")
    inside = torch.as_tensor(stats.firing_rate_by_group[group])
    outside = torch.stack([torch.as_tensor(stats.firing_rate_by_group[g]) for g in siblings]).max(dim=0).values
    margin = inside - outside
    order = torch.argsort(margin, descending=True)
    return [int(i) for i in order.tolist() if float(margin[i]) >= min_margin]
