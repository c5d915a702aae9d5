"""history, diff and verify, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steerpatch.cli.main import cli
from steerpatch.registry import promote, resolve_patch_ref, resolve_store
from steerpatch.registry.store import client

NAME = "concept-clip.water-shortcut"


@pytest.fixture()
def registered(two_versions, store_uri):
    promote(NAME, 1, policy=two_versions.policy, tracking_uri=store_uri)
    return two_versions


def test_history_json_lists_versions_moves_and_parents(registered, store_uri, runner):
    result = runner.invoke(cli, ["history", NAME, "--json", "--tracking-uri", store_uri])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert [v["version"] for v in data["versions"]] == ["1", "2"]
    assert [v["verdict"] for v in data["versions"]] == ["pass", "fail"]
    assert (
        data["versions"][1]["parent"] == "water-shortcut@1.0.0"
        and data["versions"][1]["parent_version"] == "1"
    )
    assert data["versions"][0]["aliases"] == ["production"]
    assert data["aliases"] == {"production": "1"}
    (move,) = data["moves"]
    assert move["to"] == "1" and move["from"] is None and move["who"] and move["when"] and move["why"]
    text = runner.invoke(cli, ["history", NAME, "--tracking-uri", store_uri])
    assert "production: (new) -> v1" in text.output


def test_diff_shows_edit_and_metric_changes(registered, store_uri, runner):
    result = runner.invoke(cli, ["diff", f"{NAME}@production", f"{NAME}@2", "--tracking-uri", store_uri])
    assert result.exit_code == 0, result.output
    assert "~ edit latent 3: scale 0 -> scale 0.5" in result.output
    assert '~ verdict: "pass" -> "fail"' in result.output
    data = json.loads(
        runner.invoke(cli, ["diff", f"{NAME}@1", f"{NAME}@2", "--json", "--tracking-uri", store_uri]).output
    )
    assert data["patch"]["edits"]["changed"][0]["latent"] == 3
    assert data["registry"]["right_to_wrong"] == {"a": 0.0, "b": 5.0}


def _stored_folder(store_uri: str, version: str) -> Path:
    c = client(resolve_store(store_uri))
    uri = c.get_model_version_download_uri(NAME, version)
    return Path(uri.removeprefix("file://"))


@pytest.mark.parametrize("target", ["sae/sae_weights.safetensors", "report.json", "MANIFEST.json"])
def test_verify_names_the_tampered_file(registered, store_uri, runner, target):
    ok = runner.invoke(cli, ["verify", f"{NAME}@1", "--tracking-uri", store_uri])
    assert ok.exit_code == 0 and "files match" in ok.output
    victim = _stored_folder(store_uri, "1") / target
    data = bytearray(victim.read_bytes())
    data[-2] ^= 0x01
    victim.write_bytes(bytes(data))
    bad = runner.invoke(cli, ["verify", f"{NAME}@1", "--tracking-uri", store_uri])
    assert bad.exit_code == 1
    assert f"'{target}'" in bad.output
    assert runner.invoke(cli, ["verify", f"{NAME}@2", "--tracking-uri", store_uri]).exit_code == 0


def test_verify_catches_an_added_file(registered, store_uri, runner):
    (_stored_folder(store_uri, "2") / "extra.py").write_text("print('hi')\n")
    bad = runner.invoke(cli, ["verify", f"{NAME}@2", "--tracking-uri", store_uri])
    assert bad.exit_code == 1 and "extra.py" in bad.output


def test_resolve_patch_ref_follows_the_alias(registered, store_uri, tmp_path):
    patch, folder = resolve_patch_ref(f"{NAME}@production", tracking_uri=store_uri)
    assert patch.version == "1.0.0"
    assert (folder / "sae" / "sae_weights.safetensors").is_file()
    again, folder2 = resolve_patch_ref(f"{NAME}@production", tracking_uri=store_uri)
    assert folder2 == folder and again.content_hash == patch.content_hash
    latest, _ = resolve_patch_ref(f"{NAME}@latest", tracking_uri=store_uri, dst=tmp_path / "dl")
    assert latest.version == "1.1.0"
