"""Hand-made per-image results for the report builder's tests (shared by the report and gate tests)."""

from __future__ import annotations

import numpy as np

from steerpatch.validate import ImageResults

CLASSES = ["circle", "square", "star"]
HASHES = {"patch": "a" * 64, "model": "b" * 64, "sae": "c" * 64, "dataset": "d" * 64}


def results_of(labels, before, after, groups=None, cos=None):
    n = len(labels)
    eye = np.eye(3) * 0.8 + 0.2 / 3
    return ImageResults(
        ids=[f"{CLASSES[y]}/{i:03d}.png" for i, y in enumerate(labels)],
        labels=np.array(labels), pred_before=np.array(before), pred_after=np.array(after),
        probs_before=eye[before], probs_after=eye[after],
        cos=np.ones(n) if cos is None else np.array(cos), classes=CLASSES, groups=groups,
    )
