"""history, diff, verify and audit read back exactly: every field of a version row, every rendered line,
every audit problem (a gate that fails under today's policy, an alias moved outside steerpatch, a move to
a deleted version, a version that does not verify, one name@version with two contents)."""

from __future__ import annotations

import json
import re

import pytest
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

from steerpatch.errors import IntegrityError, RegistryError
from steerpatch.patch import load_patch
from steerpatch.registry import audit_model, diff_versions, history, promote, verify_version
from steerpatch.registry.audit import _stamp, _version_row, format_audit, format_diff, format_history
from steerpatch.registry.store import client, resolve_store

NAME = "concept-clip.water-shortcut"
CREATED = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def _c(uri):
    return client(resolve_store(uri))


def _mv(version="4", tags=None, description="d", created=0) -> ModelVersion:
    """A real MLflow ModelVersion entity, as the client returns one."""
    return ModelVersion(
        NAME, version, created, description=description,
        tags=[ModelVersionTag(k, v) for k, v in (tags or {}).items()],
    )


def test_history_rows_hold_the_registered_values(three):
    uri, policy = three
    promote(NAME, 1, policy=policy, tracking_uri=uri)
    promote(NAME, 2, "staging", force=True, reason="try it", policy=policy, tracking_uri=uri)
    # another model's version in the same store is not part of this history
    c = _c(uri)
    c.create_registered_model("concept-clip.other")
    c.create_model_version("concept-clip.other", c.get_model_version_download_uri(NAME, "1"))
    data = history(NAME, tracking_uri=uri)
    assert data["name"] == NAME and data["aliases"] == {"production": "1", "staging": "2"}
    assert data["description"] == _c(uri).get_registered_model(NAME).description
    assert [(m["alias"], m["from"], m["to"], m["forced"]) for m in data["moves"]] == [
        ("production", None, "1", False), ("staging", None, "2", True)
    ]
    assert "metrics" not in data["versions"][0]
    rows = data["versions"]
    assert [r["version"] for r in rows] == ["1", "2", "3"]
    for row, version, folder, accuracy_after, r2w in (
        (rows[0], "1.0.0", "water-shortcut-1.0.0", 1.0, 0.0),
        (rows[1], "1.1.0", "water-shortcut-1.1.0", 0.95, 5.0),
    ):
        patch = load_patch(policy.parent / folder / "patch.json")
        report = json.loads((policy.parent / folder / "report.json").read_text())
        assert CREATED.fullmatch(row.pop("created"))
        assert row == {
            "version": rows.index(row) and "2" or "1",
            "patch_ref": f"water-shortcut@{version}",
            "patch_hash": patch.content_hash,
            "verdict": report["verdict"],
            "failed_gates": report["failed_gates"],
            "accuracy_before": 0.9,
            "accuracy_after": accuracy_after,
            "right_to_wrong": r2w,
            "wrong_to_right": 10.0,
            "author": "ada",
            "registered_by": "registrar",
            "parent": None,
            "parent_version": None,
            "aliases": ["production"] if version == "1.0.0" else ["staging"],
            "forced": {} if version == "1.0.0" else {"staging": "try it"},
            "description": f"suppress the water latent ({version})",
        }
    assert rows[1]["failed_gates"] == ["max_right_to_wrong_rate"]
    assert (rows[2]["parent"], rows[2]["parent_version"]) == ("water-shortcut@1.0.0", "1")
    with_metrics = history(NAME, tracking_uri=uri, metrics=True)
    assert [r["metrics"]["accuracy_after"] for r in with_metrics["versions"]] == [1.0, 0.95, 1.0]
    assert [r["metrics"]["n"] for r in with_metrics["versions"]] == [100.0] * 3
    with pytest.raises(RegistryError, match="nope"):
        history("concept-clip.nope", tracking_uri=uri)


def test_version_rows_read_tags_strictly():
    tags = {
        "steerpatch.accuracy_before": "", "steerpatch.accuracy_after": "None", "steerpatch.right_to_wrong": "x",
        "steerpatch.wrong_to_right": "0.5", "steerpatch.parent": "", "steerpatch.parent_version": "",
        "steerpatch.forced.prod": "why", "steerpatch.forced.": "empty", "other.forced.x": "no",
        "steerpatch.failed_gates": '["g"]',
    }
    row = _version_row(_mv(tags=tags, created=1500), {"prod": "4", "b": 4, "c": "40"})
    assert row["created"] == "1970-01-01T00:00:01Z"
    assert (row["accuracy_before"], row["accuracy_after"], row["right_to_wrong"], row["wrong_to_right"]) == (
        None, None, None, 0.5
    )
    assert (row["parent"], row["parent_version"], row["aliases"]) == (None, None, ["b", "prod"])
    assert row["forced"] == {"prod": "why", "": "empty"} and row["failed_gates"] == ["g"]
    assert _version_row(_mv(tags={}), {})["failed_gates"] == [] and _stamp(None) is None
    assert _stamp(0) == "1970-01-01T00:00:00Z"
    assert _stamp(1_700_000_000_999) == "2023-11-14T22:13:20Z"


