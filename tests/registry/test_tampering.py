"""An adversary with write access to the store, or to the files a user hands in: every attack is refused.

Each test tampers with a real sqlite store's artifacts (or a report before registration) and asserts
the refusal: exit 1 for integrity, exit 2 for usage, one first line naming the version, the file and
what differs, and nothing changed in the store.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from steerpatch.cli.main import cli
from steerpatch.errors import IntegrityError, RegistryError
from steerpatch.registry import (
    audit_model,
    promote,
    recheck_report,
    register_patch,
    resolve_patch_ref,
    resolve_store,
    verify_version,
    write_manifest,
)
from steerpatch.registry.store import client, mlflow_uris
from tests.helpers.bundle import BUNDLE_FILES

NAME = "concept-clip.water-shortcut"
STORED = BUNDLE_FILES  # every file a registered patch version stores (MANIFEST.json hashes all the others)


def stored_folder(uri: str, name: str, version: str) -> Path:
    """Where the store keeps a version's artifacts on disk (what an adversary would edit)."""
    location = client(resolve_store(uri)).get_model_version_download_uri(name, version)
    return Path(unquote(urlparse(location).path))


def state(uri: str) -> tuple:
    """Everything promotion or registration could change: versions, aliases, recorded moves."""
    c = client(resolve_store(uri))
    model = c.get_registered_model(NAME)
    versions = sorted((v.version, v.tags.get("steerpatch.patch_hash")) for v in c.search_model_versions(f"name = '{NAME}'"))
    return versions, dict(model.aliases), sorted(k for k in model.tags if "alias_move" in k)


def load_pyfunc(uri: str, ref: str):
    import mlflow.pyfunc

    with mlflow_uris(resolve_store(uri)):
        return mlflow.pyfunc.load_model(ref)


@pytest.fixture()
def registered(workspace, store_uri):
    good = workspace.candidate()
    register_patch(good.patch, good.report, tracking_uri=store_uri)
    promote(NAME, 1, "production", policy=workspace.policy, tracking_uri=store_uri)
    return workspace, good


def test_case2_report_edited_after_registration_is_not_promotable(registered, store_uri, runner):
    workspace, _ = registered
    report = stored_folder(store_uri, NAME, "1") / "report.json"
    data = json.loads(report.read_text())
    data["accuracy"]["after"] = 0.99
    report.write_text(json.dumps(data, indent=2))
    before = state(store_uri)
    result = runner.invoke(
        cli, ["promote", NAME, "1", "--alias", "staging", "--policy", str(workspace.policy), "--tracking-uri", store_uri]
    )
    assert result.exit_code == 1, result.output
    first = result.output.strip().splitlines()[0]
    assert f"{NAME}@1" in first and "report.json" in first
    assert state(store_uri) == before
    with pytest.raises(IntegrityError, match=r"concept-clip.water-shortcut@1: artifact 'report.json'"):
        verify_version(f"{NAME}@1", tracking_uri=store_uri)


def test_case3_patch_replaced_with_manifest_rewritten_is_refused_everywhere(registered, store_uri, tmp_path):
    workspace, _ = registered
    other = workspace.candidate(version="9.9.9", scale=0.9)
    folder = stored_folder(store_uri, NAME, "1")
    (folder / "patch.json").write_bytes(other.patch.read_bytes())
    write_manifest(folder)  # the manifest now agrees with the swapped patch: only the registry's record does not
    with pytest.raises(IntegrityError, match=r"@1: artifact 'MANIFEST.json'"):
        verify_version(f"{NAME}@production", tracking_uri=store_uri)
    with pytest.raises(IntegrityError, match=r"@1: artifact 'MANIFEST.json'"):
        load_pyfunc(store_uri, f"models:/{NAME}@production")
    with pytest.raises(IntegrityError, match=r"@1: artifact 'MANIFEST.json'"):
        resolve_patch_ref(f"{NAME}@production", tracking_uri=store_uri, dst=tmp_path / "compile-input")
    with pytest.raises(IntegrityError):
        promote(NAME, 1, "staging", policy=workspace.policy, tracking_uri=store_uri)


