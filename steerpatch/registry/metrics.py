"""Validation results as MLflow metrics on a patch's LoggedModel, linked to the held-out dataset.

A registered patch carries its report as an artifact; this module also writes the report's numbers as
LoggedModel metrics so that the MLflow UI can compare versions side by side and
`mlflow.search_logged_models(filter_string="metrics.right_to_wrong_rate < 0.01")` can ask questions of
them. The numbers come from the report (checked against its own counts by `registry/evidence.py`
before registration); the gate values are `evidence.rederived_values`, never a second computation.

Metric names (one home; the README table lists them):
    accuracy_before, accuracy_after, accuracy_drop, worst_group_accuracy_before,
    worst_group_accuracy_after, group_accuracy_after.<group>, worst_class_accuracy_drop,
    right_to_wrong_rate, wrong_to_right_rate, mcnemar_p, cos_drift_mean, cos_drift_p5, kl_mean,
    target_fix_rate, generalisation_fix_rate, blast_radius_observed, n, gap_closed (with baselines).
"""

from __future__ import annotations

import math
import re
from typing import Any

from steerpatch.errors import RegistryError
from steerpatch.validate.policy import GATE_METRICS

DATASET_NAME = "heldout"
# MLflow stores a dataset digest in a 36-character column (sqlite does not enforce it, Postgres and
# MySQL do); the full fingerprint stays in the version's `steerpatch.dataset_hash` tag
DIGEST_CHARS = 36
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _as_report(report: Any) -> Any:
    from steerpatch.validate.report import ValidationReport

    return report if isinstance(report, ValidationReport) else ValidationReport.model_validate(report)


def report_metrics(report: Any) -> dict[str, float]:
    """The metrics a validation report yields, by MLflow metric name (absent values are left out).

    Args:
        report: a `ValidationReport` or its JSON mapping.

    Returns:
        metric name -> finite float.

    Example:
        >>> report_metrics(load_report("out/report.json"))["right_to_wrong_rate"]  # doctest: +SKIP
        0.0
    """
    from steerpatch.registry.evidence import rederived_values

    report = _as_report(report)
    gates = rederived_values(report)
    values: dict[str, Any] = {GATE_METRICS[g]: v for g, v in gates.items() if g in GATE_METRICS}
    values.update({
        "n": report.n,
        "accuracy_before": report.accuracy.before,
        "accuracy_after": report.accuracy.after,
        "wrong_to_right_rate": report.flips.wrong_to_right_rate,
        "mcnemar_p": report.flips.mcnemar_p,
        "cos_drift_p5": report.drift.cos_p5,
        "kl_mean": report.kl_mean,
        "blast_radius_observed": report.blast_radius_observed,
    })
    if report.worst_group is not None:
        values["worst_group_accuracy_before"] = report.worst_group.before
        values["worst_group_accuracy_after"] = report.worst_group.after
    for group, scores in report.groups.items():
        values[f"group_accuracy_after.{_SAFE.sub('_', group)}"] = scores.after
    # another report field arriving with baselines; read it only where the report has it
    gap = getattr(report, "gap_closed", None)
    if isinstance(gap, int | float):
        values["gap_closed"] = gap
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)}


def dataset_entity(fingerprint: str, source: str | None) -> Any:
    """The held-out dataset as an MLflow `Dataset`: digest = steerpatch's fingerprint, source = its location.

    Args:
        fingerprint: the report's `hashes.dataset` (sha256 hex).
        source: where the data lives (a folder, a URI); None when unknown.

    Returns:
        An `mlflow.data.meta_dataset.MetaDataset`.
    """
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    if not re.fullmatch(r"[0-9a-f]{16,128}", fingerprint or ""):
        raise RegistryError(f"dataset fingerprint {fingerprint!r} is not a hex digest; re-run `steerpatch validate`")
    if source is None:
        dataset_source: Any = _unknown_source(fingerprint)
    else:
        with warnings.catch_warnings():
            # a local path matches MLflow's local source twice over; it picks the same class either way
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            try:
                dataset_source = resolve_dataset_source(source)
            except Exception as error:  # noqa: BLE001 - MLflow raises its own type per resolver
                raise RegistryError(
                    f"dataset location {source!r} is not one MLflow can record ({error}); pass a folder or a URI"
                ) from None
    return MetaDataset(dataset_source, name=DATASET_NAME, digest=fingerprint[:DIGEST_CHARS])  # type: ignore[abstract]


def _unknown_source(fingerprint: str) -> Any:
    """A source for data whose location was not given: it names the fingerprint only."""
    from mlflow.data.dataset_source import DatasetSource

    class SteerpatchDatasetSource(DatasetSource):
        @staticmethod
        def _get_source_type() -> str:
            return "steerpatch"

        def load(self) -> Any:
            raise RegistryError("the held-out data's location was not recorded; pass --data to `steerpatch register`")

        @staticmethod
        def _can_resolve(raw_source: Any) -> bool:
            return False

        @classmethod
        def _resolve(cls, raw_source: Any) -> DatasetSource:
            raise NotImplementedError

        def to_dict(self) -> dict[str, Any]:
            return {"uri": f"steerpatch-dataset:{fingerprint}"}

        @classmethod
        def from_dict(cls, source_dict: dict[str, Any]) -> DatasetSource:
            raise NotImplementedError

    return SteerpatchDatasetSource()


