"""Gated promotion, forced promotion with a reason, rollback, and the recorded alias moves."""

from __future__ import annotations

import json

import pytest

from steerpatch.cli.main import cli
from steerpatch.errors import GateFailed, RegistryError
from steerpatch.registry import alias_moves, promote, resolve_store, rollback
from steerpatch.registry.store import client

NAME = "concept-clip.water-shortcut"


def test_promote_passes_then_refuses_a_failing_version(two_versions, store_uri, runner, monkeypatch):
    monkeypatch.setenv("STEERPATCH_USER", "grace")
    policy = str(two_versions.policy)
    ok = runner.invoke(
        cli, ["promote", NAME, "1", "--alias", "production", "--policy", policy, "--tracking-uri", store_uri]
    )
    assert ok.exit_code == 0, ok.output
    assert "production (new) -> v1" in ok.output
    refused = runner.invoke(cli, ["promote", NAME, "2", "--policy", policy, "--tracking-uri", store_uri])
    assert refused.exit_code == 1
    assert "failed gate: max_right_to_wrong_rate" in refused.output
    c = client(resolve_store(store_uri))
    assert c.get_registered_model(NAME).aliases == {"production": 1}
    moves = alias_moves(c, NAME)
    assert [(m.from_version, m.to_version, m.who) for m in moves] == [(None, "1", "grace")]


def test_policy_in_force_is_rechecked(two_versions, store_uri, tmp_path):
    strict = tmp_path / "strict.toml"
    strict.write_text("format_version = 1\n[gates]\nmin_cos_mean = 0.99\n")
    with pytest.raises(GateFailed, match="fails the policy in force") as info:
        promote(NAME, 1, "production", policy=strict, tracking_uri=store_uri)
    assert "min_cos_mean" in str(info.value)


def test_force_needs_a_reason_and_records_it(two_versions, store_uri, runner):
    policy = str(two_versions.policy)
    no_reason = runner.invoke(
        cli, ["promote", NAME, "2", "--force", "--policy", policy, "--tracking-uri", store_uri]
    )
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    forced = runner.invoke(
        cli,
        [
            "promote",
            NAME,
            "2",
            "--force",
            "--reason",
            "hotfix for ticket 7",
            "--policy",
            policy,
            "--tracking-uri",
            store_uri,
            "--json",
        ],
    )
    assert forced.exit_code == 0, forced.output
    move = json.loads(forced.output)
    assert move["forced"] is True and move["why"] == "hotfix for ticket 7" and move["to"] == "2"
    assert move["failed_gates"] == ["max_right_to_wrong_rate"]
    c = client(resolve_store(store_uri))
    assert c.get_model_version(NAME, "2").tags["steerpatch.forced.production"] == "hotfix for ticket 7"


def test_rollback_moves_the_alias_back_and_is_recorded(two_versions, store_uri, runner):
    policy = two_versions.policy
    promote(NAME, 1, policy=policy, tracking_uri=store_uri)
    promote(NAME, 2, policy=policy, force=True, reason="try it", tracking_uri=store_uri)
    result = runner.invoke(
        cli,
        [
            "promote",
            NAME,
            "--rollback",
            "--reason",
            "r2w spike",
            "--policy",
            str(policy),
            "--tracking-uri",
            store_uri,
        ],
    )
    assert result.exit_code == 0, result.output
    c = client(resolve_store(store_uri))
    assert c.get_registered_model(NAME).aliases["production"] == 1
    moves = alias_moves(c, NAME)
    assert [(m.from_version, m.to_version, m.kind) for m in moves] == [
        (None, "1", "promote"),
        ("1", "2", "promote"),
        ("2", "1", "rollback"),
    ]
    assert moves[-1].why == "r2w spike" and moves[-1].when.endswith("Z")


def test_rollback_without_history_and_bad_alias_are_refused(two_versions, store_uri):
    with pytest.raises(RegistryError, match="no earlier version"):
        rollback(NAME, "production", tracking_uri=store_uri)
    with pytest.raises(RegistryError, match="reserved"):
        promote(NAME, 1, "v3", policy=two_versions.policy, tracking_uri=store_uri)
    with pytest.raises(RegistryError, match="versions: 1, 2"):
        promote(NAME, 9, policy=two_versions.policy, tracking_uri=store_uri)


def test_a_report_on_approximate_pixels_vets_nothing():
    # validate --fast-decode measures on reduced-size JPEG decodes, not what serving computes: every
    # alias's policy check (promote, webhook, audit) counts it as a failed gate, even when the numbers pass
    from pathlib import Path

    from steerpatch.registry.promotion import failed_gates_of
    from steerpatch.validate.report import load_report

    shipped = load_report(Path(__file__).resolve().parents[2] / "registry" / "patches" / "water-shortcut" / "report.json")
    assert failed_gates_of(shipped, None, alias="production")[0] == []
    fast = shipped.model_copy(update={"decoding": "jpeg-draft-2x"})
    failed, _ = failed_gates_of(fast, None, alias="staging")
    assert len(failed) == 1 and failed[0].startswith("exact_decoding") and "--fast-decode" in failed[0]
