"""One pass over the dataset the studio browses: predictions, embeddings and cached hook activations.

Browsing by correctness needs every prediction, "nearest images" needs every embedding, and trying
an edit on other instances needs their residual stream at the hook. All three come from one forward
pass at start-up, through the validation activation cache, so validating a patch on the same data
later skips the prefix, and an edit re-runs only the blocks after the hook.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from steerpatch.data import ImageDataset
from steerpatch.models import LoadedModel, ZeroShotHead
from steerpatch.validate import ActivationCache

if TYPE_CHECKING:
    from steerpatch.validate.shards import ShardedActivations

CORRECTNESS = ("all", "wrong", "right")


@dataclass
class DatasetIndex:
    """Predictions, embeddings and (optionally) hook activations for every item of a dataset.

    Attributes:
        dataset: the browsed dataset.
        block: the hook block the activations were taken after.
        labels: true class index per item, (N,).
        probs: clean class probabilities per item, (N, C).
        embeddings: L2-normalized image embeddings, (N, E).
        prefixes: residual stream after `block` per item, (N, T, D): a tensor, or the cache's
            `ShardedActivations` on disk when the dataset's activations exceed its memory budget.
        group_by: the manifest attribute that names an item's group, or None.
    """

    dataset: ImageDataset
    block: int
    labels: torch.Tensor
    probs: torch.Tensor
    embeddings: torch.Tensor
    prefixes: torch.Tensor | ShardedActivations
    group_by: str | None

    @property
    def predicted(self) -> torch.Tensor:
        return self.probs.argmax(dim=1)

    @property
    def correct(self) -> torch.Tensor:
        return self.predicted == self.labels

    def group_of(self, index: int) -> str | None:
        """The item's value of the group attribute, as a string (None when it has none)."""
        if self.group_by is None:
            return None
        value = self.dataset[index].attributes.get(self.group_by)
        return None if value is None else str(value)

    def group_values(self) -> list[str]:
        """The distinct values of the group attribute, sorted."""
        return sorted({g for i in range(len(self.dataset)) if (g := self.group_of(i)) is not None})

    def rows(
        self, *, label: str | None = None, group: str | None = None, correctness: str = "all"
    ) -> list[int]:
        """Item indices matching the filters, misclassified first, then by dataset order.

        Args:
            label: keep only this true class (None keeps all).
            group: keep only this value of the group attribute (None keeps all).
            correctness: "all", "wrong" or "right".

        Returns:
            The matching item indices.
        """
        correct = self.correct.tolist()
        keep = []
        for i, item in enumerate(self.dataset.items):
            if label is not None and item.label != label:
                continue
            if group is not None and self.group_of(i) != group:
                continue
            if (correctness == "wrong" and correct[i]) or (correctness == "right" and not correct[i]):
                continue
            keep.append(i)
        return sorted(keep, key=lambda i: (correct[i], i))

    def prefix(self, indices: list[int]) -> torch.Tensor:
        """Hook activations for some items, (len(indices), T, D)."""
        return self.prefixes[indices]

    def nearest(self, embedding: torch.Tensor, candidates: list[int], k: int) -> list[int]:
        """The `k` candidates whose embeddings have the highest cosine similarity to `embedding`."""
        if not candidates:
            return []
        sims = self.embeddings[candidates] @ embedding
        order = torch.argsort(sims, descending=True)[:k].tolist()
        return [candidates[j] for j in order]

    def describe(self, index: int, classes: list[str]) -> dict[str, Any]:
        """JSON-ready summary of one item for the browser."""
        item = self.dataset[index]
        pred = int(self.predicted[index])
        return {
            "key": f"d{index}",
            "index": index,
            "id": item.id,
            "label": item.label,
            "predicted": classes[pred],
            "confidence": round(float(self.probs[index, pred]), 4),
            "correct": bool(self.correct[index]),
            "group": self.group_of(index),
        }


def choose_group_attribute(dataset: ImageDataset, preferred: str | None = "shortcut") -> str | None:
    """The manifest attribute to group by: `preferred` when items carry it, else None."""
    if preferred and any(preferred in item.attributes for item in dataset.items):
        return preferred
    return None


def build_index(
    loaded: LoadedModel,
    head: ZeroShotHead,
    dataset: ImageDataset,
    block: int,
    *,
    cache: ActivationCache,
    group_by: str | None = "shortcut",
) -> DatasetIndex:
    """Run the model once over the dataset (through the validation activation cache) and index it.

    Sharing `cache` with validation means validating a patch on this dataset later skips the prefix.
    Images that cannot be decoded are left out of the index.

    Args:
        loaded: the model.
        head: zero-shot head over the dataset's classes.
        dataset: the images to index.
        block: the hook block of the SAE.
        cache: the activation cache to read from or fill.
        group_by: preferred group attribute (ignored when items do not carry it).

    Returns:
        The index; its `dataset` holds the decodable items only.
    """
    cached = cache.get(loaded, dataset, block, progress=True)
    if cached.undecodable:
        dataset = dataset.subset(cached.ids)
    class_index = {c: i for i, c in enumerate(head.classes)}
    labels = torch.tensor([class_index[item.label] for item in dataset.items], dtype=torch.long)
    with torch.inference_mode():
        probs = head.logits(cached.features).softmax(dim=-1)
        embeddings = torch.nn.functional.normalize(cached.features, dim=-1)
    return DatasetIndex(
        dataset=dataset,
        block=block,
        labels=labels,
        probs=probs,
        embeddings=embeddings,
        prefixes=cached.hidden,
        group_by=choose_group_attribute(dataset, group_by),
    )
