"""A multi-patch graph registered with one link per patch, verified when it is downloaded, and served."""

from __future__ import annotations

import json

import httpx
import pytest

from steerpatch.cli.main import cli
from steerpatch.errors import IntegrityError
from steerpatch.patch import save_patch
from steerpatch.registry import write_manifest
from steerpatch.registry.graph_links import PATCHES_FILE, PATCHES_TAG
from steerpatch.serve import GraphSource, ServerThread, create_app
from tests.helpers.graphs import register_patch_version as _register_patch
from tests.helpers.graphs import stored_folder
from tests.helpers.tiny import CLASSES, fresh_store

PIXELS = {"tensor": [[[0.0] * 64] * 64] * 3}


@pytest.fixture(scope="module")
def registered(tiny, sae, graph, candidate, tmp_path_factory, runner_module):
    """`graph`'s patch registered as a patch version; `candidate`'s only a file; both in one registered graph."""
    folder = tmp_path_factory.mktemp("multi-registry")
    store = fresh_store(folder)
    (first, _), (second, _) = graph, candidate
    patch_version = _register_patch(first, tiny, sae, folder / "patch", store)
    files = [save_patch(p, folder / f"{p.name}.json") for p in (first, second)]
    result = runner_module.invoke(cli, ["compile", *map(str, files), "--classes", ",".join(CLASSES),
                                        "--out", str(folder / "multi.onnx"), "--register", "--tracking-uri", store,
                                        "--json"])
    assert result.exit_code == 0, result.output
    return store, (first, second), patch_version, json.loads(result.stdout)


@pytest.fixture(scope="module")
def runner_module():
    from click.testing import CliRunner

    return CliRunner()


def test_the_graph_is_registered_with_each_patch_linked(registered, tiny):
    import mlflow

    from steerpatch.registry import registered_name

    store, (first, second), patch_version, doc = registered
    reg = doc["registered"]
    assert (reg["name"], reg["version"]) == (registered_name(tiny.name, "served-fix_candidate-fix") + "-onnx", "1")
    tags = mlflow.MlflowClient(store, store).get_model_version(reg["name"], "1").tags
    links = json.loads(tags[PATCHES_TAG])
    assert [(link["index"], link["patch_hash"], link["patch_version"]) for link in links] == [
        (1, first.content_hash, str(patch_version.version)), (2, second.content_hash, None)]
    assert json.loads(tags["steerpatch.patch_hashes"]) == [first.content_hash, second.content_hash]
    stored = stored_folder(store, reg["name"], "1")
    manifest = json.loads((stored / "MANIFEST.json").read_text())
    assert PATCHES_FILE in manifest["files"] and (stored / PATCHES_FILE).read_text() == tags[PATCHES_TAG]


def test_the_registered_graph_serves_each_patch_by_index(registered):
    store, (first, second), _, doc = registered
    source = GraphSource(f"{doc['registered']['name']}@1", tracking_uri=store, poll_seconds=3600)
    try:
        with ServerThread(create_app(source, follow=False)) as server, httpx.Client(base_url=server.url) as http:
            for index, expected in ((1, first.content_hash), (2, second.content_hash), (0, None)):
                body = http.post("/predict", params={"patch_index": index}, json=PIXELS).json()
                assert (body["model_version"], body["patch_hash"]) == ("1", expected), body
    finally:
        source.stop()