def log_model_metrics(
    c: Any, experiment: str, model_id: str, metrics: dict[str, float], *, dataset: Any = None, run_name: str
) -> str:
    """Log `metrics` on LoggedModel `model_id` through one run, linked to `dataset` when given.

    Args:
        c: an `MlflowClient`.
        experiment: the experiment id.
        model_id: the LoggedModel.
        metrics: metric name -> value.
        dataset: an MLflow `Dataset` (logged as the run's input) or None.
        run_name: the run's name.

    Returns:
        The run id.
    """
    import time

    from mlflow.entities import DatasetInput, InputTag, LoggedModelInput, Metric
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    run = c.create_run(experiment, run_name=run_name)
    run_id = run.info.run_id
    try:
        name = digest = None
        inputs = []
        if dataset is not None:
            entity = dataset._to_mlflow_entity()
            inputs = [DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, "validation")])]
            name, digest = entity.name, entity.digest
        c.log_inputs(run_id, datasets=inputs, models=[LoggedModelInput(model_id)])
        now = int(time.time() * 1000)
        batch = [
            Metric(key, value, now, 0, model_id=model_id, dataset_name=name, dataset_digest=digest, run_id=run_id)
            for key, value in sorted(metrics.items())
        ]
        c.log_batch(run_id, metrics=batch)
        _terminate(c, run_id, "FINISHED")
    except BaseException:
        _terminate(c, run_id, "FAILED")
        raise
    return run_id


def _terminate(c: Any, run_id: str, status: str) -> None:
    # MLflow prints "View run ... at: URL" for a server store; stdout is the CLI's (`--json`), and the
    # version's LoggedModel already links the run
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        c.set_terminated(run_id, status)


def graph_metrics(info: Any, size_bytes: int) -> dict[str, float]:
    """A compiled graph's parity and size metrics (from its `GraphInfo`)."""
    values = {
        "parity_max_abs_diff": info.parity_max_abs_diff,
        "parity_tolerance": info.parity_tolerance,
        "parity_samples": info.parity_samples,
        "graph_size_bytes": size_bytes,
        "extra_weights": info.extra_weights,
    }
    values.update({f"parity_max_abs_diff.{_SAFE.sub('_', k)}": v for k, v in info.parity_per_output.items()})
    return {k: float(v) for k, v in values.items() if math.isfinite(float(v))}


def logged_model_metrics(c: Any, model_id: str) -> dict[str, float]:
    """The metrics a LoggedModel carries, by name (last value of each)."""
    model = c.get_logged_model(model_id)
    return {m.key: float(m.value) for m in (model.metrics or [])}


def log_graph_metrics(c: Any, experiment: str, model_id: str, info: Any, size_bytes: int) -> str:
    """Log a compiled graph's parity and size metrics on its LoggedModel (see `graph_metrics`).

    Returns:
        The run id.
    """
    return log_model_metrics(
        c, experiment, model_id, graph_metrics(info, size_bytes), run_name=f"compile {info.patch_ref}"
    )


def metric_thresholds(policy: Any) -> dict[str, Any]:
    """The policy's active gates as `mlflow.models.MetricThreshold`s, by metric name.

    A measured value passes a steerpatch gate within a float slack of 1e-9 (`validate.report`); the
    thresholds carry the same slack so both verdicts agree at the boundary.

    Args:
        policy: a `steerpatch.validate.policy.Policy`.

    Returns:
        metric name -> MetricThreshold (for `mlflow.validate_evaluation_results`).
    """
    from mlflow.models import MetricThreshold

    from steerpatch.validate.report import _TOL

    out = {}
    for metric, spec in policy.gates.metric_thresholds().items():
        upper = not spec["greater_is_better"]
        threshold = float(spec["threshold"]) + (_TOL if upper else -_TOL)
        out[metric] = MetricThreshold(threshold=threshold, greater_is_better=bool(spec["greater_is_better"]))
    return out


def mlflow_failed_gates(report: Any, policy: Any) -> list[str]:
    """The gates `mlflow.validate_evaluation_results` fails for a report under a policy.

    A gate the report declares unmeasured (`unmeasured_gates`) holds, as in steerpatch's verdict for a
    run; MLflow has no such notion, so it is left out of the thresholds (see the README).

    Args:
        report: a `ValidationReport` or its JSON mapping.
        policy: a `Policy`.

    Returns:
        Failed gate names, in policy order (empty: MLflow passes the report).

    Raises:
        RegistryError: (exit 2) when the report lacks a metric an active gate needs and does not
            declare that gate unmeasured.
    """
    import mlflow
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    report = _as_report(report)
    values = report_metrics(report)
    thresholds = metric_thresholds(policy)
    gate_of = {metric: gate for gate, metric in GATE_METRICS.items()}
    unmeasured = set(report.unmeasured_gates)
    failed = []
    for metric, threshold in thresholds.items():
        if metric not in values:
            if gate_of[metric] in unmeasured:
                continue
            raise RegistryError(
                f"report {report.patch} has no value for metric '{metric}' that gate {gate_of[metric]} needs; "
                f"re-run `steerpatch validate` with the data that measures it, or switch the gate off"
            )
        try:
            mlflow.validate_evaluation_results({metric: threshold}, EvaluationResult(values, {}))
        except ModelValidationFailedException:
            failed.append(gate_of[metric])
    return failed


def version_model_id(mv: Any) -> str | None:
    """The LoggedModel behind a model version (MLflow's REST answer may leave `model_id` empty)."""
    source = str(getattr(mv, "source", "") or "")
    from_source = source[len("models:/"):] if source.startswith("models:/m-") else None
    return getattr(mv, "model_id", None) or from_source
