"""Validation results as MLflow LoggedModel metrics linked to the held-out dataset; searchable by MLflow."""

from __future__ import annotations

import json

import pytest

from steerpatch.validate.report import load_report


@pytest.fixture(scope="module")
def registered(tmp_path_factory, make_store):
    """One store with a passing (1.0.0) and a failing (1.1.0, 5 right->wrong flips) version."""
    from steerpatch.registry import register_patch

    uri, ws = make_store(tmp_path_factory.mktemp("metrics"))
    good, bad = ws.candidate(version="1.0.0"), ws.candidate(version="1.1.0", right_to_wrong=5)
    v1 = register_patch(good.patch, good.report, tracking_uri=uri, dataset_source="/data/heldout")
    v2 = register_patch(bad.patch, bad.report, tracking_uri=uri)
    return uri, ws, (good, v1), (bad, v2)


def test_register_logs_report_numbers_as_linked_metrics(registered):
    from steerpatch.registry.store import client, resolve_store

    uri, _, (good, v1), (bad, v2) = registered
    c = client(resolve_store(uri))
    report = load_report(bad.report)
    model = c.get_logged_model(v2.logged_model_id)
    got = {m.key: m for m in model.metrics}
    assert got["right_to_wrong_rate"].value == pytest.approx(5 / 100) == report.flips.right_to_wrong_rate
    assert got["accuracy_before"].value == pytest.approx(report.accuracy.before)
    assert got["accuracy_after"].value == pytest.approx(report.accuracy.after)
    assert got["accuracy_drop"].value == pytest.approx(report.accuracy.before - report.accuracy.after)
    assert got["worst_group_accuracy_after"].value == pytest.approx(report.worst_group.after)
    assert got["group_accuracy_after.aligned"].value == pytest.approx(report.groups["aligned"].after)
    assert got["wrong_to_right_rate"].value == pytest.approx(report.flips.wrong_to_right_rate)
    assert got["mcnemar_p"].value == pytest.approx(report.flips.mcnemar_p)
    assert got["cos_drift_mean"].value == pytest.approx(0.95)
    assert "target_fix_rate" not in got  # not measured: no metric rather than a made-up number
    fingerprint = report.hashes.dataset
    assert {(m.dataset_name, m.dataset_digest) for m in got.values()} == {("heldout", fingerprint[:36])}
    run = c.get_run(got["accuracy_after"].run_id)
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.digest == fingerprint[:36]
    # MLflow keys a dataset by name and digest: both versions were validated on the same data, so the
    # second links to the record the first created, with the location the first registration named
    assert json.loads(inp.dataset.source)["uri"] == "/data/heldout"
    assert inp.dataset.source_type == "local"
    good_model = c.get_logged_model(v1.logged_model_id)
    good_run = c.get_run(good_model.metrics[0].run_id)
    assert good_run.inputs.dataset_inputs[0].dataset.digest == fingerprint[:36]


def test_search_logged_models_finds_exactly_the_passing_versions(registered):
    import mlflow

    from steerpatch.registry.store import client, experiment_id, mlflow_uris, resolve_store

    uri, _, (_, v1), (_, v2) = registered
    store = resolve_store(uri)
    with mlflow_uris(store):
        found = mlflow.search_logged_models(
            experiment_ids=[experiment_id(client(store), store)],
            filter_string="metrics.right_to_wrong_rate < 0.01",
            output_format="list",
        )
    assert {m.model_id for m in found} == {v1.logged_model_id}
    assert v2.logged_model_id != v1.logged_model_id


def test_history_metrics_and_diff_show_the_logged_numbers(registered, runner):
    from steerpatch.cli.main import cli

    uri, _, (good, v1), (bad, v2) = registered
    out = runner.invoke(cli, ["history", v1.name, "--metrics", "--tracking-uri", uri, "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["version"]: r["metrics"] for r in json.loads(out.stdout)["versions"]}
    assert rows["1"]["right_to_wrong_rate"] == 0.0
    assert rows["2"]["right_to_wrong_rate"] == pytest.approx(0.05)
    text = runner.invoke(cli, ["history", v1.name, "--metrics", "--tracking-uri", uri])
    assert "right_to_wrong_rate=0.05" in text.stdout and "accuracy_after=0.95" in text.stdout
    assert "metrics:" not in runner.invoke(cli, ["history", v1.name, "--tracking-uri", uri]).stdout

    out = runner.invoke(cli, ["diff", f"{v1.name}@1", f"{v1.name}@2", "--tracking-uri", uri])
    assert out.exit_code == 0, out.output
    assert "~ right_to_wrong_rate: 0 -> 0.05  (+0.05)" in out.stdout
    assert "~ accuracy_after: 1 -> 0.95  (-0.05)" in out.stdout
    assert "  accuracy_before: 0.9 -> 0.9" in out.stdout  # unchanged numbers are shown, unmarked
    doc = json.loads(runner.invoke(cli, ["diff", f"{v1.name}@1", f"{v1.name}@2", "--tracking-uri", uri, "--json"]).stdout)
    assert doc["metrics"]["wrong_to_right_rate"] == {"a": 0.1, "b": 0.1}
