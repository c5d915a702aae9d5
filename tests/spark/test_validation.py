"""`validate --engine spark` computes the local engine's report, with the images scored on Spark."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def patch(concept_model, default_sae):
    """A patch that moves predictions: a few latents switched off and one added."""
    from steerpatch.patch import Edit, new_patch

    edits = [Edit(latent=i, op="scale", value=0.0) for i in range(6)] + [Edit(latent=7, op="add", value=4.0)]
    return new_patch("spark-check", concept_model, default_sae, edits, rationale="engine agreement", author="tests")


@pytest.fixture(scope="module")
def reports(spark, patch, concept_model, default_sae, test_world):
    from steerpatch.data import load_dataset
    from steerpatch.spark import validate_on_spark
    from steerpatch.validate import validate_patch

    dataset = load_dataset(test_world)
    target = next(item.id for item in dataset.items if item.attributes.get("shortcut") == "conflicting")
    kwargs = dict(model=concept_model, sae=default_sae, targets=[target], same_failure={"shortcut": "conflicting"},
                  group_by="shortcut", progress=False)
    local = validate_patch(patch, dataset, **kwargs)
    remote = validate_on_spark(patch, dataset, spark=spark, **kwargs)
    return local, remote


def test_counts_are_identical(reports):
    local, remote = reports
    assert remote.engine == "spark" and local.engine == "local"
    assert remote.n == local.n == 600
    assert remote.n_undecodable == local.n_undecodable
    assert (remote.verdict, remote.failed_gates) == (local.verdict, local.failed_gates)
    assert remote.flips.right_to_wrong == local.flips.right_to_wrong
    assert remote.flips.wrong_to_right == local.flips.wrong_to_right
    assert remote.flip_matrix == local.flip_matrix
    assert remote.accuracy == local.accuracy
    assert remote.per_class == local.per_class
    assert remote.groups == local.groups
    assert remote.targets == local.targets and remote.same_failure == local.same_failure
    assert remote.hashes == local.hashes
    # the patch really changes predictions, so agreement is not the trivial kind
    assert local.flips.right_to_wrong + local.flips.wrong_to_right > 0


def test_metrics_agree_within_float_tolerance(reports):
    local, remote = reports
    assert remote.drift.cos_mean == pytest.approx(local.drift.cos_mean, abs=1e-5)
    assert remote.drift.cos_p5 == pytest.approx(local.drift.cos_p5, abs=1e-5)
    assert remote.kl_mean == pytest.approx(local.kl_mean, rel=1e-3, abs=1e-6)
    assert remote.flips.mcnemar_p == pytest.approx(local.flips.mcnemar_p)
    assert len(remote.dose_response) == len(local.dose_response) > 1
    for a, b in zip(local.dose_response, remote.dose_response, strict=True):
        da, db = a.model_dump(), b.model_dump()
        assert da.keys() == db.keys()
        for key, value in da.items():
            if isinstance(value, float):
                assert db[key] == pytest.approx(value, abs=1e-5), key
            else:
                assert db[key] == value, key


def test_spark_report_carries_the_local_baselines(reports, test_world):
    """Floor, ceiling and gap_closed on Spark come from the same code as the local ones, and agree with them."""
    from collections import Counter

    from steerpatch.data import load_dataset

    local, remote = reports
    assert remote.baselines is not None, "the Spark report has no baselines"
    assert remote.baselines.floor is not None and remote.baselines.ceiling is not None
    # the floor's random patches are the same seeded draws; scored by ONNX Runtime on the executors they make the
    # same predictions as torch does here (as the patch itself does, see test_counts_are_identical), so the
    # per-draw worst groups are equal, not merely close
    assert remote.baselines.floor.model_dump() == local.baselines.floor.model_dump()
    assert local.baselines.floor.worst_group != min(g.before for g in local.groups.values())  # random edits bite
    ceiling, expected = remote.baselines.ceiling, local.baselines.ceiling
    # the split depends only on labels, groups and the seed; the zero-shot head's predictions match exactly
    assert (ceiling.n_fit, ceiling.n_eval, ceiling.method) == (expected.n_fit, expected.n_eval, expected.method)
    assert ceiling.before_worst_group == expected.before_worst_group
    # the re-fit starts from embeddings that differ by float error (ONNX vs torch, ~1e-6); L-BFGS may then move
    # an image lying on the new boundary: allow one image of the smallest group's evaluation half
    smallest = min(Counter(str(i.attributes["shortcut"]) for i in load_dataset(test_world).items).values())
    one_image = 1.0 / (smallest // 2)
    assert ceiling.worst_group == pytest.approx(expected.worst_group, abs=one_image)
    assert ceiling.accuracy == pytest.approx(expected.accuracy, abs=1.0 / expected.n_eval)
    assert remote.gap_closed is not None and local.gap_closed is not None
    before = min(g.before for g in remote.groups.values())
    assert remote.gap_closed == pytest.approx((remote.worst_group.after - before) / (ceiling.worst_group - before))
    # gap = (after - before) / (ceiling - before): a ceiling off by d moves it by at most gap * d / (ceiling - before - d)
    slack = abs(local.gap_closed) * one_image / (expected.worst_group - before - one_image)
    assert remote.gap_closed == pytest.approx(local.gap_closed, abs=slack)
