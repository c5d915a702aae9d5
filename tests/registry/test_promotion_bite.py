"""Promotion and rollback, asserted record by record: the exact alias moves, tags and refusals.

Each test gets a private copy of a store holding three versions (the `three` fixture in conftest.py).
"""

from __future__ import annotations

import json
import re

import pytest

from steerpatch.errors import GateFailed, IntegrityError, RegistryError
from steerpatch.registry import alias_moves, promote, rollback
from steerpatch.registry.promotion import MOVE_PREFIX, AliasMove, check_consistent, recheck_report
from steerpatch.registry.store import client, resolve_store
from tests.registry.conftest import Workspace

NAME = "concept-clip.water-shortcut"
NO_DATA = "not re-run: no dataset given (promote --data DIR re-runs validation for 'production')"
WHEN = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def _c(uri):
    return client(resolve_store(uri))


def _move_tags(uri) -> dict[str, dict]:
    tags = _c(uri).get_registered_model(NAME).tags
    return {k: json.loads(v) for k, v in tags.items() if k.startswith(MOVE_PREFIX)}


def test_a_passing_promotion_is_recorded_exactly(three):
    uri, policy = three
    move = promote(NAME, 1, policy=policy, tracking_uri=uri)
    assert WHEN.fullmatch(move.when)
    expected = AliasMove(
        alias="production", from_version=None, to_version="1", who="grace", when=move.when, why="gates passed",
        forced=False, kind="promote", failed_gates=(), policy=str(policy), revalidated=NO_DATA,
    )
    assert move == expected
    assert _c(uri).get_registered_model(NAME).aliases == {"production": 1}
    (key, record), = _move_tags(uri).items()
    assert re.fullmatch(re.escape(MOVE_PREFIX) + r"\d{20}\.[0-9a-f]{6}", key)
    assert record == {
        "alias": "production", "from": None, "to": "1", "who": "grace", "when": move.when, "why": "gates passed",
        "forced": False, "kind": "promote", "failed_gates": [], "policy": str(policy), "revalidated": NO_DATA,
    }
    assert alias_moves(_c(uri), NAME) == [expected]
    # an alias the policy does not re-validate says nothing about it; the move from v1 is recorded
    staging = promote(NAME, "3", "staging", policy=policy, tracking_uri=uri)
    assert staging.revalidated is None and staging.from_version is None
    again = promote(NAME, 3, policy=policy, tracking_uri=uri, revalidate=False)
    assert (again.from_version, again.to_version, again.revalidated) == ("1", "3", None)
    assert _c(uri).get_registered_model(NAME).aliases == {"production": 3, "staging": 3}
    assert [(m.alias, m.from_version, m.to_version) for m in alias_moves(_c(uri), NAME)] == [
        ("production", None, "1"), ("staging", None, "3"), ("production", "1", "3"),
    ]
    assert "steerpatch.forced.production" not in _c(uri).get_model_version(NAME, "1").tags


def test_a_failing_version_is_refused_and_nothing_moves(three):
    uri, policy = three
    with pytest.raises(GateFailed) as info:
        promote(NAME, 2, "production", policy=policy, tracking_uri=uri)
    assert str(info.value).splitlines() == [
        f"{NAME} version 2 fails the policy in force ({policy}); not promoted to 'production'. "
        'Fix the patch and register a new version, or use --force --reason "…"',
        "  - failed gate: max_right_to_wrong_rate",
    ]
    assert info.value.exit_code == 1
    assert _c(uri).get_registered_model(NAME).aliases == {}
    assert _move_tags(uri) == {}


