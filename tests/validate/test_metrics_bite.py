"""Metrics at their edges: empty sets, all-correct sets, clipping, exact histogram bins, row selection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from steerpatch.validate.metrics import ImageResults, accuracy, fix_rate, histogram, kl_rows


def _results(labels, before, after, groups=None):
    n = len(labels)
    eye = np.eye(3)
    return ImageResults(
        ids=[f"x/{i}.png" for i in range(n)], labels=np.array(labels, dtype=np.int64),
        pred_before=np.array(before, dtype=np.int64), pred_after=np.array(after, dtype=np.int64),
        probs_before=eye[before], probs_after=eye[after] * 0.5 + 0.5 / 3, cos=np.linspace(0.5, 1.0, n),
        classes=["a", "b", "c"], groups=groups,
    )


def test_accuracy_of_an_empty_set_is_none():
    assert accuracy(np.array([], dtype=bool)) is None
    assert accuracy(np.array([True, False, True, True])) == 0.75


def test_fix_rate_reads_the_images_wrong_before():
    # wrong before: rows 0 and 1; row 0 fixed. Right before: row 2 only.
    assert fix_rate(_results([0, 0, 0], [1, 1, 0], [0, 1, 0])) == (0.5, 2, 1)


def test_fix_rate_is_none_when_nothing_was_wrong():
    assert fix_rate(_results([0, 1], [0, 1], [1, 1])) == (None, 0, 0)


def test_histogram_of_nothing_is_empty():
    assert histogram(np.array([])) == {"edges": [], "counts": []}


def test_histogram_defaults_to_20_bins_up_to_at_least_one():
    hist = histogram(np.array([0.2, 0.7, 0.7]))
    assert hist["edges"] == pytest.approx(np.linspace(0.2, 1.0, 21).tolist(), abs=1e-12)
    assert len(hist["counts"]) == 20 and hist["counts"][0] == 1.0 and hist["counts"][12] == 2.0
    assert sum(hist["counts"]) == 3.0


def test_histogram_of_one_value_above_one_has_a_narrow_range():
    hist = histogram(np.array([1.5]), bins=2)
    assert hist == {"edges": pytest.approx([1.499, 1.4995, 1.5], abs=1e-12), "counts": [0.0, 1.0]}


def test_kl_clips_probabilities_into_eps_and_one():
    # float error above 1 is clipped: identical distributions have exactly zero divergence
    assert kl_rows(np.array([[1 + 1e-7, 0.0]]), np.array([[1.0, 0.0]])).tolist() == [0.0]
    assert kl_rows(np.array([[1.0, 0.0]]), np.array([[1 + 1e-7, 0.0]])).tolist() == [0.0]
    # zeros are clipped to eps: finite values, no log(0)
    kl = kl_rows(np.array([[1.0, 0.0], [0.5, 0.5]]), np.array([[0.5, 0.5], [1.0, 0.0]]))
    assert kl[0] == pytest.approx(math.log(2), rel=1e-9)
    assert kl[1] == pytest.approx(0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-12), rel=1e-12)


def test_take_keeps_every_column_aligned():
    r = _results([0, 1, 2], [0, 1, 1], [0, 2, 2], groups=["g", "h", "g"])
    sub = r.take(np.array([2, 0]))
    assert sub.ids == ["x/2.png", "x/0.png"] and sub.classes == ["a", "b", "c"]
    for column in ("labels", "pred_before", "pred_after", "probs_before", "probs_after", "cos"):
        np.testing.assert_array_equal(getattr(sub, column), getattr(r, column)[[2, 0]])
    assert sub.groups == ["g", "g"]
    assert r.take(np.array([1])).groups == ["h"]


def test_take_of_ungrouped_results_and_of_no_rows():
    r = _results([0, 1], [0, 1], [0, 0])
    assert r.take([1, 0]).groups is None
    empty = r.take([])
    assert len(empty) == 0 and empty.labels.shape == (0,) and empty.probs_after.shape == (0, 3)
    positions = r.positions([])
    assert positions.dtype == np.int64 and positions.shape == (0,)
    assert r.positions(["x/1.png"]).tolist() == [1]