def test_case4_mlmodel_naming_other_code_is_refused_before_mlflow_imports_it(registered, store_uri, tmp_path, monkeypatch):
    import mlflow_steerpatch

    marker = tmp_path / "imported"
    (tmp_path / "evil_loader.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\ndef _load_pyfunc(path):\n    return None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = stored_folder(store_uri, NAME, "1")
    mlmodel = folder / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("loader_module: mlflow_steerpatch", "loader_module: evil_loader"))
    write_manifest(folder)
    with pytest.raises(IntegrityError, match=r"@1: artifact 'MANIFEST.json'"):
        mlflow_steerpatch.load_verified_pyfunc(f"models:/{NAME}@production", tracking_uri=store_uri)
    assert not marker.exists() and "evil_loader" not in sys.modules
    with pytest.raises(IntegrityError, match=r"@1: artifact 'MANIFEST.json'"):
        verify_version(f"{NAME}@1", tracking_uri=store_uri)


def test_mlmodel_loader_is_checked_even_when_hashes_agree(registered, store_uri, tmp_path):
    from steerpatch.registry.integrity import check_mlmodel

    folder = tmp_path / "copy"
    import shutil

    shutil.copytree(stored_folder(store_uri, NAME, "1"), folder)
    check_mlmodel(folder, loader="mlflow_steerpatch", what="x@1")
    text = (folder / "MLmodel").read_text()
    (folder / "MLmodel").write_text(text.replace("loader_module: mlflow_steerpatch", "loader_module: os"))
    with pytest.raises(IntegrityError, match=r"x@1: artifact 'MLmodel' names loader_module 'os', expected 'mlflow_steerpatch'"):
        check_mlmodel(folder, loader="mlflow_steerpatch", what="x@1")
    (folder / "MLmodel").write_text(text.replace("python_function:", "python_function:\n    code: code"))
    with pytest.raises(IntegrityError, match="ships code"):
        check_mlmodel(folder, loader="mlflow_steerpatch", what="x@1")


def test_case5_report_copied_from_another_patch_is_refused(workspace, store_uri, runner):
    first = workspace.candidate()
    second = workspace.candidate(version="1.1.0", scale=0.5)
    data = json.loads(first.report.read_text())
    data["hashes"]["patch"] = second.patch_obj.content_hash
    forged = second.patch.parent / "forged.json"
    forged.write_text(json.dumps(data))
    result = runner.invoke(cli, ["register", str(second.patch), "--report", str(forged), "--tracking-uri", store_uri])
    assert result.exit_code == 1, result.output
    assert "water-shortcut@1.1.0" in result.output and "patch is 'water-shortcut@1.0.0'" in result.output
    assert not client(resolve_store(store_uri)).search_model_versions(f"name = '{NAME}'")


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda d: d["gates"][0].update(value=0.0, passed=True), id="gate-value"),
        pytest.param(lambda d: (d["gates"][0].update(value=0.0, passed=True), d["flips"].update(right_to_wrong_rate=0.0)),
                     id="gate-and-rate"),
        pytest.param(lambda d: (d["gates"][0].update(value=0.0, passed=True),
                                d["flips"].update(right_to_wrong_rate=0.0, right_to_wrong=0)), id="gate-rate-and-count"),
    ],
)
def test_case6_failing_report_with_edited_gates_is_refused(workspace, store_uri, edit):
    bad = workspace.candidate(version="1.1.0", scale=0.5, right_to_wrong=5)
    data = json.loads(bad.report.read_text())
    assert data["verdict"] == "fail" and data["gates"][0]["name"] == "max_right_to_wrong_rate"
    edit(data)
    data.update(verdict="pass", failed_gates=[])
    bad.report.write_text(json.dumps(data))
    with pytest.raises(IntegrityError, match="contradicts itself"):
        register_patch(bad.patch, bad.report, tracking_uri=store_uri)
    with pytest.raises(IntegrityError, match="contradicts itself"):
        recheck_report(bad.report, workspace.policy)


def test_gates_are_rederived_from_counts_not_read(workspace):
    """A report whose gate values were left out of date (policy changed since) is judged on its counts."""
    from steerpatch.registry.evidence import rederived_values
    from steerpatch.validate.report import load_report

    bad = workspace.candidate(version="1.1.0", scale=0.5, right_to_wrong=5)
    report = load_report(bad.report)
    assert rederived_values(report)["max_right_to_wrong_rate"] == pytest.approx(5 / 100)
    doctored = report.model_copy(update={"gates": []})
    assert rederived_values(doctored)["max_right_to_wrong_rate"] == pytest.approx(5 / 100)