def test_a_forced_move_records_the_stripped_reason(three):
    uri, policy = three
    promote(NAME, 1, policy=policy, tracking_uri=uri)
    move = promote(NAME, 2, force=True, reason="  hotfix 7 ", policy=policy, tracking_uri=uri)
    assert (move.from_version, move.to_version, move.why, move.forced, move.kind) == ("1", "2", "hotfix 7", True, "promote")
    assert move.failed_gates == ("max_right_to_wrong_rate",)
    assert _c(uri).get_model_version(NAME, "2").tags["steerpatch.forced.production"] == "hotfix 7"
    # forcing a version that passes bypasses nothing: not forced, but the reason is what the move says
    passing = promote(NAME, 3, "staging", force=True, reason="early", policy=policy, tracking_uri=uri)
    assert (passing.forced, passing.why, passing.failed_gates) == (False, "early", ())
    assert _c(uri).get_model_version(NAME, "3").tags["steerpatch.forced.staging"] == "early"


@pytest.mark.parametrize("reason", [None, "", "   "])
def test_force_without_a_reason_is_refused_before_the_store_is_opened(reason):
    with pytest.raises(RegistryError) as info:
        promote(NAME, 1, force=True, reason=reason, tracking_uri="file:/not-a-store")
    assert str(info.value) == '--force needs --reason "…" saying why the gates are bypassed; it is recorded'


@pytest.mark.parametrize("alias", ["latest", "v3", "v12", "3prod", "prod uction", "", "a" * 256, "prod\n"])
def test_reserved_and_malformed_aliases_are_refused(alias):
    with pytest.raises(RegistryError) as info:
        promote(NAME, 1, alias, tracking_uri="file:/not-a-store")
    assert str(info.value) == (
        f"alias '{alias}' is not allowed; use a word such as 'production' ('latest' and 'v<number>' are reserved)"
    )


@pytest.mark.parametrize("alias", ["v3x", "_v3", "a-b", "a" * 255, "Latest", "a", "v"])
def test_word_aliases_pass_the_alias_check(alias):
    with pytest.raises(RegistryError, match="plain folder"):  # the next check: the store URI
        promote(NAME, 1, alias, tracking_uri="file:/not-a-store")


def test_a_compiled_graph_version_is_not_promotable(three):
    uri, policy = three
    c = _c(uri)
    c.set_model_version_tag(NAME, "1", "steerpatch.kind", "onnx-graph")
    with pytest.raises(RegistryError) as info:
        promote(NAME, 1, policy=policy, tracking_uri=uri)
    assert str(info.value) == (
        f"{NAME}@1 is a compiled graph; promote the patch version it was compiled from "
        "(`steerpatch promote NAME VERSION`)"
    )
    c.set_model_version_tag(NAME, "1", "steerpatch.patch_model", "m.p")
    with pytest.raises(RegistryError, match=r"\(`steerpatch promote m.p VERSION`\)$"):
        promote(NAME, 1, policy=policy, tracking_uri=uri)
    assert _move_tags(uri) == {}


def test_rollback_returns_to_the_version_before_the_last_move(three):
    uri, policy = three
    # production: 1 -> 3 -> 1 -> 2 (forced) -> 1; staging moves in between must not count
    promote(NAME, 1, policy=policy, tracking_uri=uri)
    promote(NAME, 3, policy=policy, tracking_uri=uri)
    promote(NAME, 1, "staging", policy=policy, tracking_uri=uri)
    promote(NAME, 1, policy=policy, tracking_uri=uri)
    promote(NAME, 2, force=True, reason="try", policy=policy, tracking_uri=uri)
    promote(NAME, 1, policy=policy, tracking_uri=uri)
    with pytest.raises(GateFailed, match="version 2 fails the policy in force"):
        rollback(NAME, policy=policy, tracking_uri=uri)  # back to v2, which fails: refused
    move = rollback(NAME, force=True, reason="r2w spike", policy=policy, tracking_uri=uri)
    assert (move.from_version, move.to_version, move.kind, move.why, move.forced) == ("1", "2", "rollback", "r2w spike", True)
    assert _c(uri).get_registered_model(NAME).aliases == {"production": 2, "staging": 1}
    # from v2 the last move into it came from v1, which passes: no reason needed
    back = rollback(NAME, tracking_uri=uri, policy=policy)
    assert (back.from_version, back.to_version, back.kind, back.why, back.forced) == ("2", "1", "rollback", "rollback; gates passed", False)
    assert back.revalidated == NO_DATA


