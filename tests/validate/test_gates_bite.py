"""Gates at their edges: a zero gate is enforced, None and negatives switch a gate off, bounds are inclusive."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from steerpatch.validate import ImageResults, Policy, build_report
from steerpatch.validate.policy import Gates

CLASSES = ["circle", "square", "star"]
HASHES = {"patch": "a" * 64, "model": "b" * 64, "sae": "c" * 64, "dataset": "d" * 64}
OFF = {name: None for name in Gates.model_fields}


def _results(labels, before, after):
    eye = np.eye(3) * 0.8 + 0.2 / 3
    return ImageResults(
        ids=[f"{CLASSES[y]}/{i:03d}.png" for i, y in enumerate(labels)],
        labels=np.array(labels), pred_before=np.array(before), pred_after=np.array(after),
        probs_before=eye[before], probs_after=eye[after], cos=np.ones(len(labels)), classes=CLASSES,
    )


def _policy(**gates) -> Policy:
    return Policy(gates=Gates(**{**OFF, **gates}))


def test_active_keeps_zero_drops_none_and_negative():
    gates = Gates(max_right_to_wrong_rate=0.0, max_class_accuracy_drop=None, max_accuracy_drop=-0.5,
                  min_target_fix_rate=1.0, min_generalisation_fix_rate=0.25, min_cos_mean=0.8)
    assert gates.active() == {"max_right_to_wrong_rate": 0.0, "min_target_fix_rate": 1.0,
                              "min_generalisation_fix_rate": 0.25, "min_cos_mean": 0.8}


def test_default_zero_accuracy_drop_gate_is_active():
    assert Policy().gates.max_accuracy_drop == 0.0
    assert Policy().gates.active()["max_accuracy_drop"] == 0.0


def test_a_zero_accuracy_drop_gate_fails_a_patch_that_loses_one_image():
    # one image right before and wrong after, nothing fixed: accuracy drops by 1/4
    results = _results([0, 1, 2, 0], [0, 1, 2, 0], [0, 1, 2, 1])
    report = build_report(results, patch_ref="p@1", hashes=HASHES, policy=_policy(max_accuracy_drop=0.0))
    assert report.verdict == "fail"
    assert report.failed_gates == ["max_accuracy_drop"]
    (gate,) = report.gates
    assert (gate.name, gate.threshold, gate.value, gate.passed) == ("max_accuracy_drop", 0.0, 0.25, False)
    assert report.policy["gates"] == {"max_accuracy_drop": 0.0}


def test_a_zero_gate_passes_at_exactly_zero():
    results = _results([0, 1, 2, 0], [0, 1, 2, 0], [0, 1, 2, 0])
    report = build_report(results, patch_ref="p@1", hashes=HASHES,
                          policy=_policy(max_accuracy_drop=0.0, max_right_to_wrong_rate=0.0))
    assert report.verdict == "pass" and report.failed_gates == []
    assert [(g.name, g.value, g.passed) for g in report.gates] == [
        ("max_right_to_wrong_rate", 0.0, True), ("max_accuracy_drop", 0.0, True)]


@pytest.mark.parametrize(("threshold", "passed"), [(0.25, True), (0.2499, False)])
def test_upper_bounds_are_inclusive(threshold, passed):
    results = _results([0, 1, 2, 0], [0, 1, 2, 0], [0, 1, 2, 1])
    report = build_report(results, patch_ref="p@1", hashes=HASHES, policy=_policy(max_right_to_wrong_rate=threshold))
    assert report.gates[0].value == 0.25 and report.gates[0].passed is passed


@pytest.mark.parametrize(("threshold", "passed"), [(0.5, True), (0.5001, False)])
def test_lower_bounds_are_inclusive(threshold, passed):
    # the targets: two wrong before, one of them fixed -> fix rate 0.5
    results = _results([0, 1, 2, 0], [0, 1, 2, 0], [0, 1, 2, 0])
    targets = _results([0, 1], [1, 2], [0, 0])
    report = build_report(results, patch_ref="p@1", hashes=HASHES, targets=targets,
                          policy=_policy(min_target_fix_rate=threshold))
    assert report.gates[0].value == 0.5 and report.gates[0].passed is passed
    assert report.verdict == ("pass" if passed else "fail")


def test_an_unmeasurable_gate_holds():
    results = _results([0, 1], [0, 1], [0, 1])
    report = build_report(results, patch_ref="p@1", hashes=HASHES, policy=_policy(min_target_fix_rate=1.0))
    (gate,) = report.gates
    assert (gate.value, gate.passed) == (None, True)


def test_the_packaged_policy_is_the_fallback_outside_a_checkout(tmp_path, monkeypatch):
    from steerpatch.validate import policy as policy_module

    assert policy_module.default_policy_path() == policy_module.REPO_POLICY
    monkeypatch.setattr(policy_module, "REPO_POLICY", tmp_path / "registry" / "policy.toml")
    assert policy_module.default_policy_path() == policy_module.PACKAGED_POLICY
    assert policy_module.load_policy().source == str(policy_module.PACKAGED_POLICY)


def test_a_bad_policy_lists_each_problem_by_its_dotted_key(tmp_path):
    from steerpatch.errors import SteerpatchError
    from steerpatch.validate.policy import load_policy

    path = tmp_path / "p.toml"
    path.write_text("[gates]\nmax_right_to_wrong_rat = 0.1\n[data]\nmax_undecodable_rate = 2\n")
    with pytest.raises(SteerpatchError) as info:
        load_policy(path)
    assert str(info.value).splitlines()[0] == f"policy file '{path}' has 2 problem(s); fix them"
    assert [p.split(":")[0] for p in info.value.problems] == ["gates.max_right_to_wrong_rat", "data.max_undecodable_rate"]


def test_a_policy_is_read_as_utf8_under_any_locale(tmp_path):
    import os
    import subprocess
    import sys

    path = tmp_path / "p.toml"
    path.write_text("# seuil réglé à la main — 0.5\n[gates]\nmin_cos_mean = 0.5\n", encoding="utf-8")
    # an ASCII locale without Python's UTF-8 coercion: only an explicit encoding reads the file
    import steerpatch

    # the child imports the same steerpatch this process runs (a mutation-testing copy included)
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0",
               PYTHONPATH=str(Path(steerpatch.__file__).parents[1]))
    code = f"from steerpatch.validate.policy import load_policy; print(load_policy({str(path)!r}).gates.min_cos_mean)"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    # in-process too: the same value (and mutation testing sees that this test exercises load_policy)
    from steerpatch.validate.policy import load_policy

    assert done.stdout.strip() == str(load_policy(path).gates.min_cos_mean) == "0.5"
