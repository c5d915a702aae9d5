"""The validation report: what a patch fixed, what else it changed, and whether it passes the policy.

`build_report` only counts: it takes per-image results from any engine (local or a cluster) and
needs no model. The report is a strict, versioned pydantic document (`report_model.py`), judged
against the policy's gates (`gates.py`) and written as JSON beside an HTML page (`html.py`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from steerpatch.errors import SteerpatchError
from steerpatch.validate.gates import _TOL, evaluate_gates, judge, measurements
from steerpatch.validate.metrics import (
    ImageResults,
    accuracy,
    fix_rate,
    histogram,
    kl_rows,
    mcnemar_exact_p,
)
from steerpatch.validate.policy import Policy
from steerpatch.validate.report_model import (
    Baselines,
    BeforeAfter,
    BlastRadius,
    BlastRadiusEstimate,
    CeilingBaseline,
    DosePoint,
    Drift,
    FixSet,
    FlipMatrix,
    Flips,
    FloorBaseline,
    GateResult,
    Hashes,
    ValidationReport,
    WorstGroup,
)

# the report's parts and its judging live in report_model.py and gates.py; importable from here as before
__all__ = [
    "Baselines", "BeforeAfter", "BlastRadius", "BlastRadiusEstimate", "CeilingBaseline", "DosePoint",
    "Drift", "FixSet", "FlipMatrix", "Flips", "FloorBaseline", "GateResult", "Hashes",
    "ValidationReport", "WorstGroup", "_TOL", "build_report", "evaluate_gates", "judge", "load_report",
    "measurements", "results_digest", "write_report",
]


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
    decoding: str = "exact",
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
        decoding: "exact", or how images were decoded approximately (`steerpatch.pixels.FAST_DECODING`).
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
        decoding=decoding,
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
