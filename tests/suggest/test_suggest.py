"""`suggest` on the default model: candidates that fix the mistake, measured honestly, labels never read."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from steerpatch.suggest import METHOD
from steerpatch.suggest.search import RIPPLE_WEIGHT, Candidate, objective, rank, sweep


def test_top_candidate_fixes_the_image_under_a_real_steering_hook(suggested, mistake, concept_model, default_sae):
    from PIL import Image

    from steerpatch.models import build_zero_shot_head, encode_images, preprocess_batch
    from steerpatch.patch import load_patch
    from steerpatch.steer import steer

    found, doc, out = suggested
    path, label, wrong = mistake
    best = doc["candidates"][0]
    assert best["objective"]["targets_fixed"] == 1.0
    patch = load_patch(best["patch"])
    assert len(patch.edits) == best["edits"] and all(e.op == "scale" and e.value < 1 for e in patch.edits)
    head = build_zero_shot_head(concept_model, found.inputs["classes"])
    pixels = preprocess_batch(concept_model, [Image.open(path)])
    assert head.predict(encode_images(concept_model, pixels)) == [wrong]
    with steer(concept_model, patch, default_sae):
        assert head.predict(encode_images(concept_model, pixels)) == [label]


def test_reported_ripple_and_moves_match_an_independent_run_over_the_pool(suggested, small_pool, concept_model, default_sae):
    from steerpatch.data import load_dataset
    from steerpatch.models import build_zero_shot_head, classify_images
    from steerpatch.patch import load_patch
    from steerpatch.steer import steer

    found, doc, _ = suggested
    pool = load_dataset(small_pool)
    head = build_zero_shot_head(concept_model, found.inputs["classes"])
    images = [pool.load_image(i) for i in pool.items]
    before = np.asarray(classify_images(concept_model, images, head, progress=False))
    with steer(concept_model, load_patch(doc["candidates"][0]["patch"]), default_sae):
        after = np.asarray(classify_images(concept_model, images, head, progress=False))
    failing = before == "star"
    o = doc["candidates"][0]["objective"]
    assert o["failure_moved"] == pytest.approx((failing & (after != "star")).sum() / failing.sum())
    assert o["ripple"] == pytest.approx((~failing & (after != before)).sum() / (~failing).sum())


def test_candidates_are_ranked_best_first_and_written_with_provenance(suggested, mistake):
    found, doc, out = suggested
    rows = doc["candidates"]
    assert 1 <= len(rows) <= 3
    assert [c.objective for c in rank(found.candidates, found.inputs["max_ripple"])] == [r["objective"] for r in rows]
    note = json.loads(json.loads((out / rows[0]["patch"].split("/")[-1]).read_text())["provenance"]["note"]
                      .removeprefix("steerpatch suggest "))
    assert note["method"] == METHOD and note["rank"] == 1
    assert note["objective"]["ripple"] == pytest.approx(rows[0]["objective"]["ripple"], abs=1e-6)
    assert note["inputs"]["images"] == [str(mistake[0])] and note["inputs"]["label"] == mistake[1]
    trace = (out / "search.jsonl").read_text().splitlines()
    assert len(trace) == len(found.trace) <= 33
    assert (out / "fix_vs_ripple.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "suggest.json").read_text())["candidates"] == rows


def test_pool_labels_and_manifest_are_never_read(tmp_path, mistake, small_pool, concept_model, default_sae):
    """Swapping class folders and scrambling the manifest changes nothing: only pixels are used."""
    from steerpatch.suggest import suggest

    scrambled = tmp_path / "pool"
    shutil.copytree(small_pool, scrambled)
    (scrambled / "circle").rename(scrambled / "tmp")
    (scrambled / "square").rename(scrambled / "circle")
    (scrambled / "tmp").rename(scrambled / "square")
    (scrambled / "manifest.jsonl").write_text('{"path": "nope.png", "label": "x", "attributes": {"shortcut": 1}}\n')
    path, label, _ = mistake
    a = suggest(concept_model, default_sae, [path], label, small_pool, budget=6, keep=2)
    b = suggest(concept_model, default_sae, [path], label, scrambled, budget=6, keep=2)
    assert [(c.latents, c.value) for c in a.candidates] == [(c.latents, c.value) for c in b.candidates]
    # the pool is read in another file order, so float sums may round differently; nothing else differs
    assert [c.objective for c in a.candidates] == [pytest.approx(c.objective, rel=1e-9) for c in b.candidates]


def test_objective_counts_moves_ripple_and_weights():
    before = np.array([3, 3, 3, 0, 1, 2])
    after = np.array([0, 3, 1, 0, 2, 2])
    probs = np.eye(4)[before].astype(float)
    o = objective(before, after, probs, np.eye(4)[after].astype(float), wrong={3}, lookalikes=np.array([0, 1]),
                  target_fixed=1.0)
    assert o["lookalikes_moved"] == 0.5
    assert o["failure_moved"] == pytest.approx(2 / 3)
    assert o["ripple"] == pytest.approx(1 / 3)
    assert o["score"] == pytest.approx((2 - RIPPLE_WEIGHT * 1) / 6)
    weighted = objective(before, after, probs, np.eye(4)[after].astype(float), wrong={3}, lookalikes=np.array([0]),
                         target_fixed=1.0, weights=np.array([1, 1, 1, 2, 2, 2]))
    assert weighted["ripple"] == pytest.approx(2 / 6)


def test_rank_puts_fixed_within_budget_first_then_score_then_fewer_edits():
    def cand(n, fixed, ripple, score):
        return Candidate(list(range(n)), "scale", 0.0, {"targets_fixed": fixed, "ripple": ripple, "score": score})

    a, b, c, d = cand(8, 1.0, 0.01, 0.1), cand(4, 1.0, 0.01, 0.1), cand(2, 0.0, 0.0, 0.9), cand(1, 1.0, 0.5, 0.5)
    assert rank([a, c, d, b], max_ripple=0.02) == [b, a, d, c]
    # all over the budget: the one that breaks it least first, whatever the score
    e, f = cand(64, 1.0, 0.027, 0.09), cand(24, 1.0, 0.022, 0.08)
    assert rank([e, f], max_ripple=0.02) == [f, e]


def test_a_top_candidate_over_budget_on_the_pool_sends_the_search_to_a_gentler_one():
    from steerpatch.suggest.engine import _within_budget_on_pool

    def cand(n, ripple, score):
        return Candidate(list(range(n)), "scale", 0.0, {"targets_fixed": 1.0, "ripple": ripple, "score": score})

    trace = [cand(64, 0.020, 0.10), cand(24, 0.015, 0.09), cand(8, 0.004, 0.01)]
    pool_ripple = {64: 0.027, 24: 0.022, 8: 0.006}  # the sample under-estimates every one
    asked = []

    def on_pool(c):
        asked.append(len(c.latents))
        return cand(len(c.latents), pool_ripple[len(c.latents)], c.objective["score"])

    found = _within_budget_on_pool(trace, 0.02, on_pool, {trace[0].key()}, None)
    assert asked == [24, 8]  # 3/4 of the budget on the sample first, then 1/2 (1/4 is not reached)
    assert [len(c.latents) for c in rank(found, 0.02)] == [8, 24]


def test_sweep_keeps_within_budget_and_thins_sizes_evenly():
    seen = []
    out = sweep(list(range(100)), lambda c: seen.append(len(c.latents)) or {"n": len(c.latents)}, budget=9)
    assert len(out) == 9 == len(seen)
    assert seen[0] == 1 and seen[-1] == 64 and len(set(seen)) == 3
