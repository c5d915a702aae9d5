"""McNemar, KL, fix rates and histograms on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from steerpatch.validate.metrics import ImageResults, fix_rate, histogram, kl_rows, mcnemar_exact_p


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, 1.0),
        (0, 6, 2 / 64),
        (1, 9, 2 * (1 + 10) / 1024),
        (5, 5, 1.0),
        (3, 1, 2 * (1 + 4) / 16),
    ],
)
def test_mcnemar_exact_matches_binomial_tail(b, c, expected):
    assert mcnemar_exact_p(b, c) == pytest.approx(expected, rel=1e-12)
    assert mcnemar_exact_p(c, b) == pytest.approx(expected, rel=1e-12)


def test_mcnemar_large_counts_stay_finite_and_small():
    p = mcnemar_exact_p(400, 600)
    assert 0 < p < 1e-9
    assert math.isfinite(p)


def test_kl_is_zero_for_equal_rows_and_matches_formula():
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    q = np.array([[0.5, 0.5], [0.5, 0.5]])
    kl = kl_rows(p, q)
    assert kl[0] == pytest.approx(0.0, abs=1e-12)
    assert kl[1] == pytest.approx(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5))


def _results(labels, before, after, groups=None):
    n, c = len(labels), 3
    eye = np.eye(c)
    return ImageResults(
        ids=[f"x/{i}.png" for i in range(n)], labels=np.array(labels), pred_before=np.array(before),
        pred_after=np.array(after), probs_before=eye[before], probs_after=eye[after], cos=np.ones(n),
        classes=["a", "b", "c"], groups=groups,
    )


def test_fix_rate_counts_only_images_wrong_before():
    r = _results([0, 0, 1, 2], [1, 0, 0, 2], [0, 1, 0, 2])
    rate, wrong, fixed = fix_rate(r)
    assert (rate, wrong, fixed) == (0.5, 2, 1)


def test_take_and_positions_keep_rows_aligned():
    r = _results([0, 1, 2], [0, 1, 1], [0, 2, 2], groups=["g", "h", "g"])
    sub = r.take(r.positions(["x/2.png", "x/0.png"]))
    assert sub.ids == ["x/2.png", "x/0.png"]
    assert sub.labels.tolist() == [2, 0]
    assert sub.groups == ["g", "g"]


def test_histogram_covers_all_values():
    values = np.array([0.2, 0.99, 1.0, 1.0000001])
    hist = histogram(values, bins=5)
    assert sum(hist["counts"]) == 4
    assert hist["edges"][0] <= 0.2 and hist["edges"][-1] >= 1.0000001