def test_rollback_needs_an_earlier_version(three):
    uri, policy = three
    message = (
        f"alias 'production' of '{NAME}' has no earlier version to roll back to; "
        f"use `steerpatch promote {NAME} VERSION`"
    )
    with pytest.raises(RegistryError) as info:
        rollback(NAME, tracking_uri=uri)
    assert str(info.value) == message
    promote(NAME, 1, policy=policy, tracking_uri=uri)
    with pytest.raises(RegistryError) as info:  # a first move has nowhere to go back to
        rollback(NAME, tracking_uri=uri)
    assert str(info.value) == message
    promote(NAME, 3, "staging", policy=policy, tracking_uri=uri)
    promote(NAME, 1, "staging", policy=policy, tracking_uri=uri)
    with pytest.raises(RegistryError, match="alias 'production'"):  # staging's history is not production's
        rollback(NAME, tracking_uri=uri)


def test_a_refused_alias_move_withdraws_its_record(three, monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    uri, policy = three

    def refuse(self, name, alias, version):
        raise MlflowException("no such thing")

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(RegistryError) as info:
        promote(NAME, 1, policy=policy, tracking_uri=uri)
    assert str(info.value) == f"MLflow refused to point alias 'production' of '{NAME}' at 1: no such thing"
    assert _move_tags(uri) == {}

    def interrupted(self, name, alias, version):
        raise KeyboardInterrupt

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", interrupted)
    with pytest.raises(KeyboardInterrupt):
        promote(NAME, 1, policy=policy, tracking_uri=uri)
    assert _move_tags(uri) == {}


def test_alias_move_records_round_trip_and_old_records_read_with_defaults():
    move = AliasMove("production", "1", "2", "ada", "2026-01-01T00:00:00.000Z", "why", True, "rollback",
                     ("g",), "p.toml", "same")
    data = move.to_dict()
    assert data == {"alias": "production", "from": "1", "to": "2", "who": "ada", "when": "2026-01-01T00:00:00.000Z",
                    "why": "why", "forced": True, "kind": "rollback", "failed_gates": ["g"], "policy": "p.toml",
                    "revalidated": "same"}
    assert AliasMove.from_dict(json.loads(json.dumps(data))) == move
    assert AliasMove.from_dict({"alias": "a", "to": "3"}).forced is False
    assert AliasMove.from_dict({"alias": "a", "to": "3", "forced": 1, "failed_gates": None}) == AliasMove(
        alias="a", from_version=None, to_version="3", who="", when="", why="", forced=True, kind="promote",
        failed_gates=(), policy=None, revalidated=None,
    )


def test_recheck_report_rederives_the_gates(tmp_path):
    ws = Workspace(tmp_path / "w")
    good = ws.candidate()
    bad = ws.candidate(version="1.1.0", scale=0.5, right_to_wrong=5)
    assert recheck_report(good.report, ws.policy) == ([], str(ws.policy))
    assert recheck_report(bad.report, ws.policy) == (["max_right_to_wrong_rate"], str(ws.policy))
    report = json.loads(bad.report.read_text())
    report["accuracy"]["after"] = 0.99
    bad.report.write_text(json.dumps(report))
    with pytest.raises(IntegrityError) as info:
        recheck_report(bad.report, ws.policy)
    assert str(info.value).startswith(f"report '{bad.report}': artifact 'report.json' contradicts itself (")
    assert str(info.value).splitlines()[0].endswith("); it was edited after validation")
    from steerpatch.validate.report import load_report

    check_consistent(load_report(good.report), "x")


def _busy(monkeypatch, method: str) -> None:
    """The store answers `method` with "database is locked" every time; the backoff does not wait."""
    import time

    import mlflow

    def locked(self, *args, **kwargs):
        raise mlflow.exceptions.MlflowException("(sqlite3.OperationalError) database is locked")

    monkeypatch.setattr(mlflow.MlflowClient, method, locked)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)