def test_audit_of_a_patch_lists_the_multi_patch_graphs_that_link_it(registered, runner_module):
    import mlflow

    from steerpatch.registry.graph_links import LINK_TAG

    store, (first, _), patch_version, doc = registered
    graph_name, patch_name = doc["registered"]["name"], patch_version.name
    c = mlflow.MlflowClient(store, store)
    c.set_registered_model_alias(graph_name, "tenants", "1")
    assert c.get_model_version(graph_name, "1").tags[LINK_TAG + first.content_hash] == f"{patch_name}@{patch_version.version}"
    result = runner_module.invoke(cli, ["audit", patch_name, "--tracking-uri", store, "--json"])
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["versions"]
    assert row["linked_graphs_more"] is False
    (linked,) = row["linked_graphs"]
    assert (linked["name"], linked["version"], linked["patch_index"]) == (graph_name, "1", 1)
    assert "tenants" in linked["aliases"]
    text = runner_module.invoke(cli, ["audit", patch_name, "--tracking-uri", store]).stdout
    assert f"        in multi-patch graph {graph_name}@1 [{', '.join(linked['aliases'])}] as patch_index 1" in text
    # a link tag that the graph's own patch list does not confirm is a problem, not a listed link
    tags = c.get_model_version(graph_name, "1").tags
    try:
        c.set_model_version_tag(graph_name, "1", PATCHES_TAG, "[]")
        result = runner_module.invoke(cli, ["audit", patch_name, "--tracking-uri", store, "--json"])
        assert result.exit_code == 1, result.output
        body = json.loads(result.stdout)
        assert body["versions"][0]["linked_graphs"] == []
        assert body["problems"] == [f"{graph_name}@1 is tagged as linking {patch_name}@{patch_version.version} but "
                                    f"its {PATCHES_TAG} list does not"]
    finally:
        c.set_model_version_tag(graph_name, "1", PATCHES_TAG, tags[PATCHES_TAG])
        c.delete_registered_model_alias(graph_name, "tenants")


def test_a_linked_patch_version_that_changed_is_refused_on_download(registered):
    import mlflow

    store, (first, _), patch_version, doc = registered
    c = mlflow.MlflowClient(store, store)
    name, version = patch_version.name, str(patch_version.version)
    c.set_model_version_tag(name, version, "steerpatch.patch_hash", "0" * 64)
    try:
        with pytest.raises(IntegrityError, match=rf"patch_index 1 was compiled with patch_hash '{first.content_hash}'"):
            GraphSource(f"{doc['registered']['name']}@1", tracking_uri=store)
    finally:
        c.set_model_version_tag(name, version, "steerpatch.patch_hash", first.content_hash)


def test_a_patch_list_rewritten_in_the_store_is_refused(registered):
    store, _, _, doc = registered
    folder = stored_folder(store, doc["registered"]["name"], "1")
    original, manifest = (folder / PATCHES_FILE).read_text(), (folder / "MANIFEST.json").read_bytes()
    links = json.loads(original)
    links.reverse()  # the same patches, swapped: rows would be steered by the wrong patch
    try:
        (folder / PATCHES_FILE).write_text(json.dumps(links, sort_keys=True))
        write_manifest(folder)  # the manifest agrees; its recorded hash does not
        with pytest.raises(IntegrityError, match="MANIFEST.json"):
            GraphSource(f"{doc['registered']['name']}@1", tracking_uri=store)
    finally:
        (folder / PATCHES_FILE).write_text(original)
        (folder / "MANIFEST.json").write_bytes(manifest)


def _verify(runner, store, ref, *extra):
    return runner.invoke(cli, ["verify", ref, "--tracking-uri", store, *extra])


def test_verify_checks_each_linked_patch_of_an_intact_version(registered, runner_module):
    import mlflow

    store, (first, second), patch_version, doc = registered
    name = doc["registered"]["name"]
    result = _verify(runner_module, store, f"{name}@1")
    assert result.exit_code == 0, result.output
    linked = f"{patch_version.name}@{patch_version.version}"
    assert result.stdout.splitlines()[1:] == [
        f"  patch_index 1  {first.ref}  {first.content_hash[:12]}  ok ({linked})",
        f"  patch_index 2  {second.ref}  {second.content_hash[:12]}  not checked (compiled from a file, no registered "
        "patch version)"]
    mlflow.MlflowClient(store, store).set_registered_model_alias(name, "verified", "1")
    result = _verify(runner_module, store, f"{name}@verified", "--json")  # the alias form checks the same links
    assert result.exit_code == 0, result.output
    patches = json.loads(result.stdout)["patches"]
    assert [(p["index"], p["patch_hash"], p["patch_version"], p["status"]) for p in patches] == [
        (1, first.content_hash, str(patch_version.version), "ok"), (2, second.content_hash, None, "unregistered")]


