"""The report builder at its edges: fix and break counts, empty dose points, exact file layout, load errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from steerpatch.errors import SteerpatchError
from steerpatch.validate import ImageResults, Policy, build_report, load_report, write_report

CLASSES = ["circle", "square", "star"]
HASHES = {"patch": "a" * 64, "model": "b" * 64, "sae": "c" * 64, "dataset": "d" * 64}


def _results(labels, before, after, cos=None):
    eye = np.eye(3) * 0.8 + 0.2 / 3
    n = len(labels)
    return ImageResults(
        ids=[f"{CLASSES[y]}/{i:03d}.png" for i, y in enumerate(labels)],
        labels=np.array(labels, dtype=np.int64), pred_before=np.array(before, dtype=np.int64),
        pred_after=np.array(after, dtype=np.int64), probs_before=eye[before] if n else np.zeros((0, 3)),
        probs_after=eye[after] if n else np.zeros((0, 3)), cos=np.ones(n) if cos is None else np.array(cos),
        classes=CLASSES,
    )


def test_a_fix_set_counts_fixed_and_broken_images_separately():
    # rows: 0 right->right, 1 wrong->right (fixed), 2 wrong->wrong, 3 and 4 right->wrong (broken)
    targets = _results([0] * 5, [0, 1, 1, 0, 0], [0, 0, 1, 1, 2])
    report = build_report(targets, patch_ref="p@1.0.0", hashes=HASHES, policy=Policy(), targets=targets)
    fixes = report.targets
    assert (fixes.n, fixes.wrong_before, fixes.fixed, fixes.broken) == (5, 2, 1, 2)
    assert fixes.ids_fixed == ["circle/001.png"]
    assert report.target_fix_rate == 0.5


def test_dose_points_hold_the_measured_values():
    base = _results([0, 1, 2, 0], [0, 1, 2, 1], [0, 1, 2, 1])
    dosed = _results([0, 1, 2, 0], [0, 1, 2, 1], [0, 2, 2, 0], cos=[1.0, 0.5, 0.75, 0.25])
    report = build_report(base, patch_ref="p@1.0.0", hashes=HASHES, policy=Policy(), dose={1.0: dosed})
    (point,) = report.dose_response
    assert (point.strength, point.accuracy, point.right_to_wrong, point.wrong_to_right) == (1.0, 0.75, 1, 1)
    assert point.cos_mean == 0.625
    eye = np.eye(3) * 0.8 + 0.2 / 3
    p, q = eye[[0, 1, 2, 1]], eye[[0, 2, 2, 0]]
    assert point.kl_mean == pytest.approx(float(np.mean(np.sum(p * np.log(p / q), axis=-1))), rel=1e-12)


def test_an_empty_dose_point_is_neutral():
    base = _results([0, 1], [0, 1], [0, 1])
    report = build_report(base, patch_ref="p@1.0.0", hashes=HASHES, policy=Policy(), dose={0.5: _results([], [], [])})
    (point,) = report.dose_response
    assert (point.accuracy, point.cos_mean, point.kl_mean, point.right_to_wrong) == (None, 1.0, 0.0, 0)


def test_files_are_report_json_indented_and_report_html(tmp_path):
    report = build_report(_results([0, 1], [0, 1], [0, 1]), patch_ref="p@1.0.0", hashes=HASHES, policy=Policy())
    json_path, html_path = write_report(report, tmp_path / "out")
    assert json_path == tmp_path / "out" / "report.json" and html_path == tmp_path / "out" / "report.html"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json"]
    text = json_path.read_text()
    assert text == report.model_dump_json(indent=2) + "\n"
    assert text.startswith('{\n  "format_version": 1,\n  "verdict": "pass",')


def test_a_missing_report_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(SteerpatchError) as info:
        load_report(tmp_path / "nope.json")
    assert str(info.value) == (
        f"report '{tmp_path / 'nope.json'}' does not exist; run `steerpatch validate … --out DIR` first"
    )


def test_an_invalid_report_lists_each_problem_by_its_dotted_key(tmp_path):
    report = build_report(_results([0, 1], [0, 1], [0, 1]), patch_ref="p@1.0.0", hashes=HASHES, policy=Policy())
    json_path, _ = write_report(report, tmp_path)
    data = json.loads(json_path.read_text())
    data["accuracy"]["n"] = "two"
    data["flips"]["extra"] = 1
    json_path.write_text(json.dumps(data))
    with pytest.raises(SteerpatchError) as info:
        load_report(tmp_path)
    assert str(info.value).splitlines()[0] == f"report '{json_path}' is not a valid validation report"
    assert [p.split(":")[0] for p in info.value.problems] == ["accuracy.n", "flips.extra"]


def test_flip_rates_are_shares_of_all_images():
    # 5 images: 1 right->wrong, 2 wrong->right
    report = build_report(_results([0, 1, 2, 0, 1], [0, 1, 0, 1, 1], [0, 2, 2, 0, 1]), patch_ref="p@1.0.0",
                          hashes=HASHES, policy=Policy())
    assert (report.flips.right_to_wrong_rate, report.flips.wrong_to_right_rate) == (0.2, 0.4)
    single = build_report(_results([0], [0], [1]), patch_ref="p@1.0.0", hashes=HASHES, policy=Policy())
    assert (single.flips.right_to_wrong, single.flips.right_to_wrong_rate) == (1, 1.0)


def test_an_empty_result_set_has_nothing_to_measure():
    report = build_report(_results([], [], []), patch_ref="p@1.0.0", hashes=HASHES, policy=Policy())
    assert report.n == 0 and report.accuracy.before is None and report.accuracy.after is None
    assert all(v.before is None for v in report.per_class.values())
    assert {g.name: g.value for g in report.gates} == {
        "max_right_to_wrong_rate": 0.0, "max_class_accuracy_drop": None, "max_accuracy_drop": None,
        "min_target_fix_rate": None, "min_generalisation_fix_rate": None, "min_cos_mean": 1.0,
    }
    assert report.verdict == "pass"


def test_a_report_is_read_as_utf8_under_any_locale(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import steerpatch

    report = build_report(_results([0, 1], [0, 1], [0, 1]), patch_ref="p@1.0.0", hashes=HASHES, policy=Policy())
    json_path, _ = write_report(report.model_copy(update={"engine": "lokal — é"}), tmp_path)
    env = dict(os.environ, LC_ALL="C", LANG="C", PYTHONCOERCECLOCALE="0", PYTHONUTF8="0",
               PYTHONPATH=str(Path(steerpatch.__file__).parents[1]))
    code = (f"import sys; from steerpatch.validate import load_report; "
            f"sys.stdout.buffer.write(load_report({str(json_path)!r}).engine.encode('utf-8'))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    # in-process too (and mutation testing sees that this test exercises load_report)
    assert done.stdout.decode("utf-8") == load_report(json_path).engine == "lokal — é"


def test_per_class_groups_defaults_and_pass_through_fields():
    # circle: 2 images, both right; square: 1 image, right -> wrong; star: 1 image, wrong -> right
    results = _results([0, 0, 1, 2], [0, 0, 1, 0], [0, 0, 2, 2], cos=[1.0, 0.9, 0.5, 0.2])
    blast = {"fraction": 0.5, "by_class": {}, "by_group": {}, "latents": {"3": 0.5}, "source": "dataset"}
    report = build_report(results, patch_ref="p@1.0.0", hashes=HASHES, policy=Policy(), group_by="shape",
                          blast_predicted=blast, overrides=[{"field": "model"}])
    assert {c: (v.before, v.after, v.n) for c, v in report.per_class.items()} == {
        "circle": (1.0, 1.0, 2), "square": (1.0, 0.0, 1), "star": (0.0, 1.0, 1)}
    assert report.engine == "local" and report.duration_s == 0.0 and report.group_by == "shape"
    assert report.blast_radius_predicted.fraction == 0.5 and report.overrides == [{"field": "model"}]
    assert report.drift.cos_p5 == pytest.approx(float(np.percentile([1.0, 0.9, 0.5, 0.2], 5)), abs=0)
    assert report.drift.cos_p5 != pytest.approx(float(np.percentile([1.0, 0.9, 0.5, 0.2], 6)))


def test_the_worst_group_is_the_lowest_accuracy_not_the_first_name():
    results = _results([0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 1, 0])
    results.groups = ["a", "a", "b", "b"]
    report = build_report(results, patch_ref="p@1.0.0", hashes=HASHES, policy=Policy(), group_by="g")
    assert (report.worst_group.name, report.worst_group.after) == ("b", 0.5)


def test_same_failure_without_targets_and_its_gate():
    results = _results([0, 1], [0, 1], [0, 1])
    same = _results([0, 0, 0], [1, 1, 1], [0, 1, 1])
    policy = Policy.model_validate({"gates": {"min_generalisation_fix_rate": 0.5}})
    report = build_report(results, patch_ref="p@1.0.0", hashes=HASHES, policy=policy, same_failure=same)
    assert report.generalisation_fix_rate == pytest.approx(1 / 3)
    gate = {g.name: g for g in report.gates}["min_generalisation_fix_rate"]
    assert (gate.value, gate.passed) == (pytest.approx(1 / 3), False)
    assert "min_generalisation_fix_rate" in report.failed_gates


def test_an_empty_result_set_has_neutral_drift():
    report = build_report(_results([], [], []), patch_ref="p@1.0.0", hashes=HASHES, policy=Policy())
    assert (report.kl_mean, report.blast_radius_observed) == (0.0, 0.0)
    assert (report.drift.cos_mean, report.drift.cos_min) == (1.0, 1.0)


def test_the_results_digest_is_the_sha256_of_the_sorted_per_image_outcomes():
    import hashlib

    from steerpatch.validate.report import results_digest

    labels, before, after = [2, 0, 1, 1], [2, 1, 1, 0], [0, 0, 2, 0]
    results = _results(labels, before, after)
    # written out independently: rows (id, label name, before, after) sorted by id, compact JSON, UTF-8
    outcomes = enumerate(zip(labels, before, after, strict=True))
    rows = sorted([f"{CLASSES[y]}/{i:03d}.png", CLASSES[y], b, a] for i, (y, b, a) in outcomes)
    payload = json.dumps({"classes": CLASSES, "rows": rows}, separators=(",", ":"))
    expected = hashlib.sha256(payload.encode("utf-8")).hexdigest()
    assert results_digest(results) == expected
    report = build_report(results, patch_ref="p@1.0.0", hashes=HASHES, policy=Policy())
    assert report.results_digest == expected
    # the order the images were scored in does not matter; one changed outcome does
    order = [3, 1, 0, 2]
    shuffled = ImageResults(
        ids=[results.ids[i] for i in order], labels=results.labels[order], pred_before=results.pred_before[order],
        pred_after=results.pred_after[order], probs_before=results.probs_before[order],
        probs_after=results.probs_after[order], cos=results.cos[order], classes=CLASSES,
    )
    assert results_digest(shuffled) == expected
    assert results_digest(_results(labels, before, [0, 0, 2, 1])) != expected
