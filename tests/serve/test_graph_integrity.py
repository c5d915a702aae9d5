"""A compiled graph swapped or altered in the artifact store is never served; the server keeps the last good one."""

from __future__ import annotations

import httpx
import pytest

from steerpatch.cli.main import cli
from steerpatch.compile import compile_patch, download_graph, register_graph, resolve_graph
from steerpatch.errors import IntegrityError
from steerpatch.registry import verify_version, write_manifest
from steerpatch.serve import GraphSource, ServerThread, create_app
from tests.helpers.graphs import register_patch_version as _register_patch
from tests.helpers.graphs import stored_folder
from tests.helpers.tiny import CLASSES, fresh_store, make_patch

# every file a registered graph version stores (MANIFEST.json hashes all the others)
STORED = ["MANIFEST.json", "MLmodel", "conda.yaml", "model.onnx", "python_env.yaml", "requirements.txt"]
PIXELS = {"tensor": [[[0.0] * 64] * 64] * 3}


@pytest.fixture(scope="module")
def graphs(tiny, sae, tmp_path_factory):
    """Two compiled versions of one patch; `production` points at version 1, whose patch is registered too."""
    folder = tmp_path_factory.mktemp("integrity")
    store = fresh_store(folder)
    versions = []
    for version, edits in (("1.0.0", ["3:scale:0"]), ("1.1.0", ["3:scale:0", "5:clamp:1.0"])):
        patch = make_patch(tiny, sae, name="guarded-fix", version=version, edits=edits)
        if not versions:
            _register_patch(patch, tiny, sae, folder / "patch", store)
        result = compile_patch(patch, model=tiny, sae=sae, classes=CLASSES, head="zero-shot")
        versions.append((patch, register_graph(result, alias="production" if not versions else None, tracking_uri=store)))
    return store, versions


def _move(store: str, name: str, version: str) -> None:
    import mlflow

    mlflow.MlflowClient(store, store).set_registered_model_alias(name, "production", version)


def test_case1_swapped_graph_is_refused_and_the_server_keeps_the_last_verified_one(graphs):
    store, [(first, v1), (second, v2)] = graphs
    folder = stored_folder(store, v2.name, v2.version)
    original = (folder / "model.onnx").read_bytes()
    manifest = (folder / "MANIFEST.json").read_bytes()
    source = GraphSource(f"{v1.name}@production", tracking_uri=store, poll_seconds=3600)
    try:
        with ServerThread(create_app(source)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
            assert http.get("/metadata").json()["model_version"] == "1"
            # version 2's graph replaced by version 1's, and its manifest rewritten to agree
            (folder / "model.onnx").write_bytes((stored_folder(store, v1.name, v1.version) / "model.onnx").read_bytes())
            write_manifest(folder)
            _move(store, v1.name, v2.version)
            assert source.check() is False
            health = http.get("/health").json()
            assert health["model_version"] == "1" and f"{v2.name}@2" in health["last_error"]
            assert "MANIFEST.json" in health["last_error"]
            body = http.post("/predict", json=PIXELS).json()
            assert (body["model_version"], body["patch_hash"]) == ("1", first.content_hash)
            # repaired in the store: the next check loads it
            (folder / "model.onnx").write_bytes(original)
            (folder / "MANIFEST.json").write_bytes(manifest)
            assert source.check() is True
            assert http.post("/predict", json=PIXELS).json()["patch_hash"] == second.content_hash
    finally:
        source.stop()
        (folder / "model.onnx").write_bytes(original)
        (folder / "MANIFEST.json").write_bytes(manifest)
        _move(store, v1.name, v1.version)


def test_swapped_graph_fails_verify_and_a_fresh_server_refuses_to_start(graphs, runner):
    store, [(_, v1), (_, v2)] = graphs
    folder = stored_folder(store, v2.name, v2.version)
    original = (folder / "model.onnx").read_bytes()
    try:
        (folder / "model.onnx").write_bytes((stored_folder(store, v1.name, v1.version) / "model.onnx").read_bytes())
        result = runner.invoke(cli, ["verify", f"{v2.name}@2", "--tracking-uri", store])
        assert result.exit_code == 1
        assert f"{v2.name}@2: artifact 'model.onnx'" in result.output.strip().splitlines()[0]
        with pytest.raises(IntegrityError, match=rf"{v2.name}@2: artifact 'model.onnx'"):
            GraphSource(f"{v2.name}@2", tracking_uri=store)
    finally:
        (folder / "model.onnx").write_bytes(original)


@pytest.mark.parametrize("relpath", STORED)
def test_one_flipped_byte_in_any_stored_graph_file_is_refused(graphs, relpath, tmp_path):
    store, [(_, v1), _] = graphs
    folder = stored_folder(store, v1.name, v1.version)
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"registered_model_meta"}
    assert sorted(found) == STORED
    target = folder / relpath
    original = target.read_bytes()
    middle = len(original) // 2
    target.write_bytes(original[:middle] + bytes([original[middle] ^ 0x01]) + original[middle + 1 :])
    try:
        with pytest.raises(IntegrityError, match=rf"{v1.name}@1"):
            verify_version(f"{v1.name}@1", tracking_uri=store)
        with pytest.raises(IntegrityError, match=rf"{v1.name}@1"):
            GraphSource(f"{v1.name}@production", tracking_uri=store)
        with pytest.raises(IntegrityError, match=rf"{v1.name}@1"):  # the road `steerpatch score` takes
            download_graph(resolve_graph(f"{v1.name}@1", tracking_uri=store), tmp_path / "g", tracking_uri=store)
        # the patch version the graph was compiled from covers its graphs
        with pytest.raises(IntegrityError, match=rf"{v1.name}@1"):
            verify_version(f"{v1.name[: -len('-onnx')]}@1", tracking_uri=store)
    finally:
        target.write_bytes(original)
    assert verify_version(f"{v1.name}@1", tracking_uri=store)["ok"] is True
    assert verify_version(f"{v1.name[: -len('-onnx')]}@1", tracking_uri=store)["graphs"] == [
        {"name": v1.name, "version": "1"}
    ]


def test_graph_is_linked_to_the_patch_version_and_serving_checks_that_version_too(graphs, tmp_path):
    store, [(first, v1), _] = graphs
    assert v1.patch_version == "1"
    patch_model = v1.name[: -len("-onnx")]
    folder = stored_folder(store, patch_model, "1")
    report = folder / "report.html"
    original = report.read_bytes()
    report.write_bytes(original + b"<!-- edited -->")
    try:
        with pytest.raises(IntegrityError, match=rf"{patch_model}@1: artifact 'report.html'"):
            GraphSource(f"{v1.name}@production", tracking_uri=store)
        with pytest.raises(IntegrityError, match=rf"{patch_model}@1: artifact 'report.html'"):
            GraphSource(f"{patch_model}@1", tracking_uri=store)
    finally:
        report.write_bytes(original)


def test_verification_runs_at_load_never_per_request(graphs, monkeypatch):
    import steerpatch.registry.integrity as integrity

    store, [(_, v1), _] = graphs
    calls = []
    real = integrity.verify_graph_folder
    monkeypatch.setattr(integrity, "verify_graph_folder", lambda *a, **k: calls.append(a) or real(*a, **k))
    source = GraphSource(f"{v1.name}@production", tracking_uri=store, poll_seconds=3600)
    try:
        assert len(calls) == 1
        with ServerThread(create_app(source)) as server, httpx.Client(base_url=server.url, timeout=60) as http:
            for _ in range(5):
                assert http.post("/predict", json=PIXELS).status_code == 200
        assert len(calls) == 1
    finally:
        source.stop()
