"""Validating real patches on the default model and a generated held-out world."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from steerpatch.errors import DatasetError, PatchError
from steerpatch.validate import ActivationCache, Policy, Validator, validate_patch

STRENGTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.fixture(scope="module")
def validator(concept_model, concept_sae, test_world):
    return Validator(concept_model, concept_sae, test_world, group_by="shortcut", progress=False)


@pytest.fixture(scope="module")
def report(validator, suppress_patch, test_world):
    conflicting = [i.id for i in validator.dataset.items if i.attributes.get("shortcut") == "conflicting"]
    return validator.validate(suppress_patch, targets=conflicting[:3], same_failure={"shortcut": "conflicting"})


def test_report_counts_agree_with_plain_zero_shot(report, validator, concept_model, test_world):
    from steerpatch.models import classify_images

    data = validator.dataset
    images = [data.load_image(item) for item in data.items]
    preds = classify_images(concept_model, images, validator.head, progress=False)
    expected = np.mean([p == item.label for p, item in zip(preds, data.items, strict=True)])
    assert report.n == len(data) == 600
    assert report.accuracy.before == pytest.approx(expected)
    assert set(report.groups) == {"aligned", "conflicting", "none"}
    assert sum(g.n for g in report.groups.values()) == 600
    assert report.hashes.dataset == data.fingerprint()
    assert report.hashes.model == concept_model.fingerprint
    assert report.targets.n == 3 and report.same_failure.n == report.groups["conflicting"].n - 3


def test_dose_response_runs_from_identity_to_the_patch(report):
    assert [p.strength for p in report.dose_response] == STRENGTHS
    zero, full = report.dose_response[0], report.dose_response[-1]
    assert zero.right_to_wrong == zero.wrong_to_right == 0
    assert zero.accuracy == report.accuracy.before
    assert zero.cos_mean == pytest.approx(1.0, abs=1e-9)
    assert (full.right_to_wrong, full.wrong_to_right) == (report.flips.right_to_wrong, report.flips.wrong_to_right)
    assert full.accuracy == report.accuracy.after


def test_blast_radius_is_predicted_from_firing_rates(report):
    blast = report.blast_radius_predicted
    assert blast.source == "dataset"  # the hand-built SAE has no stored statistics
    assert set(blast.latents) == {str(i) for i in range(8)}
    assert 0.0 <= blast.fraction <= 1.0
    assert blast.fraction >= max(blast.latents.values())
    assert set(blast.by_group) == {"shortcut=aligned", "shortcut=conflicting", "shortcut=none"}


def test_each_further_candidate_reuses_the_cache(validator, concept_model, concept_sae):
    from steerpatch.patch import new_patch

    before = validator.cache.misses
    other = new_patch("other", concept_model, concept_sae, [(20, "scale", 0.0)], rationale="t", author="t")
    report = validator.validate(other, dose=False)
    assert validator.cache.misses == before <= 1
    assert report.dose_response == []


def test_disk_cache_is_reused_by_a_new_process(tmp_path, concept_model, small_world):
    from steerpatch.data import load_dataset

    data = load_dataset(small_world)
    first = ActivationCache(tmp_path)
    a = first.get(concept_model, data, 2, progress=False)
    second = ActivationCache(tmp_path)
    b = second.get(concept_model, data, 2, progress=False)
    assert (first.misses, second.misses) == (1, 0)
    assert a.ids == b.ids and torch.equal(a.hidden, b.hidden) and torch.equal(a.features, b.features)


def test_class_prompts_must_cover_the_labels(concept_model, concept_sae, small_world):
    with pytest.raises(DatasetError, match="have no class prompt"):
        Validator(concept_model, concept_sae, small_world, classes=["circle", "square"], progress=False)


def test_unknown_group_attribute_lists_the_known_ones(concept_model, concept_sae, small_world):
    with pytest.raises(DatasetError, match="background"):
        Validator(concept_model, concept_sae, small_world, group_by="colour_of_sky", progress=False)


def test_empty_dataset_is_refused(tmp_path, concept_model, concept_sae, suppress_patch):
    (tmp_path / "empty" / "circle").mkdir(parents=True)
    with pytest.raises(DatasetError):
        validate_patch(suppress_patch, tmp_path / "empty", model=concept_model, sae=concept_sae, progress=False)


def test_unknown_target_ids_are_named(concept_model, concept_sae, suppress_patch, small_world):
    with pytest.raises(DatasetError, match="nope.png"):
        validate_patch(suppress_patch, small_world, model=concept_model, sae=concept_sae, targets=["nope.png"],
                       progress=False, dose=False)


def _damaged_copy(small_world, tmp_path):
    root = tmp_path / "world"
    shutil.copytree(small_world, root)
    victim = sorted(root.glob("*/*.png"))[0]
    victim.write_bytes(b"not a png")
    return root, victim


def test_undecodable_images_are_counted_or_fatal_per_policy(tmp_path, concept_model, concept_sae, suppress_patch):
    from steerpatch.world import write_world

    world = tmp_path / "src"
    write_world(world, split="test", n=40, seed=1)
    root, victim = _damaged_copy(world, tmp_path)
    victim_id = victim.relative_to(root).as_posix()
    lenient = Policy.model_validate({"data": {"max_undecodable_rate": 0.05}})
    report = validate_patch(suppress_patch, root, model=concept_model, sae=concept_sae, policy=lenient,
                            progress=False, dose=False)
    assert report.n_undecodable == 1 and report.undecodable == [victim_id] and report.n == 39
    with pytest.raises(DatasetError, match="cannot be decoded"):  # 1/40 is above the default 1%
        validate_patch(suppress_patch, root, model=concept_model, sae=concept_sae, progress=False, dose=False)
    strict = Policy.model_validate({"data": {"on_undecodable": "fail"}})
    with pytest.raises(DatasetError, match=victim.name):
        validate_patch(suppress_patch, root, model=concept_model, sae=concept_sae, policy=strict,
                       progress=False, dose=False)


def test_patch_bound_to_another_model_is_refused(concept_model, concept_sae, suppress_patch, small_world):
    foreign = suppress_patch.with_changes(model={"id": "ViT-B-32", "fingerprint": "e" * 64})
    with pytest.raises(PatchError, match="fingerprint mismatch"):
        validate_patch(foreign, small_world, model=concept_model, sae=concept_sae, progress=False, dose=False)
    report = validate_patch(foreign, small_world, model=concept_model, sae=concept_sae, progress=False,
                            dose=False, allow_fingerprint_mismatch=True)
    assert report.n == 40
    assert [o["kind"] for o in report.overrides] == ["model"]


def test_blast_radius_from_stored_statistics_matches_the_measured_one(tmp_path, concept_model, concept_sae, small_world):
    from steerpatch.data import load_dataset
    from steerpatch.patch import new_patch
    from steerpatch.sae import compute_latent_stats, load_sae, save_latent_stats, save_sae
    from steerpatch.validate.blast import predict_from_activations

    data = load_dataset(small_world)
    save_sae(concept_sae, tmp_path / "sae")
    sae = load_sae(tmp_path / "sae")
    save_latent_stats(compute_latent_stats(concept_model, sae, data, progress=False), tmp_path / "sae")
    patch = new_patch("few", concept_model, sae, [(3, "scale", 0.0), (9, "scale", 0.5)], rationale="t", author="t")
    validator = Validator(concept_model, sae, data, group_by="shortcut", progress=False)
    report = validator.validate(patch, dose=False)
    blast = report.blast_radius_predicted
    assert blast.source == "latent_stats"
    cached = validator.activations(data, 2)
    labels = np.array([data.classes.index(i.label) for i in data.items])
    groups = [str(i.attributes["shortcut"]) for i in data.items]
    measured = predict_from_activations(patch.edits, sae, cached, "all", labels=labels, classes=data.classes,
                                        groups=groups, group_by="shortcut")
    assert blast.fraction == pytest.approx(measured["fraction"], abs=1e-6)
    for group, value in measured["by_group"].items():
        assert blast.by_group[group] == pytest.approx(value, abs=1e-6)


def test_a_validator_does_its_per_image_work_through_its_scorer(concept_model, concept_sae, suppress_patch, small_world):
    from contextlib import contextmanager

    from steerpatch.validate.scorer import LocalScorer

    class Recording(LocalScorer):
        engine = "recording"

        def __init__(self):
            self.calls = []

        @contextmanager
        def session(self, validator, patch, strengths):
            self.calls.append(("session", tuple(strengths)))
            yield
            self.calls.append(("end", ()))

        def score(self, validator, patch, dataset, cached, *, strength=1.0, grouped=False):
            self.calls.append(("score", strength))
            return super().score(validator, patch, dataset, cached, strength=strength, grouped=grouped)

    scorer = Recording()
    recorded = Validator(concept_model, concept_sae, small_world, group_by="shortcut", progress=False, scorer=scorer)
    report = recorded.validate(suppress_patch)
    plain = Validator(concept_model, concept_sae, small_world, group_by="shortcut", progress=False).validate(suppress_patch)
    strengths = tuple(recorded.policy.dose_response.strengths)
    assert scorer.calls == [("session", strengths), ("score", 1.0), *[("score", s) for s in strengths if s != 1.0],
                            ("end", ())]
    assert (report.engine, plain.engine) == ("recording", "local")
    assert report.results_digest == plain.results_digest
    assert report.model_dump(exclude={"engine", "duration_s"}) == plain.model_dump(exclude={"engine", "duration_s"})
