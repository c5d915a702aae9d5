"""Zero-shot shape accuracy of a model, overall and per group, on the concept world or any dataset."""

from __future__ import annotations

from typing import Any

from steerpatch.models.loading import LoadedModel
from steerpatch.models.zeroshot import build_zero_shot_head, classify_dataset, group_accuracy


def evaluate_world(
    loaded: LoadedModel,
    *,
    split: str = "test",
    n: int | None = None,
    seed: int = 0,
    group_by: str = "shortcut",
    templates: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Zero-shot accuracy on a concept-world split rendered in memory.

    Args:
        loaded: the model.
        split: world split.
        n: samples (default: the split's default size).
        seed: world seed.
        group_by: sample attribute to group by (e.g. `shortcut`, `background`).
        templates: prompt templates (default `DEFAULT_TEMPLATES`).
        progress: show progress bars.

    Returns:
        `{"accuracy", "n", "groups": {g: {"accuracy", "n"}}, "group_by", "data",
        "class_accuracy_by_group": {g: {class: accuracy}}}`.
    """
    from steerpatch.world import SHAPES, iter_samples

    samples = list(iter_samples(split, n, seed))
    known = sorted(samples[0].attributes()) if samples else []
    if samples and group_by not in known:
        from steerpatch.errors import DatasetError

        raise DatasetError(
            f"unknown --group-by '{group_by}'; concept-world attributes are: {', '.join(known)}"
        )
    head = build_zero_shot_head(loaded, list(SHAPES), templates)
    # rendered batch by batch in the decoding threads, never all at once
    preds = classify_dataset(loaded, lambda sample: sample.render(), head, items=samples, progress=progress,
                             desc=f"eval {split}")
    groups = [str(s.attributes()[group_by]) for s in samples]
    labels = [s.label for s in samples]
    result = group_accuracy(preds, labels, groups)
    result["group_by"] = group_by
    result["data"] = f"world:{split}:n={len(samples)}:seed={seed}"
    result["class_accuracy_by_group"] = _class_accuracy_by_group(preds, labels, groups)
    return result


def _class_accuracy_by_group(
    preds: list[str], labels: list[str], groups: list[str]
) -> dict[str, dict[str, float]]:
    # a group's mean can hide one class the model never learned (a star without water, say)
    hits: dict[str, dict[str, list[int]]] = {}
    for pred, label, group in zip(preds, labels, groups, strict=True):
        row = hits.setdefault(group, {}).setdefault(label, [0, 0])
        row[0] += int(pred == label)
        row[1] += 1
    return {
        group: {label: right / n for label, (right, n) in sorted(classes.items())}
        for group, classes in sorted(hits.items())
    }


def evaluate_dataset(
    loaded: LoadedModel,
    dataset: Any,
    *,
    group_by: str | None = "shortcut",
    templates: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Zero-shot accuracy on an `ImageDataset` (labels are its class folders).

    Items without the `group_by` attribute fall in group `none` (no cue recorded). Images are streamed
    (`classify_dataset`), so memory does not grow with the dataset.
    """
    head = build_zero_shot_head(loaded, dataset.classes, templates)
    preds = classify_dataset(loaded, dataset, head, progress=progress, desc="eval")
    groups = None
    if group_by:
        groups = [str(item.attributes.get(group_by, "none")) for item in dataset.items]
    result = group_accuracy(preds, [item.label for item in dataset.items], groups)
    result["group_by"] = group_by
    result["data"] = str(dataset.root)
    return result
