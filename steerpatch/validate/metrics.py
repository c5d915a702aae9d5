"""Per-image model outputs before and after a patch, and the statistics a report is built from.

`ImageResults` is the hand-off between an engine (which runs the model, locally or on a cluster) and
the report builder (which only counts): plain numpy columns, one row per held-out image.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageResults:
    """What a patch did to each image of a dataset.

    Attributes:
        ids: item ids (path relative to the dataset root).
        labels: true class index per image, into `classes`.
        pred_before: predicted class index without the patch.
        pred_after: predicted class index with the patch.
        probs_before: class probabilities without the patch, (N, C).
        probs_after: class probabilities with the patch, (N, C).
        cos: cosine similarity between the original and patched image embeddings, (N,).
        classes: the class names the indices refer to.
        groups: the value of the grouping attribute per image (None when not grouped).
    """

    ids: list[str]
    labels: np.ndarray
    pred_before: np.ndarray
    pred_after: np.ndarray
    probs_before: np.ndarray
    probs_after: np.ndarray
    cos: np.ndarray
    classes: list[str]
    groups: list[str] | None = None
    _index: dict[str, int] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def right_before(self) -> np.ndarray:
        return self.pred_before == self.labels

    @property
    def right_after(self) -> np.ndarray:
        return self.pred_after == self.labels

    def positions(self, ids: list[str]) -> np.ndarray:
        """Row positions of `ids` (every id must be present)."""
        if not self._index:
            self._index = {item_id: i for i, item_id in enumerate(self.ids)}
        return np.asarray([self._index[i] for i in ids], dtype=np.int64)

    def take(self, rows: np.ndarray) -> ImageResults:
        """The results of the given rows only."""
        rows = np.asarray(rows, dtype=np.int64)
        return ImageResults(
            ids=[self.ids[i] for i in rows],
            labels=self.labels[rows],
            pred_before=self.pred_before[rows],
            pred_after=self.pred_after[rows],
            probs_before=self.probs_before[rows],
            probs_after=self.probs_after[rows],
            cos=self.cos[rows],
            classes=self.classes,
            groups=None if self.groups is None else [self.groups[i] for i in rows],
        )


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for b and c discordant pairs (a binomial test at 1/2).

    Args:
        b: pairs that went one way (right -> wrong).
        c: pairs that went the other way (wrong -> right).

    Returns:
        The p-value; 1.0 when there are no discordant pairs.

    Example:
        >>> round(mcnemar_exact_p(0, 6), 4)
        0.0312
    """
    n = b + c
    if n == 0:
        return 1.0
    from math import comb

    tail = sum(comb(n, k) for k in range(min(b, c) + 1))
    # exact integer arithmetic; the division stays accurate for large n
    return min(1.0, 2 * tail / (1 << n))


def kl_rows(p: np.ndarray, q: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """KL(p || q) per row of two probability matrices, in nats."""
    p = np.clip(p.astype(np.float64), eps, 1.0)
    q = np.clip(q.astype(np.float64), eps, 1.0)
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def accuracy(right: np.ndarray) -> float | None:
    """Mean of a boolean array, None when it is empty."""
    return float(right.mean()) if len(right) else None


def fix_rate(results: ImageResults) -> tuple[float | None, int, int]:
    """Share of the images wrong before that are right after.

    Returns:
        (rate or None when none was wrong before, wrong before, fixed).
    """
    wrong = ~results.right_before
    fixed = int((wrong & results.right_after).sum())
    n_wrong = int(wrong.sum())
    return (fixed / n_wrong if n_wrong else None), n_wrong, fixed


def histogram(values: np.ndarray, bins: int = 20) -> dict[str, list[float]]:
    """A histogram as plain lists: bin edges and counts."""
    if len(values) == 0:
        return {"edges": [], "counts": []}
    lo, hi = float(values.min()), max(float(values.max()), 1.0)
    counts, edges = np.histogram(values, bins=bins, range=(min(lo, hi - 1e-3), hi))
    return {"edges": [float(e) for e in edges], "counts": [float(c) for c in counts]}
