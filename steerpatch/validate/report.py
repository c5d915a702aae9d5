"""The validation report: what a patch fixed, what else it changed, and whether it passes the policy.

`build_report` only counts: it takes per-image results from any engine (local or a cluster) and
needs no model. The report is a strict, versioned pydantic document written as JSON beside an HTML page.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from steerpatch.errors import SteerpatchError
from steerpatch.validate.metrics import (
    ImageResults,
    accuracy,
    fix_rate,
    histogram,
    kl_rows,
    mcnemar_exact_p,
)
from steerpatch.validate.policy import Policy

_TOL = 1e-9  # float slack when comparing a measured rate with a threshold


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BeforeAfter(_Strict):
    before: float | None  # accuracy without the patch (None for an empty set)
    after: float | None  # accuracy with the patch
    n: int


class WorstGroup(BeforeAfter):
    name: str


class Flips(_Strict):
    right_to_wrong: int
    wrong_to_right: int
    right_to_wrong_rate: float  # of all n images
    wrong_to_right_rate: float
    mcnemar_p: float  # exact two-sided test that the two flip counts differ by chance


class FlipMatrix(_Strict):
    classes: list[str]
    counts: list[list[int]]  # counts[i][j]: predicted class i before, j after


class FixSet(_Strict):
    n: int
    wrong_before: int
    fixed: int  # wrong before, right after
    broken: int  # right before, wrong after
    ids_fixed: list[str] = Field(default_factory=list)


class Drift(_Strict):
    cos_mean: float  # mean cosine(original, patched embedding)
    cos_p5: float  # 5th percentile
    cos_min: float
    histogram: dict[str, list[float]]  # edges, counts


class BlastRadius(_Strict):
    fraction: float  # predicted share of images an edit touches
    by_class: dict[str, float]
    by_group: dict[str, float]
    latents: dict[str, float]  # firing rate per edited latent
    source: Literal["latent_stats", "dataset"]


class DosePoint(_Strict):
    strength: float  # 0 = unpatched, 1 = the patch as written
    accuracy: float | None
    right_to_wrong: int
    wrong_to_right: int
    cos_mean: float
    kl_mean: float
    groups: dict[str, float | None] = Field(default_factory=dict)


class GateResult(_Strict):
    name: str
    threshold: float
    value: float | None  # None: nothing to measure (no targets given, say); the gate then holds
    passed: bool
    measured: bool = True  # False when value is None: reported as "not measured"


class Hashes(_Strict):
    patch: str
    model: str
    sae: str
    dataset: str


class FloorBaseline(_Strict):
    worst_group: float | None  # mean over draws of the worst group accuracy with random latents
    accuracy: float
    draws: int
    worst_group_draws: list[float | None]


class CeilingBaseline(_Strict):
    worst_group: float | None  # worst group accuracy of the DFR re-fit on the evaluation half
    accuracy: float
    before_worst_group: float | None  # the zero-shot head's worst group on the same half
    n_fit: int
    n_eval: int
    method: str


class Baselines(_Strict):
    """A floor and a ceiling to read the patch's numbers against (see `steerpatch.validate.baselines`)."""

    floor: FloorBaseline | None
    ceiling: CeilingBaseline | None


class BlastRadiusEstimate(_Strict):
    """The share of changed predictions, estimated from a sample before the full run, and then observed."""

    predicted: float
    low: float  # 95% interval of the estimate
    high: float
    observed: float
    sample: int  # images run to make the estimate
    touched: float  # share of images the edits change at the hook at all
    method: str