@pytest.mark.parametrize("rewrite_tag", [False, True], ids=["file", "file-and-tag"])
def test_verify_fails_on_a_patch_list_rewritten_with_its_manifest_record(registered, runner_module, rewrite_tag):
    """PATCHES.json swapped in the store with MANIFEST.json and its recorded hash: only the link check sees it."""
    import mlflow

    from steerpatch.registry.integrity import MANIFEST_TAG

    store, (first, _), _, doc = registered
    name = doc["registered"]["name"]
    c = mlflow.MlflowClient(store, store)
    tags = c.get_model_version(name, "1").tags
    folder = stored_folder(store, name, "1")
    original, manifest = (folder / PATCHES_FILE).read_text(), (folder / "MANIFEST.json").read_bytes()
    swapped = json.dumps(json.loads(original)[::-1], sort_keys=True)
    try:
        (folder / PATCHES_FILE).write_text(swapped)
        c.set_model_version_tag(name, "1", MANIFEST_TAG, write_manifest(folder))
        if rewrite_tag:
            c.set_model_version_tag(name, "1", PATCHES_TAG, swapped)
        result = _verify(runner_module, store, f"{name}@1")
        assert result.exit_code == 1, result.output
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"Error: {name}@1: ")
        assert f"first at patch_index 1 ({first.ref})" in result.stderr
        assert ("differs from the steerpatch.patches tag" in result.stderr) is not rewrite_tag
    finally:
        (folder / PATCHES_FILE).write_text(original)
        (folder / "MANIFEST.json").write_bytes(manifest)
        for tag in (MANIFEST_TAG, PATCHES_TAG):
            c.set_model_version_tag(name, "1", tag, tags[tag])
    assert _verify(runner_module, store, f"{name}@1").exit_code == 0  # restored: verifies again


@pytest.mark.parametrize("tamper", ["tag", "file"])
def test_verify_fails_naming_the_patch_when_its_linked_version_changed(registered, runner_module, tamper):
    import mlflow

    store, (first, second), patch_version, doc = registered
    name, linked = doc["registered"]["name"], (patch_version.name, str(patch_version.version))
    c = mlflow.MlflowClient(store, store)
    html = stored_folder(store, *linked) / "report.html"
    saved = html.read_bytes()
    try:
        if tamper == "tag":
            c.set_model_version_tag(*linked, "steerpatch.patch_hash", "0" * 64)
            reason = f"patch_index 1 was compiled with patch_hash '{first.content_hash}' but {'@'.join(linked)} has"
        else:
            html.write_text("<html>edited in the store</html>")
            reason = f"patch_index 1 ({first.ref}): {'@'.join(linked)}: artifact 'report.html'"
        result = _verify(runner_module, store, f"{name}@1")
        assert result.exit_code == 1, result.output
        assert result.stderr.splitlines() == [result.stderr.strip()] and reason in result.stderr, result.stderr
        assert result.stdout.splitlines()[0] == (
            f"  patch_index 1  {first.ref}  {first.content_hash[:12]}  FAILED ({'@'.join(linked)})")
        assert result.stdout.splitlines()[1].startswith(f"  patch_index 2  {second.ref}  {second.content_hash[:12]}")
        result = _verify(runner_module, store, f"{name}@1", "--json")
        assert result.exit_code == 1, result.output
        body = json.loads(result.stdout)
        assert (body["ok"], [p["status"] for p in body["patches"]]) == (False, ["failed", "unregistered"])
        assert reason in body["patches"][0]["problem"]
    finally:
        c.set_model_version_tag(*linked, "steerpatch.patch_hash", first.content_hash)
        html.write_bytes(saved)
