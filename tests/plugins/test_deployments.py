"""The `steerpatch` deployment target: plugin discovery, help, and a real server's whole lifecycle."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

import mlflow_steerpatch.deployments as plugin
import numpy as np
import pytest
from mlflow.deployments import get_deploy_client
from mlflow.exceptions import MlflowException


def test_help_through_the_mlflow_cli():
    done = subprocess.run(
        [sys.executable, "-m", "mlflow", "deployments", "help", "-t", "steerpatch"],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "steerpatch serve" in done.stdout or "ONNX Runtime server" in done.stdout
    assert "models:/NAME@ALIAS" in done.stdout


def test_plugin_has_exactly_one_client_class(tmp_path):
    client = get_deploy_client(f"steerpatch:{tmp_path}")
    assert isinstance(client, plugin.SteerpatchDeploymentClient)
    assert client.state_dir == tmp_path
    assert client.list_deployments() == []
    with pytest.raises(MlflowException, match="no steerpatch deployment named 'nope'"):
        client.get_deployment("nope")
    client.delete_deployment("nope")  # idempotent


@pytest.mark.parametrize(
    ("uri", "source"),
    [
        ("models:/concept-clip.water/3", "concept-clip.water@3"),
        ("models:/concept-clip.water@production", "concept-clip.water@production"),
        ("/tmp/graph.onnx", "/tmp/graph.onnx"),
    ],
)
def test_model_uris_map_to_server_sources(uri, source):
    assert plugin._source_of(uri) == source


def test_a_server_that_cannot_start_is_reported(tmp_path):
    client = get_deploy_client(f"steerpatch:{tmp_path}")
    with pytest.raises(MlflowException, match="exited with code"):
        client.create_deployment("broken", str(tmp_path / "missing.onnx"), config={"timeout": 120})
    assert client.list_deployments() == []


@pytest.fixture(scope="module")
def graphs(vit_patch, small_clip, classes, tmp_path_factory):
    """Two compiled graphs of the patch at different strengths (files `steerpatch serve` accepts)."""
    from steerpatch.compile import compile_patch
    from steerpatch.patch import Edit
    from steerpatch.sae import load_sae

    folder = tmp_path_factory.mktemp("graphs")
    sae = load_sae(vit_patch.sae_dir)
    weaker = vit_patch.patch_obj.with_changes(version="1.0.1", edits=[Edit(latent=5, op="add", value=1.0)])
    out = []
    for i, patch in enumerate((vit_patch.patch_obj, weaker)):
        compile_patch(patch, model=small_clip, sae=sae, classes=classes, out=folder / f"g{i}.onnx")
        out.append(folder / f"g{i}.onnx")
    return out


@pytest.mark.slow
def test_create_get_predict_update_delete(graphs, tmp_path, make_png, classes):
    client = get_deploy_client(f"steerpatch:{tmp_path / 'state'}")
    created = client.create_deployment("water", str(graphs[0]), config={"timeout": 180})
    try:
        assert created["name"] == "water" and created["url"].startswith("http://127.0.0.1:")
        got = client.get_deployment("water")
        assert got["status"] == "healthy"
        assert got["metadata"]["patch_ref"] == "push-latent@1.0.0"
        assert [d["name"] for d in client.list_deployments()] == ["water"]
        with pytest.raises(MlflowException, match="exists"):
            client.create_deployment("water", str(graphs[0]))

        png = make_png(7)
        response = client.predict("water", {"image": base64.b64encode(png).decode()})
        (item,) = response["predictions"]
        probs = np.asarray([item["probs"][c] for c in classes])
        assert response["classes"] == classes
        np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-4)

        old_pid = got["pid"]
        client.update_deployment("water", model_uri=str(graphs[1]), config={"timeout": 180})
        updated = client.get_deployment("water")
        assert updated["metadata"]["patch_ref"] == "push-latent@1.0.1"
        assert updated["pid"] != old_pid and not plugin._alive(old_pid)
        (item,) = client.predict("water", png)["predictions"]
        again = np.asarray([item["probs"][c] for c in classes])
        assert np.abs(again - probs).max() > 0  # the weaker patch scores differently
    finally:
        record = client._record("water") if client.list_deployments() else None
        client.delete_deployment("water")
    assert client.list_deployments() == []
    if record is not None:
        assert not plugin._alive(record["pid"])