class ValidationReport(_Strict):
    """A patch's validation on one labelled held-out dataset.

    Example:
        >>> report = load_report("registry/patches/water/report.json")  # doctest: +SKIP
        >>> report.verdict, report.flips.right_to_wrong  # doctest: +SKIP
        ('pass', 3)
    """

    format_version: Literal[1] = 1
    verdict: Literal["pass", "fail"]
    failed_gates: list[str]
    gates: list[GateResult]
    patch: str  # name@version
    engine: str
    n: int  # images evaluated (decodable)
    n_undecodable: int
    undecodable: list[str]  # their ids
    classes: list[str]
    accuracy: BeforeAfter
    per_class: dict[str, BeforeAfter]
    group_by: str | None
    groups: dict[str, BeforeAfter]
    worst_group: WorstGroup | None  # lowest accuracy after the patch
    flips: Flips
    flip_matrix: FlipMatrix
    target_fix_rate: float | None
    targets: FixSet | None
    generalisation_fix_rate: float | None
    same_failure: FixSet | None
    drift: Drift
    kl_mean: float  # mean KL(before || after) of the class distributions, nats
    blast_radius_predicted: BlastRadius | None
    blast_radius_observed: float  # share of images whose predicted class changed
    dose_response: list[DosePoint]
    hashes: Hashes
    policy: dict[str, Any]  # source file and the gates in force
    overrides: list[dict[str, str]] = Field(default_factory=list)  # fingerprint mismatches allowed explicitly
    duration_s: float
    unmeasured_gates: list[str] = Field(default_factory=list)  # active gates with nothing to measure
    # sha256 of the per-image outcomes (see `results_digest`); lets a re-run be compared exactly.
    # None in reports written before it existed.
    results_digest: str | None = None
    baselines: Baselines | None = None  # floor and ceiling, when the report is grouped
    gap_closed: float | None = None  # (worst group after - before) / (ceiling - before)
    blast_radius: BlastRadiusEstimate | None = None  # sample-based prediction beside the observed share


def _before_after(results: ImageResults) -> BeforeAfter:
    return BeforeAfter(
        before=accuracy(results.right_before), after=accuracy(results.right_after), n=len(results)
    )


def _fix_set(results: ImageResults) -> FixSet:
    wrong = ~results.right_before
    fixed = wrong & results.right_after
    _, n_wrong, n_fixed = fix_rate(results)
    return FixSet(
        n=len(results),
        wrong_before=n_wrong,
        fixed=n_fixed,
        broken=int((results.right_before & ~results.right_after).sum()),
        ids_fixed=[results.ids[i] for i in np.flatnonzero(fixed)],
    )


def _by_group(results: ImageResults) -> dict[str, BeforeAfter]:
    if results.groups is None:
        return {}
    values = np.asarray([str(g) for g in results.groups], dtype=object)
    return {g: _before_after(results.take(np.flatnonzero(values == g))) for g in sorted(set(values))}


def _flips(results: ImageResults) -> Flips:
    n = max(len(results), 1)
    r2w = int((results.right_before & ~results.right_after).sum())
    w2r = int((~results.right_before & results.right_after).sum())
    return Flips(
        right_to_wrong=r2w,
        wrong_to_right=w2r,
        right_to_wrong_rate=r2w / n,
        wrong_to_right_rate=w2r / n,
        mcnemar_p=mcnemar_exact_p(r2w, w2r),
    )


def _dose_point(strength: float, results: ImageResults) -> DosePoint:
    flips = _flips(results)
    return DosePoint(
        strength=strength,
        accuracy=accuracy(results.right_after),
        right_to_wrong=flips.right_to_wrong,
        wrong_to_right=flips.wrong_to_right,
        cos_mean=float(results.cos.mean()) if len(results) else 1.0,
        kl_mean=float(kl_rows(results.probs_before, results.probs_after).mean()) if len(results) else 0.0,
        groups={g: v.after for g, v in _by_group(results).items()},
    )