BUSY = "the MLflow store stayed busy while trying to {}; retry, or check that no other program holds the database open"


@pytest.mark.parametrize(
    ("method", "what"),
    [
        ("set_registered_model_tag", "record the move"),
        ("set_registered_model_alias", "move alias production"),
    ],
)
def test_a_busy_store_names_the_step_of_the_promotion(three, monkeypatch, method, what):
    uri, policy = three
    _busy(monkeypatch, method)
    with pytest.raises(RegistryError) as info:
        promote(NAME, 1, policy=policy, tracking_uri=uri)
    assert str(info.value) == BUSY.format(what)
    monkeypatch.undo()
    assert _move_tags(uri) == {} and _c(uri).get_registered_model(NAME).aliases == {}


def test_a_busy_store_names_the_forced_reason_and_the_withdrawal(three, monkeypatch):
    uri, policy = three
    _busy(monkeypatch, "set_model_version_tag")
    with pytest.raises(RegistryError) as info:
        promote(NAME, 2, force=True, reason="hotfix", policy=policy, tracking_uri=uri)
    assert str(info.value) == BUSY.format("record the reason")
    monkeypatch.undo()

    import mlflow
    from mlflow.exceptions import MlflowException

    def refuse(self, *args):
        raise MlflowException("refused")

    _busy(monkeypatch, "delete_registered_model_tag")
    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", refuse)
    with pytest.raises(RegistryError) as info:
        promote(NAME, 3, "staging", policy=policy, tracking_uri=uri)
    assert str(info.value) == BUSY.format("withdraw the move record")


def test_a_busy_store_names_the_rollback_read(three, monkeypatch):
    uri, _ = three
    _busy(monkeypatch, "get_registered_model")
    with pytest.raises(RegistryError) as info:
        rollback(NAME, tracking_uri=uri)
    assert str(info.value) == BUSY.format(f"read {NAME}")
    with pytest.raises(RegistryError) as info:
        alias_moves(_c(uri), NAME)
    assert str(info.value) == BUSY.format(f"read {NAME}")


def test_an_unmeasured_gate_blocks_only_the_aliases_the_policy_names(three, tmp_path):
    uri, _ = three
    policy = tmp_path / "targets.toml"
    policy.write_text('format_version = 1\n[gates]\nmin_target_fix_rate = 0.5\n[unmeasured]\nblocks = ["production"]\n')
    with pytest.raises(GateFailed) as info:
        promote(NAME, 1, policy=policy, tracking_uri=uri)
    # the generalisation gate is on by default and, like the target gate, needs --targets to be measured
    assert info.value.problems == [
        "failed gate: min_target_fix_rate (not measured)", "failed gate: min_generalisation_fix_rate (not measured)"
    ]
    move = promote(NAME, 1, "staging", policy=policy, tracking_uri=uri)
    assert move.failed_gates == () and move.policy == str(policy)
    ws = Workspace(tmp_path / "w")
    report = ws.candidate().report
    assert recheck_report(report, policy) == ([], str(policy))
    assert recheck_report(report, policy, alias="production") == (
        ["min_target_fix_rate (not measured)", "min_generalisation_fix_rate (not measured)"], str(policy)
    )
    assert recheck_report(report, policy, alias="staging") == ([], str(policy))


def test_a_rollback_after_an_alias_moved_outside_steerpatch_finds_no_earlier_version(three):
    uri, policy = three
    promote(NAME, 1, policy=policy, tracking_uri=uri)
    promote(NAME, 3, policy=policy, tracking_uri=uri)
    _c(uri).set_registered_model_alias(NAME, "production", "1")  # no recorded move put it at v1 from elsewhere
    with pytest.raises(RegistryError, match="has no earlier version to roll back to"):
        rollback(NAME, policy=policy, tracking_uri=uri)


