"""Floor, ceiling, gap_closed and the sample-based blast-radius estimate in every grouped report."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerpatch.validate import Validator
from steerpatch.validate.baselines import ceiling_baseline, floor_baseline, gap_closed
from steerpatch.validate.blast import estimate_blast


@pytest.fixture(scope="module")
def validator(concept_model, concept_sae, test_world):
    return Validator(concept_model, concept_sae, test_world, group_by="shortcut", progress=False)


@pytest.fixture(scope="module")
def cached(validator, suppress_patch):
    return validator.activations(validator.dataset, suppress_patch.hook.block)


@pytest.fixture(scope="module")
def report(validator, suppress_patch):
    return validator.validate(suppress_patch, dose=False)


def test_report_carries_floor_ceiling_gap_and_blast_estimate(report):
    data = report.model_dump(mode="json")
    floor, ceiling = data["baselines"]["floor"], data["baselines"]["ceiling"]
    assert floor["draws"] == 3 and floor["worst_group"] == pytest.approx(np.mean(floor["worst_group_draws"]))
    assert 0.0 <= ceiling["worst_group"] <= 1.0 and ceiling["n_fit"] + ceiling["n_eval"] <= report.n
    before = min(g.before for g in report.groups.values())
    expected = (report.worst_group.after - before) / (ceiling["worst_group"] - before)
    assert data["gap_closed"] == pytest.approx(expected)
    assert data["blast_radius"]["observed"] == report.blast_radius_observed
    assert data["blast_radius"]["low"] <= data["blast_radius"]["predicted"] <= data["blast_radius"]["high"]


def test_html_shows_the_baselines(report):
    from steerpatch.validate.html import render_html

    page = render_html(report)
    assert "gap closed" in page and f"{report.gap_closed:.2f}" in page
    assert f"{100 * report.baselines.ceiling.worst_group:.1f}%" in page
    assert f"{100 * report.blast_radius.predicted:.1f}%" in page


def test_floor_is_shared_by_patches_with_the_same_ops(validator, concept_model, concept_sae, report):
    from steerpatch.patch import new_patch

    other = new_patch("other", concept_model, concept_sae, [(100 + i, "scale", 0.0) for i in range(8)],
                      rationale="t", author="t")
    again = validator.validate(other, dose=False)
    assert again.baselines.floor == report.baselines.floor


def test_floor_of_identity_edits_is_the_unpatched_worst_group(validator, cached, concept_model, concept_sae, report):
    from steerpatch.patch import new_patch
    from steerpatch.validate.scorer import group_values

    identity = new_patch("same", concept_model, concept_sae, [(i, "scale", 1.0) for i in range(4)], rationale="t", author="t")
    floor = floor_baseline(lambda patches: validator.scorer.score_patches(validator, patches, validator.dataset, cached),
                           identity, concept_sae, groups=group_values(validator.dataset, cached.ids, "shortcut"))
    assert floor["worst_group"] == pytest.approx(min(g.before for g in report.groups.values()))


class _Head:
    def __init__(self, weights):
        self.classes = ["a", "b"]
        self.weights = weights
        self.logit_scale = 10.0


def test_ceiling_refits_past_a_spurious_feature_with_balanced_groups():
    """Class is feature 0; feature 1 is spurious (agrees with the class in the majority group only)."""
    rng = np.random.default_rng(0)
    n = 800
    labels = rng.integers(0, 2, n)
    minority = rng.random(n) < 0.2
    spurious = np.where(minority, 1 - labels, labels)
    x = np.stack([labels * 2 - 1, (spurious * 2 - 1) * 3.0, np.ones(n)], 1) + 0.3 * rng.standard_normal((n, 3))
    head = _Head(torch.nn.functional.normalize(torch.tensor([[-0.2, -1.0, 0.0], [0.2, 1.0, 0.0]]), dim=-1))
    groups = np.where(minority, "minority", "majority")
    out = ceiling_baseline(torch.tensor(x), labels, groups, head)
    assert out["before_worst_group"] < 0.1  # the zero-shot head follows the spurious feature
    assert out["worst_group"] > 0.9
    assert out["n_fit"] % 4 == 0  # four (group, class) cells, equally many from each
    assert ceiling_baseline(torch.tensor(x), labels, ["one"] * n, head) is None


def test_gap_closed_formula_and_undefined_cases():
    assert gap_closed(0.3, 0.5, 0.7) == pytest.approx(0.5)
    assert gap_closed(0.3, 0.5, 0.3) is None and gap_closed(None, 0.5, 0.7) is None


def test_blast_estimate_is_exact_when_the_sample_covers_every_touched_image(validator, cached, suppress_patch, report):
    full = estimate_blast(validator.model.model, validator.head, validator.sae, suppress_patch, cached, sample=len(cached.ids))
    assert full["predicted"] == pytest.approx(report.blast_radius_observed)
    assert full["low"] == full["high"] == pytest.approx(full["predicted"])


def test_blast_estimate_from_a_small_sample_is_close(validator, cached, suppress_patch, report):
    small = estimate_blast(validator.model.model, validator.head, validator.sae, suppress_patch, cached)
    assert small["sample"] < len(cached.ids) / 2
    assert abs(small["predicted"] - report.blast_radius_observed) <= 0.03


def test_blast_estimate_reads_spilled_activations_in_order(validator, cached, suppress_patch, tmp_path, monkeypatch):
    """Random draws over activations spilled in many shards: each pass reads every shard about once."""
    import dataclasses

    from steerpatch.validate import shards as shard_module

    rows = 16
    parts = [shard_module.write_shard(tmp_path, k, cached.hidden[s : s + rows])
             for k, s in enumerate(range(0, len(cached.ids), rows))]
    spilled = dataclasses.replace(cached, hidden=shard_module.ShardedActivations(tmp_path, parts, tuple(cached.hidden.shape)))
    reads = []
    real = shard_module.load_checked
    monkeypatch.setattr(shard_module, "load_checked", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    kwargs = {"sample": len(cached.ids) // 2, "batch_size": 8}
    on_disk = estimate_blast(validator.model.model, validator.head, validator.sae, suppress_patch, spilled, **kwargs)
    in_memory = estimate_blast(validator.model.model, validator.head, validator.sae, suppress_patch, cached, **kwargs)
    assert on_disk == in_memory and on_disk["sample"] > 8
    # the steering deltas (one pass), the pilot draws of every stratum (one) and the Neyman draws (one)
    assert len(reads) <= 3 * len(parts) + 2, f"{len(reads)} shard reads for {len(parts)} shards"


def test_identity_edits_touch_nothing(validator, cached, concept_model, concept_sae):
    from steerpatch.patch import new_patch

    identity = new_patch("same", concept_model, concept_sae, [(3, "scale", 1.0)], rationale="t", author="t")
    out = estimate_blast(validator.model.model, validator.head, concept_sae, identity, cached)
    assert out["predicted"] == out["touched"] == 0.0 and out["sample"] == 0


def test_validate_json_carries_the_new_keys(runner, patch_file, small_world):
    import json

    from steerpatch.cli.main import cli

    result = runner.invoke(cli, ["validate", patch_file, "--data", str(small_world), "--group-by", "shortcut",
                                 "--json", "--no-dose", "--quiet"])
    assert result.exit_code in (0, 1), result.output
    doc = json.loads(result.stdout)
    assert doc["baselines"]["floor"]["draws"] == 3 and doc["baselines"]["floor"]["worst_group"] is not None
    assert doc["baselines"]["ceiling"]["worst_group"] is not None
    assert "gap_closed" in doc
    assert doc["blast_radius"]["observed"] == doc["blast_radius_observed"]
    assert 0.0 <= doc["blast_radius"]["predicted"] <= doc["blast_radius"]["touched"]
