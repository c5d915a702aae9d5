"""What a validation report proves: gate values re-derived from its raw counts, and its consistency.

Promotion never reads a report's `gates` values or its `verdict`: those are conclusions, and a file
can claim any conclusion. It reads the counts (images, correct before and after per class and per
group, right->wrong and wrong->right flips, fixed targets) and derives every gate value from them;
then it checks that every derived number the report states (rates, accuracies, the McNemar p-value,
the flip matrix, the dose-response end points, the cosine histogram, the gate values and verdict)
follows from those counts. A report whose numbers contradict each other was edited, and is refused.

    problems = consistency_problems(report)          # [] for a report steerpatch wrote
    values = rederived_values(report)                # gate name -> value, from counts only
"""

from __future__ import annotations

import math
from typing import Any

_TOL = 1e-6


def _close(a: float | None, b: float | None, tol: float = _TOL) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


def _count(rate: float | None, n: int, where: str, problems: list[str]) -> int:
    """The count behind an accuracy over `n` images (it must be k/n for a whole k)."""
    if n == 0 or rate is None:
        if rate is not None or (n and rate is None):
            problems.append(f"{where}: accuracy {rate!r} over n={n} images")
        return 0
    k = round(rate * n)
    if not 0 <= k <= n or abs(rate * n - k) > 1e-6 * max(n, 1):
        problems.append(f"{where}: accuracy {rate!r} is not a whole count of n={n} images")
    return min(max(k, 0), n)


def _counts(report: Any, problems: list[str]) -> dict[str, Any]:
    n = report.n
    counts: dict[str, Any] = {
        "n": n,
        "before": _count(report.accuracy.before, report.accuracy.n, "accuracy.before", problems),
        "after": _count(report.accuracy.after, report.accuracy.n, "accuracy.after", problems),
        "classes": {},
    }
    for name, value in report.per_class.items():
        counts["classes"][name] = (
            value.n,
            _count(value.before, value.n, f"per_class.{name}.before", problems),
            _count(value.after, value.n, f"per_class.{name}.after", problems),
        )
    return counts


def rederived_values(report: Any) -> dict[str, float | None]:
    """Every gate's value, derived from the report's counts alone (never from `report.gates`).

    Args:
        report: a `ValidationReport`.

    Returns:
        gate name -> value (None when the report holds nothing to measure it on).
    """
    problems: list[str] = []
    counts = _counts(report, problems)
    n = counts["n"]
    drops = [(b - a) / m for m, b, a in counts["classes"].values() if m]

    def fix_rate(fix: Any) -> float | None:
        return fix.fixed / fix.wrong_before if fix is not None and fix.wrong_before else None

    return {
        "max_right_to_wrong_rate": report.flips.right_to_wrong / n if n else 0.0,
        "max_class_accuracy_drop": max(drops) if drops else None,
        "max_accuracy_drop": (counts["before"] - counts["after"]) / n if n else None,
        "min_target_fix_rate": fix_rate(report.targets),
        "min_generalisation_fix_rate": fix_rate(report.same_failure),
        # cosines are not counts; the histogram check below bounds the mean by its bins
        "min_cos_mean": report.drift.cos_mean,
    }


def _check_sums(report: Any, counts: dict[str, Any], problems: list[str]) -> None:
    n = counts["n"]
    if report.accuracy.n != n:
        problems.append(f"accuracy.n is {report.accuracy.n} but n is {n}")
    if list(report.per_class) != list(report.classes) or report.flip_matrix.classes != report.classes:
        problems.append("per_class and flip_matrix do not list the report's classes")
    for label, index in (("n", 0), ("correct before", 1), ("correct after", 2)):
        total = sum(v[index] for v in counts["classes"].values())
        want = (n, counts["before"], counts["after"])[index]
        if total != want:
            problems.append(f"per_class {label} add up to {total}, not {want}")
    matrix = report.flip_matrix.counts
    if sum(map(sum, matrix)) != n:
        problems.append(f"flip_matrix counts add up to {sum(map(sum, matrix))}, not n={n}")
    changed = n - sum(matrix[i][i] for i in range(min(len(matrix), len(report.classes))))
    if not _close(report.blast_radius_observed, changed / n if n else 0.0):
        problems.append(f"blast_radius_observed is {report.blast_radius_observed}, the flip matrix says {changed}/{n}")
    if report.groups:
        group_n = sum(v.n for v in report.groups.values())
        group_before = sum(_count(v.before, v.n, f"groups.{g}.before", problems) for g, v in report.groups.items())
        group_after = sum(_count(v.after, v.n, f"groups.{g}.after", problems) for g, v in report.groups.items())
        if (group_n, group_before, group_after) != (n, counts["before"], counts["after"]):
            problems.append(
                f"groups add up to n={group_n}, correct {group_before} -> {group_after}, "
                f"not n={n}, correct {counts['before']} -> {counts['after']}"
            )
        scored = [(v.after, g) for g, v in report.groups.items() if v.after is not None]
        worst = min(scored)[1] if scored else None
        if (report.worst_group.name if report.worst_group else None) != worst:
            problems.append(f"worst_group is not the group with the lowest accuracy after ({worst})")
    if report.n_undecodable != len(report.undecodable):
        problems.append(f"n_undecodable is {report.n_undecodable} but {len(report.undecodable)} ids are listed")


