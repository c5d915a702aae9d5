"""The production path: a registered, promoted patch is compiled from NAME@ALIAS and served by
following the patch model's alias (real validation, registration and promotion in sqlite MLflow)."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from steerpatch.cli.main import cli
from steerpatch.serve import GraphSource, ServerThread, create_app
from tests.helpers.tiny import CLASSES, fresh_store, make_patch


@pytest.fixture(scope="module")
def promoted(tiny, sae, tmp_path_factory):
    """A patch validated on a small image folder, registered, and forced to `production`."""
    from steerpatch.patch import save_patch
    from steerpatch.registry import promote, register_patch
    from steerpatch.validate import validate_patch, write_report

    root = tmp_path_factory.mktemp("alias")
    data = root / "data"
    rng = np.random.default_rng(0)
    for label in CLASSES:
        (data / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(data / label / f"{i}.png")
    patch = make_patch(tiny, sae, name="alias-fix", edits=["3:scale:0", "9:scale:0"])
    patch_path = save_patch(patch, root / "alias-fix.json")
    report = validate_patch(patch, data, model=tiny, sae=sae, progress=False, dose=False)
    report_path, _ = write_report(report, root / "report")
    store = fresh_store(root / "store")
    version = register_patch(patch_path, report_path, sae_path=sae.location, classes=CLASSES, tracking_uri=store)
    promote(version.name, version.version, "production", force=True, reason="test of the serving path",
            tracking_uri=store)
    return store, patch, version


def test_compile_from_alias_then_serve_the_patch_alias(promoted, runner, tmp_path, monkeypatch):
    store, patch, version = promoted
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    ref = f"{version.name}@production"

    result = runner.invoke(cli, ["compile", ref, "--register", "--tracking-uri", store,
                                 "--out", str(tmp_path / "g.onnx"), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["registry_ref"] == ref and doc["patch_hash"] == patch.content_hash
    assert doc["classes"] == CLASSES  # taken from the registered model
    graph = doc["registered"]
    assert graph["name"] == version.name + "-onnx" and graph["patch_version"] == version.version
    assert graph["via"] == f"{graph['name']}@production"  # the alias is mirrored on the compiled model

    # the patch model's alias leads to the graph compiled from the version it points at
    source = GraphSource(ref, tracking_uri=store)
    try:
        with ServerThread(create_app(source, follow=False)) as server:
            meta = httpx.get(server.url + "/metadata", timeout=30).json()
            assert meta["patch_hash"] == patch.content_hash
            assert meta["patch_version"] == version.version and meta["model_version"] == graph["version"]
            assert meta["graph"]["registry_ref"] == ref
    finally:
        source.stop()


def test_serving_a_patch_that_was_never_compiled_says_how_to_fix_it(promoted, tiny, sae, tmp_path):
    from steerpatch.errors import RegistryError
    from steerpatch.patch import save_patch
    from steerpatch.registry import register_patch

    store, patch, version = promoted
    # a second version of the patch, registered but not compiled
    bumped = make_patch(tiny, sae, name="alias-fix", version="1.0.1", edits=["3:scale:0.5"])
    path = save_patch(bumped, tmp_path / "bumped.json")
    report = load_report_for(bumped, tiny, sae, tmp_path)
    second = register_patch(path, report, sae_path=sae.location, classes=CLASSES, tracking_uri=store)
    with pytest.raises(RegistryError, match=r"has no compiled graph yet; run `steerpatch compile .* --register`"):
        GraphSource(f"{second.name}@{second.version}", tracking_uri=store)


def load_report_for(patch, tiny, sae, folder):
    from steerpatch.validate import validate_patch, write_report

    data = folder / "data"
    for label in CLASSES:
        (data / label).mkdir(parents=True)
        Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(data / label / "0.png")
    report = validate_patch(patch, data, model=tiny, sae=sae, progress=False, dose=False)
    return write_report(report, folder / "report")[0]
