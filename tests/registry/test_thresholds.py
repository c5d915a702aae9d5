"""The policy gates as MLflow `MetricThreshold`s: `mlflow.validate_evaluation_results` agrees with steerpatch."""

from __future__ import annotations

import json

import pytest

from steerpatch.errors import RegistryError
from steerpatch.registry.metrics import metric_thresholds, mlflow_failed_gates
from steerpatch.validate.policy import load_policy
from steerpatch.validate.report import judge, load_report


@pytest.mark.parametrize("right_to_wrong", [0, 2, 3, 5])
def test_mlflow_gives_steerpatchs_verdict(workspace, right_to_wrong):
    policy = load_policy(workspace.policy)
    report = load_report(workspace.candidate(right_to_wrong=right_to_wrong).report)
    ours = judge(report, policy)
    assert mlflow_failed_gates(report, policy) == ours.failed_gates
    # 2 of 100 sits on the 0.02 threshold: it passes the flip gate in both vocabularies
    assert ("max_right_to_wrong_rate" in ours.failed_gates) is (right_to_wrong > 2)
    assert (ours.verdict == "pass") is (right_to_wrong <= 2)


def test_thresholds_name_the_logged_metrics(workspace):
    thresholds = metric_thresholds(load_policy(workspace.policy))
    flips, cos = thresholds["right_to_wrong_rate"], thresholds["cos_drift_mean"]
    assert (flips.threshold, flips.greater_is_better) == (pytest.approx(0.02), False)
    assert (cos.threshold, cos.greater_is_better) == (pytest.approx(0.8), True)


def test_a_report_without_a_metric_a_gate_needs_is_a_one_line_error(workspace, tmp_path):
    path = workspace.candidate().report
    doc = json.loads(path.read_text())
    assert "min_target_fix_rate" in doc["unmeasured_gates"]
    doc["unmeasured_gates"] = []  # no longer declared unmeasured, and still nothing to measure it on
    report = load_report(path).model_validate(doc)
    with pytest.raises(RegistryError, match=r"no value for metric 'target_fix_rate' that gate min_target_fix_rate") as err:
        mlflow_failed_gates(report, load_policy(workspace.policy))
    assert "\n" not in str(err.value)