def test_format_history_renders_every_part():
    row = {
        "version": "2", "patch_ref": "p@2", "verdict": "fail", "accuracy_before": 0.9, "accuracy_after": 0.95,
        "author": "ada", "created": "T", "parent": "p@1", "parent_version": "1", "aliases": ["a", "b"],
        "metrics": {"z": 1.23456, "a": 2.0},
    }
    bare = {**row, "version": "3", "accuracy_after": None, "parent": "p@0", "parent_version": None, "aliases": []}
    bare.pop("metrics")
    orphan = {**bare, "version": "4", "parent": None, "metrics": {}}
    move = {"when": "W", "alias": "prod", "from": "1", "to": "2", "who": "ada", "kind": "promote", "why": "y",
            "forced": True}
    data = {"name": "n", "aliases": {"prod": "2", "a": "1"}, "versions": [row, bare, orphan],
            "moves": [move, {**move, "from": None, "forced": False}]}
    assert format_history(data).splitlines() == [
        "n  aliases: a -> v1, prod -> v2",
        "versions:",
        "  v2  p@2  fail  acc 0.900 -> 0.950  by ada  T  parent p@1 (v1)  [a, b]",
        "      metrics: a=2, z=1.235",
        "  v3  p@2  fail  by ada  T  parent p@0",
        "  v4  p@2  fail  by ada  T",
        "      metrics: none logged",
        "alias moves:",
        "  W  prod: v1 -> v2  by ada  [promote] y  FORCED",
        "  W  prod: (new) -> v2  by ada  [promote] y",
    ]
    empty = format_history({"name": "n", "aliases": {}, "versions": [], "moves": []})
    assert empty.splitlines() == ["n  aliases: none", "versions:", "alias moves:", "  none"]


def test_diff_lists_only_what_differs(three):
    uri, policy = three
    promote(NAME, 1, policy=policy, tracking_uri=uri)
    data = diff_versions(f"{NAME}@production", f"{NAME}@2", tracking_uri=uri)
    assert (data["a"], data["b"]) == (f"{NAME}@1", f"{NAME}@2")
    v1 = load_patch(policy.parent / "water-shortcut-1.0.0" / "patch.json")
    v2 = load_patch(policy.parent / "water-shortcut-1.1.0" / "patch.json")
    assert data["registry"] == {
        "verdict": {"a": "pass", "b": "fail"},
        "failed_gates": {"a": [], "b": ["max_right_to_wrong_rate"]},
        "accuracy_after": {"a": 1.0, "b": 0.95},
        "right_to_wrong": {"a": 0.0, "b": 5.0},
        "patch_hash": {"a": v1.content_hash, "b": v2.content_hash},
    }
    from steerpatch.patch import diff_patches

    assert data["patch"] == diff_patches(v1, v2).to_dict() and data["patch_text"] == diff_patches(v1, v2).to_text()
    assert data["metrics"]["accuracy_after"] == {"a": 1.0, "b": 0.95}
    assert data["metrics"]["n"] == {"a": 100.0, "b": 100.0}
    assert list(data["metrics"]) == sorted(data["metrics"])
    assert diff_versions(f"{NAME}@1", f"{NAME}@1", tracking_uri=uri)["registry"] == {}
    # a metric only one side carries is listed with None on the other
    from steerpatch.registry.metrics import log_model_metrics, version_model_id

    c = _c(uri)
    mv = c.get_model_version(NAME, "2")
    log_model_metrics(c, c.get_experiment_by_name("steerpatch").experiment_id, version_model_id(mv),
                      {"extra_metric": 7.0}, run_name="extra")
    one_sided = diff_versions(f"{NAME}@1", f"{NAME}@2", tracking_uri=uri)["metrics"]
    assert one_sided["extra_metric"] == {"a": None, "b": 7.0}