def results_digest(results: ImageResults) -> str:
    """SHA-256 of the per-image outcomes: (id, label, prediction before, prediction after), by id.

    Two runs of the same patch on the same data give the same digest exactly, whatever order the
    images were scored in; probabilities and cosines are left out because they move in the last
    float bits between machines.

    Example:
        >>> len(results_digest(results))  # doctest: +SKIP
        64
    """
    import hashlib

    rows = sorted(
        (str(i), str(results.classes[int(label)]), int(before), int(after))
        for i, label, before, after in zip(
            results.ids, results.labels, results.pred_before, results.pred_after, strict=True
        )
    )
    payload = json.dumps({"classes": list(results.classes), "rows": rows}, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


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


def build_report(
    results: ImageResults,
    *,
    patch_ref: str,
    hashes: dict[str, str],
    policy: Policy,
    targets: ImageResults | None = None,
    same_failure: ImageResults | None = None,
    group_by: str | None = None,
    blast_predicted: dict[str, Any] | None = None,
    dose: dict[float, ImageResults] | None = None,
    undecodable: Sequence[str] = (),
    engine: str = "local",
    overrides: Sequence[dict[str, str]] = (),
    duration_s: float = 0.0,
) -> ValidationReport:
    """Build the report from per-image results.

    Args:
        results: per-image results on the held-out dataset.
        patch_ref: the patch's name@version.
        hashes: patch, model, sae and dataset hashes.
        policy: the gates in force.
        targets: results on the failing instances the patch was made for, or None.
        same_failure: results on other instances of the same failure, or None; target ids are excluded.
        group_by: name of the grouping attribute `results.groups` holds, or None.
        blast_predicted: the prediction made before the run (see `steerpatch.validate.blast`).
        dose: strength -> results of the edits at that strength, for the dose-response curve.
        undecodable: ids of images that could not be read.
        engine: which engine produced the results.
        overrides: fingerprint mismatches that were allowed (see `steerpatch.steer.check_binding`).
        duration_s: wall time of the run.

    Returns:
        The report, verdict included.
    """
    classes = list(results.classes)
    per_class = {
        c: _before_after(results.take(np.flatnonzero(results.labels == i))) for i, c in enumerate(classes)
    }
    groups = _by_group(results)
    worst = None
    scored = [(g, v) for g, v in groups.items() if v.after is not None]
    if scored:
        name, value = min(scored, key=lambda gv: (gv[1].after, gv[0]))
        worst = WorstGroup(name=name, **value.model_dump())
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(matrix, (results.pred_before, results.pred_after), 1)

    target_set = _fix_set(targets) if targets is not None else None
    same_set = None
    if same_failure is not None:
        exclude = set(targets.ids) if targets is not None else set()
        keep = np.asarray([i for i, item in enumerate(same_failure.ids) if item not in exclude], dtype=np.int64)
        same_set = _fix_set(same_failure.take(keep))

    def rate(fix: FixSet | None) -> float | None:
        return fix.fixed / fix.wrong_before if fix is not None and fix.wrong_before else None

    flips = _flips(results)
    n = len(results)
    cos = results.cos if n else np.ones(1)
    drift = Drift(
        cos_mean=float(cos.mean()),
        cos_p5=float(np.percentile(cos, 5)),
        cos_min=float(cos.min()),
        histogram=histogram(cos),
    )
    kl_mean = float(kl_rows(results.probs_before, results.probs_after).mean()) if n else 0.0
    unjudged = ValidationReport(
        verdict="fail",
        failed_gates=[],
        gates=[],
        patch=patch_ref,
        engine=engine,
        n=n,
        n_undecodable=len(undecodable),
        undecodable=list(undecodable),
        classes=classes,
        accuracy=_before_after(results),
        per_class=per_class,
        group_by=group_by,
        groups=groups,
        worst_group=worst,
        flips=flips,
        flip_matrix=FlipMatrix(classes=classes, counts=matrix.tolist()),
        target_fix_rate=rate(target_set),
        targets=target_set,
        generalisation_fix_rate=rate(same_set),
        same_failure=same_set,
        drift=drift,
        kl_mean=kl_mean,
        blast_radius_predicted=BlastRadius(**blast_predicted) if blast_predicted else None,
        blast_radius_observed=float((results.pred_before != results.pred_after).mean()) if n else 0.0,
        dose_response=[_dose_point(s, r) for s, r in sorted((dose or {}).items())],
        hashes=Hashes(**hashes),
        policy={},
        overrides=list(overrides),
        duration_s=duration_s,
        results_digest=results_digest(results),
    )
    return judge(unjudged, policy)


def load_report(path: str | Path) -> ValidationReport:
    """Read a report JSON file (or the report.json in a folder).

    Raises:
        SteerpatchError: if it is missing, not JSON, or not a valid report (all problems listed).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SteerpatchError(f"report '{path}' does not exist; run `steerpatch validate … --out DIR` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SteerpatchError(f"report '{path}' is not valid JSON ({error}); regenerate it") from None
    try:
        return ValidationReport.model_validate(raw)
    except ValidationError as error:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()]
        raise SteerpatchError(f"report '{path}' is not a valid validation report", problems) from None


def write_report(report: ValidationReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write report.json and report.html (with embedded plots) into a folder, atomically each.

    Args:
        report: the report.
        out_dir: the folder; created if missing.

    Returns:
        (json path, html path).
    """
    from steerpatch.io import atomic_write_text
    from steerpatch.validate.html import render_html

    out = Path(out_dir)
    json_path = atomic_write_text(out / "report.json", report.model_dump_json(indent=2) + "\n")
    html_path = atomic_write_text(out / "report.html", render_html(report))
    return json_path, html_path