def test_the_dataset_given_is_checked_before_the_alias_moves(three, tmp_path):
    from PIL import Image

    uri, policy = three
    data = tmp_path / "data"
    (data / "circle").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(data / "circle" / "a.png")
    with pytest.raises(RegistryError, match=rf"^{NAME}@1: dataset '{data}' has hash [0-9a-f]{{64}}, but report.json"):
        promote(NAME, 1, policy=policy, tracking_uri=uri, data=data)
    promote(NAME, 1, "staging", policy=policy, tracking_uri=uri, data=data)  # staging is not re-validated
    promote(NAME, 1, policy=policy, tracking_uri=uri)  # without a dataset production's move says so
    promote(NAME, 3, policy=policy, tracking_uri=uri)
    with pytest.raises(RegistryError, match=rf"^{NAME}@1: dataset '{data}'"):
        rollback(NAME, policy=policy, tracking_uri=uri, data=data)
    assert _c(uri).get_registered_model(NAME).aliases == {"staging": 1, "production": 3}


def test_rollback_moves_the_alias_it_is_given(three):
    uri, policy = three
    promote(NAME, 1, "staging", policy=policy, tracking_uri=uri)
    promote(NAME, 3, "staging", policy=policy, tracking_uri=uri)
    move = rollback(NAME, "staging", policy=policy, tracking_uri=uri)
    assert (move.alias, move.from_version, move.to_version, move.kind) == ("staging", "3", "1", "rollback")
    assert _c(uri).get_registered_model(NAME).aliases == {"staging": 1}


def _v1_files(policy):
    """v1's patch and report as the workspace wrote them (the registered artifacts are these files)."""
    from steerpatch.patch import load_patch
    from steerpatch.validate.report import load_report

    folder = policy.parent / "water-shortcut-1.0.0"
    return load_patch(folder / "patch.json"), load_report(folder / "report.json")


def test_check_consistent_names_the_first_contradiction_and_lists_the_rest(three):
    from steerpatch.registry.evidence import consistency_problems

    _, policy = three
    patch, report = _v1_files(policy)
    check_consistent(report, "r", patch)  # the report of this very patch is consistent
    edited = report.model_copy(update={"patch": "water-shortcut@9.9.9", "n": report.n + 1})
    problems = consistency_problems(edited, patch)
    assert len(problems) >= 3 and problems[-1] == "patch is 'water-shortcut@9.9.9' but the patch is 'water-shortcut@1.0.0'"
    with pytest.raises(IntegrityError) as info:
        check_consistent(edited, "r", patch)
    assert str(info.value).splitlines()[0] == (
        f"r: artifact 'report.json' contradicts itself ({problems[0]}); it was edited after validation"
    )
    assert info.value.problems == problems[1:]
    # the patch is what makes a report that only names another patch a contradiction
    renamed = report.model_copy(update={"patch": "water-shortcut@9.9.9"})
    check_consistent(renamed, "r")
    with pytest.raises(IntegrityError) as info:
        check_consistent(renamed, "r", patch)
    assert str(info.value) == (
        "r: artifact 'report.json' contradicts itself (patch is 'water-shortcut@9.9.9' but the patch is "
        "'water-shortcut@1.0.0'); it was edited after validation"
    )


