"""Scorers: how a `Validator` turns a dataset into per-image results, on this machine or elsewhere.

A `Validator` resolves and checks the inputs, and builds and judges the report; a scorer owns the
per-image work in between: reading the images into whatever it scores from (`activations`) and
scoring the patch on them at one strength (`score`). `LocalScorer` runs the model here over cached
hook activations; `steerpatch.spark.SparkScorer` runs compiled graphs on Spark executors.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from steerpatch.errors import DatasetError

if TYPE_CHECKING:  # pragma: no cover
    from steerpatch.validate.metrics import ImageResults
    from steerpatch.validate.policy import DataPolicy

MISSING_GROUP = "none"  # as `ImageDataset.groups` counts items without the attribute


class Scorer(Protocol):
    """The per-image work of a validation, called by `Validator` with itself as the first argument.

    A scorer reads from the validator what it was set up with (`model`, `sae`, `head`, `classes`,
    `group_by`, `policy`, `cache`, `batch_size`, `progress`, `workers`, `fast_decode`, `fingerprint(dataset)`).

    Attributes:
        engine: the engine name a report scored this way records ("local", "spark").
    """

    engine: str

    def session(self, validator: Any, patch: Any, strengths: Sequence[float]) -> AbstractContextManager[Any]:
        """A context around one patch's validation, for work done once per patch (e.g. compiling it).

        Args:
            validator: the validator running.
            patch: the patch about to be validated.
            strengths: the dose-response strengths it will be scored at besides 1.0.
        """
        ...

    def activations(self, validator: Any, dataset: Any, block: int) -> Any:
        """What `score` reads for a dataset, checked against the data policy.

        It has `ids`, `undecodable`, and `features` (the unpatched image embeddings, rows as `ids`,
        which the ceiling baseline re-fits on).
        """
        ...

    def score(
        self, validator: Any, patch: Any, dataset: Any, cached: Any, *, strength: float = 1.0,
        grouped: bool = False,
    ) -> ImageResults:
        """The per-image results of the patch at `strength` on `dataset` (groups filled when `grouped`)."""
        ...

    def score_patches(self, validator: Any, patches: Sequence[Any], dataset: Any, cached: Any) -> list[ImageResults]:
        """The results of other patches at strength 1 on a dataset already read (the floor's random patches).

        Rows are in the order of `cached.ids`; groups are not filled.
        """
        ...


def group_values(dataset, ids: Sequence[str], group_by: str | None) -> list[str] | None:
    """The value of attribute `group_by` for each id, as text.

    Raises:
        DatasetError: if no item of the dataset has that attribute (naming the ones it has).
    """
    if group_by is None:
        return None
    by_id = {item.id: item for item in dataset.items}
    if not any(group_by in item.attributes for item in dataset.items):
        known = sorted({k for item in dataset.items for k in item.attributes})
        raise DatasetError(
            f"no image in '{dataset.root}' has attribute {group_by!r} to group by; "
            f"its manifest attributes are: {', '.join(known) or 'none (no manifest.jsonl)'}"
        )
    return [str(by_id[i].attributes.get(group_by, MISSING_GROUP)) for i in ids]


def _labels(dataset, ids: Sequence[str], classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    by_id = {item.id: item.label for item in dataset.items}
    return np.asarray([index[by_id[i]] for i in ids], dtype=np.int64)


def check_decoded(dataset, ids: Sequence[str], undecodable: Sequence[tuple[str, str]], data_policy: DataPolicy) -> None:
    """Refuse a dataset whose undecodable images exceed the policy's rate, or that has none decoded.

    Raises:
        DatasetError: naming the first unreadable image and the rate, or the folder.
    """
    bad = len(undecodable)
    if bad and bad / len(dataset) > data_policy.max_undecodable_rate:
        raise DatasetError(
            f"{bad} of {len(dataset)} images in '{dataset.root}' cannot be decoded (first: "
            f"{undecodable[0][0]}), above the policy's max_undecodable_rate "
            f"{data_policy.max_undecodable_rate}; fix or remove them"
        )
    if not ids:
        raise DatasetError(f"no image of '{dataset.root}' could be decoded; check the files")


class LocalScorer:
    """Scores on this machine: hook activations from the validator's cache, the model's tail per strength."""

    engine = "local"

    def session(self, validator: Any, patch: Any, strengths: Sequence[float]) -> AbstractContextManager[Any]:
        """Nothing to prepare: the activation cache is filled on first use."""
        return nullcontext()

    def activations(self, validator: Any, dataset: Any, block: int) -> Any:
        """Hook activations of a dataset, from the cache, checked against the undecodable-image policy.

        Raises:
            DatasetError: undecodable images beyond the policy, or none decodable.
        """
        cached = validator.cache.get(
            validator.model, dataset, block, batch_size=validator.batch_size,
            on_undecodable=validator.policy.data.on_undecodable, progress=validator.progress,
            dataset_fingerprint=validator.fingerprint(dataset), workers=validator.workers,
            fast_decode=validator.fast_decode,
        )
        check_decoded(dataset, cached.ids, cached.undecodable, validator.policy.data)
        return cached

    def score(
        self, validator: Any, patch: Any, dataset: Any, cached: Any, *, strength: float = 1.0,
        grouped: bool = False,
    ) -> ImageResults:
        """The patch's results from the cached activations, running the model after the hook."""
        from steerpatch.validate.candidate import score_patch

        return score_patch(
            validator.model.model, validator.head, validator.sae, patch, cached,
            labels=_labels(dataset, cached.ids, validator.classes),
            groups=group_values(dataset, cached.ids, validator.group_by) if grouped else None,
            strength=strength, batch_size=validator.batch_size, progress=validator.progress,
        )

    def score_patches(self, validator: Any, patches: Sequence[Any], dataset: Any, cached: Any) -> list[ImageResults]:
        """Each patch's results from the cached activations, one suffix run per patch."""
        from steerpatch.validate.candidate import score_patch

        labels = _labels(dataset, cached.ids, validator.classes)
        return [
            score_patch(validator.model.model, validator.head, validator.sae, patch, cached, labels=labels,
                        batch_size=validator.batch_size)
            for patch in patches
        ]
