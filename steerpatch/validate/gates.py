"""Judging a report: the value each gate measures, compared with the policy's thresholds.

A stored report can be judged again under the policy in force at promotion time without re-running
the model, because the gates read only the report's own measurements.
"""

from __future__ import annotations

from steerpatch.validate.policy import Policy
from steerpatch.validate.report_model import GateResult, ValidationReport

_TOL = 1e-9  # float slack when comparing a measured rate with a threshold


def _gate(name: str, threshold: float, value: float | None, upper: bool) -> GateResult:
    if value is None:
        return GateResult(name=name, threshold=threshold, value=None, passed=True, measured=False)
    passed = value <= threshold + _TOL if upper else value >= threshold - _TOL
    return GateResult(name=name, threshold=threshold, value=value, passed=passed)


def measurements(report: ValidationReport) -> dict[str, float | None]:
    """The value each gate compares, read from a report (None when it cannot be measured).

    Args:
        report: a built report.

    Returns:
        gate name -> measured value.
    """
    drops = [v.before - v.after for v in report.per_class.values() if v.before is not None and v.after is not None]
    overall = report.accuracy
    return {
        "max_right_to_wrong_rate": report.flips.right_to_wrong_rate,
        "max_class_accuracy_drop": max(drops) if drops else None,
        "max_accuracy_drop": (
            overall.before - overall.after if overall.before is not None and overall.after is not None else None
        ),
        "min_target_fix_rate": report.target_fix_rate,
        "min_generalisation_fix_rate": report.generalisation_fix_rate,
        "min_cos_mean": report.drift.cos_mean,
    }


def evaluate_gates(
    values: dict[str, float | None], policy: Policy, alias: str | None = None
) -> list[GateResult]:
    """Compare measured values with the policy's active gates.

    Args:
        values: gate name -> measured value (None when not measurable), as `measurements` returns.
        policy: the policy in force.
        alias: the alias a promotion would move; an unmeasured gate fails when the policy's
            `[unmeasured] blocks` names it (None: judging a run, where unmeasured gates hold).

    Returns:
        One result per active gate, in policy order.
    """
    gates = [
        _gate(name, threshold, values.get(name), upper=name.startswith("max_"))
        for name, threshold in policy.gates.active().items()
    ]
    if alias is not None and alias in policy.unmeasured.blocks:
        gates = [g if g.measured else g.model_copy(update={"passed": False}) for g in gates]
    return gates


def judge(report: ValidationReport, policy: Policy) -> ValidationReport:
    """The report with its gates, verdict and policy re-evaluated under `policy`.

    The measurements are the report's own, so a stored report can be judged again under the policy
    in force at promotion time without re-running the model.

    Args:
        report: a built (or loaded) report.
        policy: the policy to apply.

    Returns:
        A copy with `gates`, `failed_gates`, `verdict` and `policy` replaced.

    Example:
        >>> judge(load_report("out/report.json"), load_policy()).verdict  # doctest: +SKIP
        'pass'
    """
    gates = evaluate_gates(measurements(report), policy)
    failed = [g.name for g in gates if not g.passed]
    return report.model_copy(update={
        "gates": gates,
        "failed_gates": failed,
        "verdict": "fail" if failed else "pass",
        "policy": {"source": policy.source, "gates": policy.gates.active()},
        "unmeasured_gates": [g.name for g in gates if not g.measured],
    })
