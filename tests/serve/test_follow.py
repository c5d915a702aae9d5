"""Serving NAME@ALIAS from a real sqlite-backed MLflow registry: the server follows the alias."""

from __future__ import annotations

import httpx
import pytest

from steerpatch.compile import compile_patch, register_graph
from steerpatch.errors import RegistryError
from steerpatch.serve import GraphSource, ServerThread, create_app
from tests.helpers.tiny import CLASSES, fresh_store, make_patch


@pytest.fixture(scope="module")
def registry(tiny, sae, tmp_path_factory):
    """Two compiled versions of one patch; `production` points at version 1."""
    store = fresh_store(tmp_path_factory.mktemp("follow"))
    versions = []
    for version, edits in (("1.0.0", ["3:scale:0"]), ("1.1.0", ["3:scale:0", "5:clamp:1.0"])):
        patch = make_patch(tiny, sae, name="follow-fix", version=version, edits=edits)
        result = compile_patch(patch, model=tiny, sae=sae, classes=CLASSES, head="zero-shot")
        versions.append((patch, register_graph(result, alias="production" if not versions else None,
                                               tracking_uri=store)))
    return store, versions


def _move(store: str, name: str, version: str) -> None:
    import mlflow

    mlflow.MlflowClient(store, store).set_registered_model_alias(name, "production", version)


def test_server_follows_the_alias_and_reloads_when_it_moves(registry):
    store, [(first, v1), (second, v2)] = registry
    source = GraphSource(f"{v1.name}@production", tracking_uri=store, poll_seconds=0.2)
    try:
        with ServerThread(create_app(source)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
            meta = http.get("/metadata").json()
            assert (meta["model_version"], meta["patch_hash"]) == ("1", first.content_hash)
            assert http.get("/health").json()["follows_alias"] is True

            _move(store, v1.name, v2.version)
            assert source.wait_for_reloads(1, timeout=60)
            meta = http.get("/metadata").json()
            assert (meta["model_version"], meta["patch_hash"]) == ("2", second.content_hash)
            body = http.post("/predict", json={"tensor": [[[0.0] * 64] * 64] * 3}).json()
            assert body["model_version"] == "2" and body["patch_hash"] == second.content_hash

            _move(store, v1.name, v1.version)  # rollback is followed too
            assert source.wait_for_reloads(2, timeout=60)
            assert http.get("/health").json()["model_version"] == "1"
    finally:
        source.stop()


def test_an_unknown_alias_is_a_clear_error(registry):
    store, [(_, v1), _] = registry
    with pytest.raises(RegistryError, match="'.*@staging' does not exist; versions: 1, 2"):
        GraphSource(f"{v1.name}@staging", tracking_uri=store)


def test_a_failed_check_keeps_serving(registry):
    store, [(first, v1), _] = registry
    source = GraphSource(f"{v1.name}@1", tracking_uri=store)
    source.tracking_uri = "file:///nowhere"  # the registry becomes unusable
    assert source.check() is False
    assert source.last_error and "file:///nowhere" in source.last_error
    assert source.current.info.patch_hash == first.content_hash
    source.stop()
