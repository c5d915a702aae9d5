"""Compiled graphs in a real sqlite-backed MLflow registry: log, register, resolve, load with pyfunc,
and serve with `mlflow models serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from steerpatch.cli.main import cli
from steerpatch.compile import compile_patch, compiled_name, create_session, register_graph, resolve_graph
from steerpatch.errors import RegistryError
from steerpatch.patch import save_patch
from tests.helpers.tiny import CLASSES, fresh_store, make_patch

PIXELS = np.random.default_rng(3).standard_normal((2, 3, 64, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return fresh_store(tmp_path_factory.mktemp("mlflow"))


@pytest.fixture(scope="module")
def registered(tiny, saes, store, tmp_path_factory):
    """Version 1 registered through the CLI, version 2 through the library with alias production."""
    from click.testing import CliRunner

    folder = tmp_path_factory.mktemp("reg")
    first = make_patch(tiny, saes["standard"], name="reg-fix")
    save_patch(first, folder / "first.json")
    cli_result = CliRunner().invoke(cli, ["compile", str(folder / "first.json"), "--classes", ",".join(CLASSES),
                                          "--out", str(folder / "first.onnx"), "--register",
                                          "--tracking-uri", store, "--json"])
    assert cli_result.exit_code == 0, cli_result.output
    second = make_patch(tiny, saes["standard"], name="reg-fix", version="1.1.0", edits=["5:scale:0"])
    result = compile_patch(second, model=tiny, sae=saes["standard"], classes=CLASSES)
    graph = register_graph(result, alias="production", tracking_uri=store)
    return json.loads(cli_result.stdout), (first, second), result, graph


def test_versions_are_registered_with_links_to_the_patch(registered, store, tiny):
    cli_doc, (first, second), result, graph = registered
    name = compiled_name(tiny.name, "reg-fix")
    assert cli_doc["registered"]["name"] == name and cli_doc["registered"]["version"] == "1"
    assert (graph.name, graph.version, graph.patch_ref) == (name, "2", "reg-fix@1.1.0")

    import mlflow

    client = mlflow.MlflowClient(store, store)
    tags = client.get_model_version(name, "1").tags
    assert tags["steerpatch.patch_hash"] == first.content_hash
    assert tags["steerpatch.patch_ref"] == "reg-fix@1.0.0"
    assert tags["steerpatch.mode"] == "sparse" and float(tags["steerpatch.parity_max_abs_diff"]) <= 1e-4
    assert "CPUExecutionProvider" in tags["steerpatch.providers"]
    assert str(client.get_model_version_by_alias(name, "production").version) == "2"


def test_resolve_follows_the_alias(registered, store, tiny):
    name = compiled_name(tiny.name, "reg-fix")
    assert resolve_graph(f"{name}@production", tracking_uri=store).version == "2"
    assert resolve_graph(f"{name}@1", tracking_uri=store).patch_ref == "reg-fix@1.0.0"
    with pytest.raises(RegistryError, match="does not exist; versions: 1, 2; aliases: production->2"):
        resolve_graph(f"{name}@staging", tracking_uri=store)


def test_mlflow_onnx_model_loads_as_pyfunc_and_matches(registered, store, tiny):
    _, _, result, graph = registered
    import mlflow.pyfunc

    from steerpatch.registry.store import mlflow_uris, resolve_store

    with mlflow_uris(resolve_store(store)):
        model = mlflow.pyfunc.load_model(f"models:/{graph.name}@production")
    assert [i.name for i in model.metadata.get_input_schema().inputs] == ["pixels"]
    got = model.predict({"pixels": PIXELS})
    want = create_session(result.data).run(None, {"pixels": PIXELS})
    np.testing.assert_allclose(got["probs"], want[2], atol=1e-6)


def test_mlflow_models_serve_works_on_the_registered_graph(registered, store, tiny):
    from steerpatch.serve import free_port

    _, _, result, graph = registered
    port = free_port()
    # mlflow starts `uvicorn` from PATH, as it would from an activated virtual environment
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "MLFLOW_TRACKING_URI": store, "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{graph.name}@production",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in server.stdout:
            seen.append(line)
            if "Uvicorn running" in line or "Listening at" in line or "Application startup complete" in line:
                break
        else:
            pytest.fail("mlflow models serve exited: " + "".join(seen[-20:]))
        response = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"inputs": {"pixels": PIXELS.tolist()}},
                              timeout=60)
        assert response.status_code == 200, response.text
        probs = np.asarray(response.json()["predictions"]["probs"])
        np.testing.assert_allclose(probs, create_session(result.data).run(["probs"], {"pixels": PIXELS})[0], atol=1e-5)
    finally:
        server.terminate()
        server.wait(timeout=30)
