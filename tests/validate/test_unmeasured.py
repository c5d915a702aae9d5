"""Gates with nothing to measure are reported as "not measured"; the policy says which aliases they block."""

from __future__ import annotations

import numpy as np

from steerpatch.cli.validate import summary
from steerpatch.validate import Policy, build_report, load_policy, load_report, write_report
from steerpatch.validate.policy import PACKAGED_POLICY
from steerpatch.validate.report import evaluate_gates, measurements
from tests.helpers.reports import HASHES
from tests.helpers.reports import results_of as _results

LOOSE = {"max_right_to_wrong_rate": 0.5, "max_class_accuracy_drop": 0.5}


def _report(policy):
    # every image right before and after, no targets and no same-failure set given
    results = _results([0, 1, 2, 0], [0, 1, 2, 0], [0, 1, 2, 0])
    return build_report(results, patch_ref="p@1.0.0", hashes=HASHES, policy=policy)


def test_unmeasured_gates_are_named_in_the_report_and_the_summary(tmp_path):
    report = _report(Policy.model_validate({"gates": LOOSE}))
    assert report.unmeasured_gates == ["min_target_fix_rate", "min_generalisation_fix_rate"]
    by_name = {g.name: g for g in report.gates}
    assert not by_name["min_target_fix_rate"].measured and by_name["min_cos_mean"].measured
    text = summary(report)
    assert text.splitlines()[0] == (
        "p@1.0.0: PASS  (not measured: min_target_fix_rate, min_generalisation_fix_rate)"
    )
    gate_lines = [line for line in text.splitlines() if line.startswith("  gate min_target_fix_rate")]
    assert len(gate_lines) == 1 and gate_lines[0].endswith("not measured")
    # the fields are additive: the report still round-trips, and an older report without them loads
    json_path, html_path = write_report(report, tmp_path / "out")
    assert load_report(json_path).unmeasured_gates == report.unmeasured_gates
    assert "Not measured" in html_path.read_text()
    old = report.model_dump(mode="json")
    old.pop("unmeasured_gates")
    for gate in old["gates"]:
        gate.pop("measured")
    legacy = tmp_path / "legacy.json"
    import json

    legacy.write_text(json.dumps(old))
    assert load_report(legacy).verdict == "pass"


def test_the_shipped_policy_blocks_production_while_a_gate_is_unmeasured():
    policy = load_policy(PACKAGED_POLICY).model_copy(
        update={"gates": Policy.model_validate({"gates": LOOSE}).gates}
    )
    values = measurements(_report(policy))
    blocked = evaluate_gates(values, policy, alias="production")
    assert [g.name for g in blocked if not g.passed] == ["min_target_fix_rate", "min_generalisation_fix_rate"]
    assert all(g.passed for g in evaluate_gates(values, policy, alias="staging"))
    assert all(g.passed for g in evaluate_gates(values, policy))  # judging a run: unmeasured gates hold
    # measured, the same gates pass for production
    values.update(min_target_fix_rate=1.0, min_generalisation_fix_rate=0.5)
    assert all(g.passed for g in evaluate_gates(values, policy, alias="production"))


def test_a_policy_that_says_nothing_blocks_nothing():
    policy = Policy.model_validate({"gates": LOOSE})
    assert all(g.passed for g in evaluate_gates(measurements(_report(policy)), policy, alias="production"))
    assert np.isfinite(_report(policy).drift.cos_mean)