def test_format_diff_renders_changes_and_metrics():
    data = {"a": "n@1", "b": "n@2", "patch_text": "~ edit", "registry": {"verdict": {"a": "pass", "b": "fail"}},
            "metrics": {"m": {"a": 1.0, "b": 1.5}, "same": {"a": 2.0, "b": 2.0}, "new": {"a": None, "b": 3.0}}}
    assert format_diff(data).splitlines() == [
        "n@1 -> n@2", "~ edit", '~ verdict: "pass" -> "fail"', "metrics:",
        "  ~ m: 1 -> 1.5  (+0.5)", "    same: 2 -> 2", "  ~ new: - -> 3",
    ]
    assert format_diff({**data, "metrics": {}}).splitlines() == ["n@1 -> n@2", "~ edit", '~ verdict: "pass" -> "fail"']
    without = {k: v for k, v in data.items() if k != "metrics"}  # a diff written before metrics were compared
    assert format_diff(without).splitlines() == ["n@1 -> n@2", "~ edit", '~ verdict: "pass" -> "fail"']


def test_verify_version_reports_what_it_checked(three):
    uri, _ = three
    assert verify_version(f"{NAME}@2", tracking_uri=uri) == {
        "name": NAME, "version": "2", "kind": "patch", "files": 10, "graphs": [], "ok": True,
    }


# no multi-patch graph links these patches (tests/serve/test_multi_registry.py covers one that does)
NO_LINKED_GRAPHS = {"linked_graphs": [], "linked_graphs_more": False}

def test_a_clean_history_audits_clean(three):
    uri, policy = three
    promote(NAME, 1, policy=policy, tracking_uri=uri)
    data = audit_model(NAME, policy=policy, tracking_uri=uri)
    assert data["problems"] == []
    assert data["versions"] == [
        {"version": v, "kind": "patch", "ok": True, "problem": None, **NO_LINKED_GRAPHS} for v in ("1", "2", "3")
    ]
    (move,) = data["moves"]
    assert (move["ok"], move["problem"], move["to"]) == (True, None, "1")
    assert format_audit(data).splitlines()[:4] == [
        f"{NAME}: everything verifies", "  patch v1: ok", "  patch v2: ok", "  patch v3: ok",
    ]


def test_audit_finds_every_kind_of_problem(three, tmp_path):
    uri, policy = three
    c = _c(uri)
    promote(NAME, 1, policy=policy, tracking_uri=uri)
    promote(NAME, 2, "staging", force=True, reason="try", policy=policy, tracking_uri=uri)
    promote(NAME, 3, "canary", policy=policy, tracking_uri=uri)
    c.set_registered_model_alias(NAME, "production", "2")  # outside steerpatch
    c.set_registered_model_alias(NAME, "shadow", "1")  # outside steerpatch, with no recorded move at all
    c.delete_registered_model_alias(NAME, "canary")
    c.delete_model_version(NAME, "3")  # canary's move now points nowhere
    c.set_model_version_tag(NAME, "2", "steerpatch.manifest_sha256", "0" * 64)  # v2 no longer verifies
    strict = tmp_path / "strict.toml"
    strict.write_text("format_version = 1\n[gates]\nmin_cos_mean = 0.99\n")  # v1 fails today's policy
    data = audit_model(NAME, policy=strict, tracking_uri=uri)
    v2_problem = data["versions"][1]["problem"]
    assert v2_problem.startswith(f"{NAME}@2: ") and "MANIFEST.json" in v2_problem
    assert [(r["version"], r["ok"]) for r in data["versions"]] == [("1", True), ("2", False)]
    when = [m["when"] for m in data["moves"]]
    assert data["problems"] == [
        v2_problem,
        f"{NAME}: alias production moved to v1 at {when[0]} unforced, but it fails min_cos_mean",
        f"{NAME}@2 (alias staging) does not verify",
        f"{NAME}: alias canary moved to v3 at {when[2]} unforced, but it fails (version does not exist)",
        f"{NAME}: alias production points at v2 but no recorded move put it there (moved outside steerpatch)",
        f"{NAME}: alias shadow points at v1 but no recorded move put it there (moved outside steerpatch)",
    ]
    assert [m["ok"] for m in data["moves"]] == [False, False, False]
    assert [m["problem"] for m in data["moves"]] == data["problems"][1:4]
    lines = format_audit(data).splitlines()
    assert lines[0] == f"{NAME}: 6 problem(s)"
    assert lines[1:3] == ["  patch v1: ok", f"  patch v2: {v2_problem}"]
    assert lines[3] == f"  move  {when[0]} production: (new) -> v1: {data['problems'][1]}"
    assert lines[4] == f"  move  {when[1]} staging: (new) -> v2 FORCED: {data['problems'][2]}"
    # problems already shown on a version or move line are not repeated
    assert lines[6:] == [f"  PROBLEM {p}" for p in data["problems"][4:]]