def _check_flips(report: Any, counts: dict[str, Any], problems: list[str]) -> None:
    from steerpatch.validate.metrics import mcnemar_exact_p

    n, flips = counts["n"], report.flips
    r2w, w2r = flips.right_to_wrong, flips.wrong_to_right
    if r2w < 0 or w2r < 0 or r2w > counts["before"] or w2r > n - counts["before"]:
        problems.append(f"flips {r2w} right->wrong, {w2r} wrong->right are impossible with {counts['before']}/{n} right")
    if counts["after"] - counts["before"] != w2r - r2w:
        problems.append(
            f"correct {counts['before']} -> {counts['after']} does not follow from {r2w} right->wrong "
            f"and {w2r} wrong->right flips"
        )
    for label, value, count in (("right_to_wrong_rate", flips.right_to_wrong_rate, r2w),
                                ("wrong_to_right_rate", flips.wrong_to_right_rate, w2r)):
        if not _close(value, count / max(n, 1)):
            problems.append(f"flips.{label} is {value}, but {count}/{n} is {count / max(n, 1)}")
    if not _close(flips.mcnemar_p, mcnemar_exact_p(r2w, w2r)):
        problems.append(f"flips.mcnemar_p is {flips.mcnemar_p}, the flip counts give {mcnemar_exact_p(r2w, w2r)}")
    for point in report.dose_response:
        if _close(point.strength, 1.0) and (point.right_to_wrong, point.wrong_to_right) != (r2w, w2r):
            problems.append("dose_response at strength 1 does not repeat the report's flips")
        if _close(point.strength, 0.0) and (point.right_to_wrong, point.wrong_to_right) != (0, 0):
            problems.append("dose_response at strength 0 has flips")


def _check_fix_sets(report: Any, problems: list[str]) -> None:
    for label, fix, rate in (("targets", report.targets, report.target_fix_rate),
                             ("same_failure", report.same_failure, report.generalisation_fix_rate)):
        if fix is None:
            if rate is not None:
                problems.append(f"{label} is absent but its fix rate is {rate}")
            continue
        if not 0 <= fix.fixed <= fix.wrong_before <= fix.n or len(fix.ids_fixed) != fix.fixed:
            problems.append(f"{label}: fixed {fix.fixed} of {fix.wrong_before} wrong of n={fix.n} is impossible")
        want = fix.fixed / fix.wrong_before if fix.wrong_before else None
        if not _close(rate, want):
            problems.append(f"{label} fix rate is {rate}, its counts give {want}")


def _check_drift(report: Any, n: int, problems: list[str]) -> None:
    drift = report.drift
    if not (drift.cos_min - _TOL <= drift.cos_p5 and drift.cos_min - _TOL <= drift.cos_mean <= 1 + _TOL):
        problems.append(f"drift: min {drift.cos_min}, p5 {drift.cos_p5}, mean {drift.cos_mean} are out of order")
    edges, bins = drift.histogram.get("edges") or [], drift.histogram.get("counts") or []
    if n and len(edges) == len(bins) + 1 and bins:
        if round(sum(bins)) != n:
            problems.append(f"drift.histogram counts add up to {sum(bins)}, not n={n}")
        low = sum(c * edges[i] for i, c in enumerate(bins)) / n
        high = sum(c * edges[i + 1] for i, c in enumerate(bins)) / n
        if not low - _TOL <= drift.cos_mean <= high + _TOL:
            problems.append(f"drift.cos_mean {drift.cos_mean} lies outside what its histogram allows [{low:.4f}, {high:.4f}]")


def _check_gates(report: Any, values: dict[str, float | None], problems: list[str]) -> None:
    for gate in report.gates:
        derived = values.get(gate.name)
        if not _close(gate.value, derived):
            problems.append(f"gates.{gate.name}.value is {gate.value}, the counts give {derived}")
    failed = [g.name for g in report.gates if not g.passed]
    if failed != list(report.failed_gates) or report.verdict != ("fail" if failed else "pass"):
        problems.append(f"verdict {report.verdict!r} / failed_gates {report.failed_gates} do not follow from its gates")


def consistency_problems(report: Any, patch: Any = None) -> list[str]:
    """Every number of a report that does not follow from its counts (empty when all do).

    Args:
        report: a `ValidationReport`.
        patch: the patch it is said to validate; when given, the report must name it and its edited latents.

    Returns:
        One line per contradiction found.
    """
    problems: list[str] = []
    counts = _counts(report, problems)
    _check_sums(report, counts, problems)
    _check_flips(report, counts, problems)
    _check_fix_sets(report, problems)
    _check_drift(report, counts["n"], problems)
    _check_gates(report, rederived_values(report), problems)
    if patch is not None:
        if report.patch != patch.ref:
            problems.append(f"patch is {report.patch!r} but the patch is {patch.ref!r}")
        predicted = report.blast_radius_predicted
        edited = {str(e.latent) for e in patch.edits}
        if predicted is not None and predicted.latents and set(predicted.latents) != edited:
            problems.append(
                f"blast_radius_predicted names latents {sorted(predicted.latents)}, the patch edits {sorted(edited)}"
            )
    return problems
