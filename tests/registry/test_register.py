"""Registering patches: tags, description, parent links, refusal of foreign reports, all-or-nothing."""

from __future__ import annotations

import json

import mlflow
import pytest

from steerpatch.cli.main import cli
from steerpatch.errors import RegistryError
from steerpatch.registry import register_patch, resolve_store
from steerpatch.registry.store import client


def _client(uri):
    return client(resolve_store(uri))


def test_register_sets_tags_description_and_parent(workspace, store_uri, runner):
    first = workspace.candidate()
    result = runner.invoke(
        cli,
        ["register", str(first.patch), "--report", str(first.report), "--json", "--tracking-uri", store_uri],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["name"] == "concept-clip.water-shortcut"
    assert out["version"] == "1" and out["model_uri"] == "models:/concept-clip.water-shortcut/1"

    second = workspace.candidate(version="1.1.0", parent="water-shortcut@1.0.0", scale=0.5)
    v2 = register_patch(second.patch, second.report, tracking_uri=store_uri)
    assert v2.version == "2"
    mv = _client(store_uri).get_model_version(v2.name, "2")
    tags = mv.tags
    assert tags["steerpatch.patch_hash"] == second.patch_obj.content_hash
    assert tags["steerpatch.model_fingerprint"] == workspace.model_fingerprint
    assert tags["steerpatch.sae_fingerprint"] == workspace.sae.fingerprint
    assert tags["steerpatch.verdict"] == "pass"
    assert tags["steerpatch.author"] == "ada"
    assert float(tags["steerpatch.accuracy_after"]) == pytest.approx(1.0)
    assert tags["steerpatch.parent"] == "water-shortcut@1.0.0"
    assert tags["steerpatch.parent_version"] == "1"
    assert mv.description == "suppress the water latent (1.1.0)"


def test_logged_model_holds_every_artifact_and_no_pickle(workspace, store_uri):
    cand = workspace.candidate()
    v = register_patch(cand.patch, cand.report, tracking_uri=store_uri)
    c = _client(store_uri)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=c.get_model_version_download_uri(v.name, v.version), tracking_uri=store_uri
    )
    from pathlib import Path

    files = {p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()}
    for needed in (
        "MLmodel",
        "patch.json",
        "sae/cfg.json",
        "sae/sae_weights.safetensors",
        "sae/reference.json",
        "report.json",
        "report.html",
        "MANIFEST.json",
    ):
        assert needed in files
    manifest = json.loads((Path(local) / "MANIFEST.json").read_text())["files"]
    assert set(manifest) == files - {"MANIFEST.json"}
    assert not any(f.endswith((".pkl", ".pickle", ".pt", ".bin")) for f in files)
    reference = json.loads((Path(local) / "sae/reference.json").read_text())
    assert reference["fingerprint"] == workspace.sae.fingerprint
    assert str(c.get_logged_model(v.logged_model_id).status) == "READY"


def test_report_for_another_patch_is_refused(workspace, store_uri, runner):
    other = workspace.candidate(version="2.0.0", scale=0.25)
    cand = workspace.candidate(
        report_hashes={
            "patch": other.patch_obj.content_hash,
            "model": workspace.model_fingerprint,
            "sae": workspace.sae.fingerprint,
            "dataset": "0" * 64,
        }
    )
    result = runner.invoke(
        cli, ["register", str(cand.patch), "--report", str(cand.report), "--tracking-uri", store_uri]
    )
    assert result.exit_code == 2
    assert "was not computed for patch water-shortcut@1.0.0" in result.output
    assert other.patch_obj.content_hash in result.output
    assert _client(store_uri).search_registered_models() == []


@pytest.mark.parametrize("step", ["log_model_artifacts", "create_model_version"])
def test_failure_mid_registration_leaves_nothing_half_registered(workspace, store_uri, monkeypatch, step):
    keep = workspace.candidate()
    register_patch(keep.patch, keep.report, tracking_uri=store_uri)
    cand = workspace.candidate(version="1.1.0", scale=0.5)
    real = getattr(mlflow.MlflowClient, step)

    def fail_after(self, *args, **kwargs):
        real(self, *args, **kwargs)  # the step really happens, then the process "fails"
        raise ConnectionError("injected failure")

    monkeypatch.setattr(mlflow.MlflowClient, step, fail_after)
    with pytest.raises(RegistryError, match="rolled back: injected failure"):
        register_patch(cand.patch, cand.report, tracking_uri=store_uri)
    monkeypatch.undo()
    c = _client(store_uri)
    versions = c.search_model_versions("name = 'concept-clip.water-shortcut'")
    assert [str(v.version) for v in versions] == ["1"]
    live = c.search_logged_models(experiment_ids=[c.get_experiment_by_name("steerpatch").experiment_id])
    assert len(live) == 1  # the failed registration's logged model is gone
    # the store is usable afterwards; MLflow never reuses the number of a deleted version
    expected = "2" if step == "log_model_artifacts" else "3"
    assert register_patch(cand.patch, cand.report, tracking_uri=store_uri).version == expected


def test_failure_on_first_registration_removes_the_new_registered_model(workspace, store_uri, monkeypatch):
    cand = workspace.candidate()
    real = mlflow.MlflowClient.create_model_version

    def fail_after(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise ConnectionError("injected failure")

    monkeypatch.setattr(mlflow.MlflowClient, "create_model_version", fail_after)
    with pytest.raises(RegistryError):
        register_patch(cand.patch, cand.report, tracking_uri=store_uri)
    monkeypatch.undo()
    assert _client(store_uri).search_registered_models() == []
