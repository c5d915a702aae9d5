"""Try an edit on other instances before saving it: the nearest images of the same group, and others.

A fix made on one image should carry over to its kind and leave other classes alone. The edit is
applied to cached hook activations of dataset images (only the blocks after the hook re-run) and
the flips right->wrong and wrong->right are counted per set.
"""

from __future__ import annotations

from typing import Any

import torch

from steerpatch.patch import Patch
from steerpatch.studio.workbench import Workbench


def try_on(
    bench: Workbench,
    key: str,
    raw_edits: list[dict[str, Any]],
    tokens: str | None = None,
    *,
    n_near: int = 20,
    n_other: int = 40,
    seed: int = 0,
) -> dict[str, Any]:
    """Apply the edits to other dataset images and count flips.

    "Near" are the `n_near` images closest in embedding to the instance among those with the
    same true class and group (an upload: the predicted class); "other" is a seeded sample of
    `n_other` images of the other classes.

    Returns:
        Per set: n, right_to_wrong, wrong_to_right, accuracy before and after, and the rows.
    """
    inst = bench.instance(key)
    patch = bench.draft(bench.parse_edits(raw_edits), bench.check_tokens(tokens))
    index = bench.index
    own_label = inst.label if inst.label is not None else bench.prediction(inst.probs)["predicted"]
    own_group = index.group_of(inst.index) if inst.index is not None else None
    same, other = [], []
    for i, item in enumerate(bench.dataset.items):
        if i == inst.index:
            continue
        if item.label == own_label:
            if own_group is None or index.group_of(i) == own_group:
                same.append(i)
        else:
            other.append(i)
    near = index.nearest(inst.embedding, same, n_near)
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randperm(len(other), generator=generator)[:n_other].tolist() if other else []
    sample = sorted(other[j] for j in picked)
    return {
        "label": own_label,
        "group": own_group,
        "near": _flips(bench, near, patch),
        "other": _flips(bench, sample, patch),
    }

def _flips(bench: Workbench, indices: list[int], patch: Patch) -> dict[str, Any]:
    if not indices:
        return {"n": 0, "right_to_wrong": 0, "wrong_to_right": 0, "accuracy_before": None,
                "accuracy_after": None, "rows": []}
    with bench.lock:
        hidden = bench.index.prefix(indices)
    after = bench.steered_probs(hidden, patch).argmax(dim=-1)
    before = bench.index.predicted[indices]
    labels = bench.index.labels[indices]
    ok_before, ok_after = before == labels, after == labels
    rows = [
        {
            "key": f"d{i}",
            "index": i,
            "label": bench.classes[int(labels[j])],
            "before": bench.classes[int(before[j])],
            "after": bench.classes[int(after[j])],
        }
        for j, i in enumerate(indices)
    ]
    return {
        "n": len(indices),
        "right_to_wrong": int((ok_before & ~ok_after).sum()),
        "wrong_to_right": int((~ok_before & ok_after).sum()),
        "accuracy_before": round(float(ok_before.float().mean()), 4),
        "accuracy_after": round(float(ok_after.float().mean()), 4),
        "rows": rows,
    }