def test_a_report_re_signed_to_name_another_patch_is_refused_with_the_versions_name(three, tmp_path):
    """Report and manifest edited and their hashes re-recorded: only the check against the patch is left."""
    from steerpatch.registry.artifacts import download_version
    from steerpatch.registry.bundle import sha256_file, write_manifest

    uri, policy = three
    c = _c(uri)
    v1 = c.get_model_version(NAME, "1")
    local = download_version(c, resolve_store(uri), NAME, "1", tmp_path / "copy")
    report = json.loads((local / "report.json").read_text())
    report["patch"] = "water-shortcut@9.9.9"
    (local / "report.json").write_text(json.dumps(report))
    (local / "MANIFEST.json").unlink()
    tags = dict(v1.tags)
    tags.update({
        "steerpatch.manifest_sha256": write_manifest(local), "steerpatch.report_sha256": sha256_file(local / "report.json"),
        "steerpatch.patch_ref": "water-shortcut@9.9.9",
    })
    mv = c.create_model_version(NAME, str(local), tags=tags)
    with pytest.raises(IntegrityError) as info:
        promote(NAME, mv.version, policy=policy, tracking_uri=uri)
    assert str(info.value) == (
        f"{NAME}@{mv.version}: artifact 'report.json' contradicts itself (patch is 'water-shortcut@9.9.9' but the "
        "patch is 'water-shortcut@1.0.0'); it was edited after validation"
    )
    assert _c(uri).get_registered_model(NAME).aliases == {}
    # the same files under v1's own record fail at the manifest, named by the version promoted
    tags["steerpatch.manifest_sha256"] = v1.tags["steerpatch.manifest_sha256"]
    mv = c.create_model_version(NAME, str(local), tags=tags)
    with pytest.raises(IntegrityError) as info:
        promote(NAME, mv.version, policy=policy, tracking_uri=uri)
    assert str(info.value).splitlines() == [
        f"{NAME}@{mv.version}: artifact 'MANIFEST.json' does not match its recorded hash",
        "  - MANIFEST.json: changed (sha256 differs from the hash recorded at registration)",
    ]


def test_a_broken_compiled_graph_of_the_patch_blocks_its_promotion(three):
    """A graph registered for v1's patch hash is verified before the alias moves; one for another hash is not."""
    uri, policy = three
    c = _c(uri)
    v1 = c.get_model_version(NAME, "1")
    source = c.get_model_version_download_uri(NAME, "1")  # a patch folder: no graph passes on it
    graph_model = NAME + "-onnx"
    c.create_registered_model(graph_model)
    other = c.create_model_version(
        graph_model, source, tags={"steerpatch.kind": "onnx-graph", "steerpatch.patch_hash": "0" * 64}
    )
    assert str(other.version) == "1"
    moved = promote(NAME, 3, policy=policy, tracking_uri=uri)  # v3's hash has no graph
    assert moved.to_version == "3"
    c.create_model_version(
        graph_model, source, tags={"steerpatch.kind": "onnx-graph", "steerpatch.patch_hash": v1.tags["steerpatch.patch_hash"]}
    )
    with pytest.raises(IntegrityError) as info:
        promote(NAME, 1, policy=policy, tracking_uri=uri)
    assert str(info.value) == (
        f"{graph_model}@2: the registry has no recorded MANIFEST.json hash (steerpatch.manifest_sha256); it was not "
        "registered by this steerpatch, so nothing vouches for its files: register it again"
    )
    assert _c(uri).get_registered_model(NAME).aliases == {"production": 3}


def test_the_aliases_to_revalidate_come_from_the_policy_given(three, tmp_path):
    uri, policy = three
    mine = tmp_path / "policy.toml"
    mine.write_text(policy.read_text() + '\n[promotion]\nrevalidate_aliases = ["staging"]\n')
    assert promote(NAME, 1, policy=mine, tracking_uri=uri).revalidated is None
    staged = promote(NAME, 1, "staging", policy=mine, tracking_uri=uri)
    assert staged.revalidated == "not re-run: no dataset given (promote --data DIR re-runs validation for 'staging')"


def test_a_reason_without_force_is_recorded_as_why_but_not_as_forced(three):
    uri, policy = three
    move = promote(NAME, 1, reason=" quarterly release ", policy=policy, tracking_uri=uri)
    assert (move.why, move.forced) == ("quarterly release", False)
    assert not any(k.startswith("steerpatch.forced.") for k in _c(uri).get_model_version(NAME, "1").tags)
