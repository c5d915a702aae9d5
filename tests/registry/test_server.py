"""The whole registry workflow against a real `mlflow server` on loopback."""

from __future__ import annotations

import json

import pytest

from steerpatch.cli.main import cli
from steerpatch.errors import GateFailed
from steerpatch.registry import promote, resolve_patch_ref

NAME = "concept-clip.water-shortcut"


@pytest.mark.slow
def test_register_promote_audit_over_http(workspace, mlflow_server, runner, monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    good = workspace.candidate()
    bad = workspace.candidate(version="1.1.0", parent="water-shortcut@1.0.0", scale=0.5, right_to_wrong=5)
    out = []
    for cand in (good, bad):
        result = runner.invoke(
            cli,
            [
                "register",
                str(cand.patch),
                "--report",
                str(cand.report),
                "--json",
                "--tracking-uri",
                mlflow_server,
            ],
        )
        assert result.exit_code == 0, result.output
        out.append(json.loads(result.output))
    assert [o["version"] for o in out] == ["1", "2"]
    promote(NAME, 1, policy=workspace.policy, tracking_uri=mlflow_server)
    with pytest.raises(GateFailed):
        promote(NAME, 2, policy=workspace.policy, tracking_uri=mlflow_server)
    history = json.loads(
        runner.invoke(cli, ["history", NAME, "--json", "--tracking-uri", mlflow_server]).output
    )
    assert history["aliases"] == {"production": "1"}
    assert history["versions"][1]["parent_version"] == "1"
    verified = runner.invoke(cli, ["verify", f"{NAME}@production", "--tracking-uri", mlflow_server])
    assert verified.exit_code == 0, verified.output
    patch, folder = resolve_patch_ref(f"{NAME}@production", tracking_uri=mlflow_server)
    assert patch.ref == "water-shortcut@1.0.0" and (folder / "MANIFEST.json").is_file()