def test_one_name_at_version_with_two_contents_is_a_problem(three):
    uri, policy = three
    c = _c(uri)
    c.set_model_version_tag(NAME, "3", "steerpatch.patch_ref", "water-shortcut@1.0.0")
    data = audit_model(NAME, policy=policy, tracking_uri=uri)
    assert (
        f"{NAME}: water-shortcut@1.0.0 is registered with 2 different contents; one name@version must hold one content"
    ) in data["problems"]
    assert not any("water-shortcut@1.1.0" in p for p in data["problems"])


def test_a_tampered_version_refuses_verify(three):
    uri, _ = three
    _c(uri).set_model_version_tag(NAME, "1", "steerpatch.manifest_sha256", "0" * 64)
    with pytest.raises(IntegrityError, match=f"^{NAME}@1: "):
        verify_version(f"{NAME}@1", tracking_uri=uri)


BUSY = "the MLflow store stayed busy while trying to {}; retry, or check that no other program holds the database open"


def _busy_after(monkeypatch, method: str, ok_calls: int) -> None:
    """`method` answers normally `ok_calls` times, then "database is locked" for good; no backoff waits."""
    import time

    import mlflow

    real = getattr(mlflow.MlflowClient, method)
    calls = []

    def flaky(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > ok_calls:
            raise mlflow.exceptions.MlflowException("(sqlite3.OperationalError) database is locked")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, method, flaky)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)


@pytest.mark.parametrize("read", [history, audit_model], ids=["history", "audit"])
@pytest.mark.parametrize(
    ("method", "ok_calls", "what"),
    [("get_registered_model", 0, f"read {NAME}"), ("search_model_versions", 1, f"list {NAME}")],
)
def test_a_busy_store_names_what_was_being_read(three, monkeypatch, read, method, ok_calls, what):
    uri, _ = three
    _busy_after(monkeypatch, method, ok_calls)
    with pytest.raises(RegistryError) as info:
        read(NAME, tracking_uri=uri)
    assert str(info.value) == BUSY.format(what)


def test_a_busy_store_names_the_version_whose_metrics_it_read(three, monkeypatch):
    uri, _ = three
    _busy_after(monkeypatch, "get_logged_model", 1)
    with pytest.raises(RegistryError) as info:
        history(NAME, tracking_uri=uri, metrics=True)
    assert str(info.value) == BUSY.format("read the metrics of version 2")


def test_a_graph_version_that_does_not_verify_is_listed_as_a_graph(three, tmp_path):
    from steerpatch.registry.integrity import GRAPH_SUFFIX

    uri, policy = three
    c = _c(uri)
    graph = NAME + GRAPH_SUFFIX
    c.create_registered_model(graph)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "model.onnx").write_bytes(b"not a graph")
    for _ in range(2):
        c.create_model_version(graph, str(tmp_path / "g"), tags={"steerpatch.kind": "onnx-graph"})
    data = audit_model(NAME, policy=policy, tracking_uri=uri)
    rows = data["versions"][3:]
    assert [(r["version"], r["kind"], r["ok"]) for r in rows] == [(f"{graph}@1", "graph", False), (f"{graph}@2", "graph", False)]
    assert rows[0]["problem"].startswith(f"{graph}@1") and data["problems"] == [rows[0]["problem"], rows[1]["problem"]]
    assert [v["version"] for v in history(NAME, tracking_uri=uri)["versions"]] == ["1", "2", "3"]  # not the graph's
    lines = format_audit(data).splitlines()
    assert lines[0] == f"{NAME}: 2 problem(s)"
    assert lines[4:] == [f"  graph {graph}@1: {rows[0]['problem']}", f"  graph {graph}@2: {rows[1]['problem']}"]


def test_format_audit_names_where_a_move_came_from():
    move = {"when": "W", "alias": "prod", "from": "1", "to": "2", "forced": False, "ok": True, "problem": None}
    data = {"name": "n", "problems": [], "versions": [], "moves": [move, {**move, "from": None}]}
    assert format_audit(data).splitlines() == [
        "n: everything verifies", "  move  W prod: v1 -> v2: ok", "  move  W prod: (new) -> v2: ok",
    ]