def test_case7_one_name_at_version_holds_one_content(workspace, store_uri, runner):
    first = workspace.candidate()
    v = register_patch(first.patch, first.report, tracking_uri=store_uri)
    again = register_patch(first.patch, first.report, tracking_uri=store_uri)
    assert (again.version, again.existing, v.existing) == ("1", True, False)
    before = state(store_uri)
    other = workspace.candidate(scale=0.3)  # same name@version 1.0.0, other edits
    assert other.patch_obj.ref == first.patch_obj.ref and other.patch_obj.content_hash != v.patch_hash
    result = runner.invoke(cli, ["register", str(other.patch), "--report", str(other.report), "--tracking-uri", store_uri])
    assert result.exit_code == 2, result.output
    assert "already registered as concept-clip.water-shortcut version 1" in result.output
    assert "steerpatch patch bump" in result.output
    assert state(store_uri) == before
    assert len(client(resolve_store(store_uri)).search_model_versions(f"name = '{NAME}'")) == 1


@pytest.mark.parametrize("relpath", STORED)
def test_one_flipped_byte_in_any_stored_file_is_refused(shared_store, relpath, tmp_path, runner, monkeypatch):
    import mlflow_steerpatch

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    uri, workspace = shared_store
    folder = stored_folder(uri, NAME, "1")
    # MLflow itself drops registered_model_meta into a local store's folder when it loads by models:/
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {"registered_model_meta"}
    assert sorted(found) == sorted(STORED)
    target = folder / relpath
    original = target.read_bytes()
    position = len(original) // 2
    target.write_bytes(original[:position] + bytes([original[position] ^ 0x01]) + original[position + 1 :])
    before = state(uri)
    try:
        result = runner.invoke(cli, ["verify", f"{NAME}@1", "--tracking-uri", uri])
        assert result.exit_code == 1, result.output
        first = result.output.strip().splitlines()[0]
        assert f"{NAME}@1" in first and ("MANIFEST.json" in first or relpath in first), first
        with pytest.raises(IntegrityError, match=f"{NAME}@1"):
            promote(NAME, 1, "staging", policy=workspace.policy, tracking_uri=uri)
        with pytest.raises(IntegrityError, match=f"{NAME}@1"):
            resolve_patch_ref(f"{NAME}@production", tracking_uri=uri, dst=tmp_path / "compile-input")
        with pytest.raises(IntegrityError, match=f"{NAME}@1"):
            mlflow_steerpatch.load_verified_pyfunc(f"{NAME}@production", tracking_uri=uri)
        # MLflow parses MLmodel itself before steerpatch code runs; every other file reaches our check
        with pytest.raises(Exception if relpath == "MLmodel" else IntegrityError):
            load_pyfunc(uri, f"models:/{NAME}@production")
        assert state(uri) == before
        assert audit_model(NAME, policy=workspace.policy, tracking_uri=uri)["problems"]
    finally:
        target.write_bytes(original)
    verify_version(f"{NAME}@1", tracking_uri=uri)  # repaired: verifies again


def test_audit_reports_unrecorded_alias_moves_and_exits_1(registered, store_uri, runner):
    workspace, _ = registered
    ok = runner.invoke(cli, ["audit", NAME, "--policy", str(workspace.policy), "--tracking-uri", store_uri])
    assert ok.exit_code == 0, ok.output
    assert "everything verifies" in ok.output
    bad = workspace.candidate(version="1.1.0", scale=0.5, right_to_wrong=5)
    register_patch(bad.patch, bad.report, tracking_uri=store_uri)
    # moved with MLflow directly: no gate, no record
    client(resolve_store(store_uri)).set_registered_model_alias(NAME, "production", "2")
    result = runner.invoke(cli, ["audit", NAME, "--policy", str(workspace.policy), "--tracking-uri", store_uri])
    assert result.exit_code == 1, result.output
    assert "alias production points at v2 but no recorded move put it there" in result.output


def test_audit_flags_a_tampered_version(registered, store_uri):
    workspace, _ = registered
    (stored_folder(store_uri, NAME, "1") / "report.html").write_text("<html>forged</html>")
    data = audit_model(NAME, policy=workspace.policy, tracking_uri=store_uri)
    assert [row["ok"] for row in data["versions"]] == [False]
    assert "report.html" in data["versions"][0]["problem"]
    assert any("production" in p and "does not verify" in p for p in data["problems"])


def test_registry_error_for_unknown_version_is_usage(registered, store_uri, runner):
    result = runner.invoke(cli, ["verify", f"{NAME}@7", "--tracking-uri", store_uri])
    assert result.exit_code == 2 and "does not exist" in result.output
    with pytest.raises(RegistryError):
        verify_version(f"{NAME}@7", tracking_uri=store_uri)
