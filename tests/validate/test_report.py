"""The report builder on hand-made per-image results: counts, gates, verdict, JSON and HTML."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from steerpatch.errors import SteerpatchError
from steerpatch.validate import Policy, build_report, load_report, write_report
from tests.helpers.reports import HASHES
from tests.helpers.reports import results_of as _results


@pytest.fixture()
def results():
    # 10 images: 2 fixed (rows 0, 1), 1 broken (row 9), the rest unchanged
    labels = [2, 2, 0, 0, 1, 1, 2, 0, 1, 0]
    before = [0, 0, 0, 0, 1, 1, 2, 1, 1, 0]
    after = [2, 2, 0, 0, 1, 1, 2, 1, 1, 2]
    groups = ["conflicting", "conflicting", "aligned", "aligned", "none", "none", "aligned", "none", "none", "aligned"]
    return _results(labels, before, after, groups, cos=[0.9, 0.91, 1, 1, 1, 1, 1, 1, 1, 0.8])


def test_counts_flips_groups_and_worst_group(results):
    report = build_report(results, patch_ref="p@1.0.0", hashes=HASHES, policy=Policy(), group_by="shortcut")
    assert report.n == 10
    assert report.accuracy.before == pytest.approx(0.7)
    assert report.accuracy.after == pytest.approx(0.8)
    assert (report.flips.right_to_wrong, report.flips.wrong_to_right) == (1, 2)
    assert report.flips.mcnemar_p == pytest.approx(1.0)
    assert report.groups["conflicting"].before == 0.0 and report.groups["conflicting"].after == 1.0
    assert report.groups["aligned"].n == 4
    assert report.worst_group.name == "aligned" and report.worst_group.after == pytest.approx(0.75)  # tie: by name
    assert report.flip_matrix.counts[0][2] == 3  # circle -> star: two fixes and one break
    assert sum(map(sum, report.flip_matrix.counts)) == 10
    assert report.blast_radius_observed == pytest.approx(0.3)
    assert report.drift.cos_min == pytest.approx(0.8)
    assert report.kl_mean > 0


def test_gates_fail_by_name_and_pass_when_loosened(results):
    strict = build_report(results, patch_ref="p@1.0.0", hashes=HASHES, policy=Policy())
    assert strict.verdict == "fail"
    # 1 of 10 flipped right->wrong (> 2%), and circle lost a point (1/4 > 5 points)
    assert set(strict.failed_gates) == {"max_right_to_wrong_rate", "max_class_accuracy_drop"}
    loose = Policy.model_validate({"gates": {"max_right_to_wrong_rate": 0.1, "max_class_accuracy_drop": 0.3}})
    report = build_report(results, patch_ref="p@1.0.0", hashes=HASHES, policy=loose)
    assert report.verdict == "pass" and report.failed_gates == []
    applicable = {g.name: g for g in report.gates}
    assert applicable["min_target_fix_rate"].value is None and applicable["min_target_fix_rate"].passed


def test_target_and_generalisation_rates_exclude_targets_from_the_same_failure_set(results):
    targets = results.take(np.array([0]))
    same = results.take(np.array([0, 1, 7]))  # 0 is the target; 1 is fixed; 7 stays wrong
    report = build_report(
        results, patch_ref="p@1.0.0", hashes=HASHES, policy=Policy(), targets=targets, same_failure=same
    )
    assert report.target_fix_rate == 1.0 and report.targets.ids_fixed == ["star/000.png"]
    assert report.same_failure.n == 2 and report.same_failure.wrong_before == 2
    assert report.generalisation_fix_rate == 0.5


def test_dose_points_are_sorted_and_counted(results):
    identity = _results(results.labels.tolist(), results.pred_before.tolist(), results.pred_before.tolist(), results.groups)
    report = build_report(
        results, patch_ref="p@1.0.0", hashes=HASHES, policy=Policy(), group_by="shortcut",
        dose={1.0: results, 0.0: identity},
    )
    assert [p.strength for p in report.dose_response] == [0.0, 1.0]
    assert report.dose_response[0].right_to_wrong == 0 and report.dose_response[0].kl_mean == 0.0
    assert report.dose_response[1].groups["conflicting"] == 1.0


def test_write_and_load_round_trip_with_embedded_plots(results, tmp_path):
    report = build_report(
        results, patch_ref="p@1.0.0", hashes=HASHES, policy=Policy(), group_by="shortcut",
        dose={0.0: results, 1.0: results}, undecodable=["star/bad.png"],
    )
    json_path, html_path = write_report(report, tmp_path / "out")
    data = json.loads(json_path.read_text())
    for key in ("verdict", "failed_gates", "accuracy", "groups", "flips", "n", "hashes", "target_fix_rate",
                "generalisation_fix_rate", "per_class", "drift", "kl_mean", "blast_radius_predicted",
                "dose_response", "worst_group"):
        assert key in data
    assert data["flips"]["right_to_wrong"] == 1 and data["groups"]["aligned"]["n"] == 4
    assert load_report(json_path) == report
    assert load_report(tmp_path / "out") == report
    html = html_path.read_text()
    assert len(re.findall(r'src="data:image/png;base64,', html)) == 5  # class, group, flips, dose, drift
    assert "star/bad.png" in html and "FAIL" in html


def test_html_escapes_untrusted_names(results, tmp_path):
    report = build_report(results, patch_ref="<script>x</script>@1.0.0", hashes=HASHES, policy=Policy())
    _, html_path = write_report(report, tmp_path)
    html = html_path.read_text()
    assert "<script>x</script>" not in html
    assert "&lt;script&gt;x&lt;/script&gt;@1.0.0" in html  # rendered, escaped


def test_load_report_refuses_bad_documents(tmp_path):
    bad = tmp_path / "report.json"
    bad.write_text("{not json")
    with pytest.raises(SteerpatchError, match="not valid JSON"):
        load_report(bad)
    bad.write_text(json.dumps({"verdict": "maybe"}))
    with pytest.raises(SteerpatchError, match="not a valid validation report"):
        load_report(bad)


def test_judge_regates_a_stored_report_under_another_policy(results, tmp_path):
    from steerpatch.validate import judge

    report = build_report(results, patch_ref="p@1.0.0", hashes=HASHES, policy=Policy())
    assert report.verdict == "fail"
    write_report(report, tmp_path)
    loose = Policy.model_validate({"gates": {"max_right_to_wrong_rate": 0.1, "max_class_accuracy_drop": -1}})
    again = judge(load_report(tmp_path), loose)
    assert again.verdict == "pass" and again.failed_gates == []
    assert "max_class_accuracy_drop" not in {g.name for g in again.gates}
    assert again.flips == report.flips  # measurements untouched