def _graph_folder(folder):
    """A graph version's files as `verify_graph_folder` checks them (MLmodel, model.onnx, MANIFEST.json);
    returns the tags a registration would record. The bytes are not a real ONNX graph: only hashes are read."""
    from steerpatch.registry.bundle import sha256_file, write_manifest

    folder.mkdir()
    (folder / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.onnx\n")
    (folder / "model.onnx").write_bytes(b"graph bytes")
    return {
        "steerpatch.kind": "onnx-graph",
        "steerpatch.manifest_sha256": write_manifest(folder),
        "steerpatch.graph_sha256": sha256_file(folder / "model.onnx"),
    }


def test_audit_rows_of_a_graph_that_verifies_and_one_that_does_not(three, tmp_path):
    from steerpatch.registry.integrity import GRAPH_SUFFIX

    uri, policy = three
    c = _c(uri)
    graph = NAME + GRAPH_SUFFIX
    c.create_registered_model(graph)
    tags = _graph_folder(tmp_path / "g")
    v1_hash = c.get_model_version(NAME, "1").tags["steerpatch.patch_hash"]
    c.create_model_version(graph, str(tmp_path / "g"), tags={**tags, "steerpatch.patch_hash": v1_hash})
    c.create_model_version(graph, str(tmp_path / "g"), tags={**tags, "steerpatch.graph_sha256": "f" * 64})
    data = audit_model(NAME, policy=policy, tracking_uri=uri)
    problem = f"{graph}@2: artifact 'model.onnx' sha256 differs from the one registered ({'f' * 64})"
    assert data["versions"] == [
        {"version": v, "kind": "patch", "ok": True, "problem": None, **NO_LINKED_GRAPHS} for v in ("1", "2", "3")
    ] + [
        {"version": f"{graph}@1", "kind": "graph", "ok": True, "problem": None},
        {"version": f"{graph}@2", "kind": "graph", "ok": False, "problem": problem},
    ]
    assert data["problems"] == [problem]
    assert format_audit(data).splitlines() == [
        f"{NAME}: 1 problem(s)", "  patch v1: ok", "  patch v2: ok", "  patch v3: ok",
        f"  graph {graph}@1: ok", f"  graph {graph}@2: {problem}",
    ]


def test_a_store_that_cannot_list_the_graphs_audits_the_patches_alone(three, monkeypatch):
    """The graph listing fails (busy, or no such model): no graph rows, no crash, the patches still verify."""
    import mlflow

    from steerpatch.registry.integrity import GRAPH_SUFFIX

    uri, policy = three
    real = mlflow.MlflowClient.search_model_versions
    listing = f"name = '{NAME}{GRAPH_SUFFIX}'"
    refused = []

    def failing(self, filter_string=None, *args, **kwargs):
        if filter_string == listing:
            refused.append(filter_string)
            raise mlflow.exceptions.MlflowException(f"no model {NAME}{GRAPH_SUFFIX}")
        return real(self, filter_string, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "search_model_versions", failing)
    data = audit_model(NAME, policy=policy, tracking_uri=uri)
    assert refused == [listing]
    assert data["versions"] == [{"version": v, "kind": "patch", "ok": True, "problem": None, **NO_LINKED_GRAPHS} for v in ("1", "2", "3")]
    assert data["problems"] == []


def test_an_unforced_move_that_fails_two_gates_today_names_both(three, tmp_path):
    uri, _ = three
    lenient = tmp_path / "lenient.toml"
    lenient.write_text("format_version = 1\n[gates]\nmax_right_to_wrong_rate = 0.1\n")
    move = promote(NAME, 2, policy=lenient, tracking_uri=uri)
    assert not move.forced
    strict = tmp_path / "strict.toml"
    strict.write_text("format_version = 1\n[gates]\nmax_right_to_wrong_rate = 0.02\nmin_cos_mean = 0.99\n")
    data = audit_model(NAME, policy=strict, tracking_uri=uri)
    assert data["problems"] == [
        f"{NAME}: alias production moved to v2 at {move.when} unforced, but it fails max_right_to_wrong_rate, min_cos_mean"
    ]


def test_versions_without_a_patch_ref_tag_are_grouped_under_a_question_mark(three):
    """Versions registered outside steerpatch: no patch_ref tag (and so no verification); two contents are one problem."""
    uri, policy = three
    c = _c(uri)
    source = c.get_model_version_download_uri(NAME, "1")
    for content in ("a" * 64, "b" * 64):
        c.create_model_version(NAME, source, tags={"steerpatch.patch_hash": content})
    data = audit_model(NAME, policy=policy, tracking_uri=uri)
    assert [(r["version"], r["ok"]) for r in data["versions"]] == [("1", True), ("2", True), ("3", True), ("4", False), ("5", False)]
    assert data["problems"][:2] == [data["versions"][3]["problem"], data["versions"][4]["problem"]]
    assert data["problems"][2:] == [
        f"{NAME}: ? is registered with 2 different contents; one name@version must hold one content"
    ]
