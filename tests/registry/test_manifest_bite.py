"""The manifest's own hash: a MANIFEST.json rewritten consistently (valid JSON, matching the changed files)
passes every per-file check, so only the hash recorded at registration can catch it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steerpatch.cli.main import cli
from steerpatch.errors import IntegrityError
from steerpatch.registry import (
    check_manifest,
    register_patch,
    resolve_patch_ref,
    resolve_store,
    write_manifest,
)
from steerpatch.registry.store import client

NAME = "concept-clip.water-shortcut"
RECORDED_DIFFERS = "MANIFEST.json: changed (sha256 differs from the hash recorded at registration)"


def _folder(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "report.json").write_text('{"verdict": "fail"}')
    (root / "sub" / "weights.bin").write_bytes(b"\x00\x01\x02")
    return root


def test_a_consistent_rewrite_is_caught_only_by_the_recorded_hash(tmp_path):
    root = _folder(tmp_path / "m")
    recorded = write_manifest(root)
    assert check_manifest(root, manifest_sha256=recorded) == 2
    # the attacker edits a file and rewrites the manifest to match: every per-file hash agrees
    (root / "report.json").write_text('{"verdict": "pass"}')
    write_manifest(root)
    assert json.loads((root / "MANIFEST.json").read_text())["files"].keys() == {"report.json", "sub/weights.bin"}
    assert check_manifest(root) == 2
    with pytest.raises(IntegrityError) as info:
        check_manifest(root, manifest_sha256=recorded, what="m@1")
    assert info.value.problems == [RECORDED_DIFFERS]
    assert str(info.value).startswith("m@1: artifact 'MANIFEST.json' does not match its recorded hash")
    assert info.value.exit_code == 1


def test_a_reformatted_manifest_is_caught(tmp_path):
    root = _folder(tmp_path / "m")
    recorded = write_manifest(root)
    manifest = root / "MANIFEST.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text())))  # same content, other bytes
    with pytest.raises(IntegrityError) as info:
        check_manifest(root, manifest_sha256=recorded)
    assert info.value.problems == [RECORDED_DIFFERS]


def test_changed_missing_and_added_files_are_all_listed(tmp_path):
    root = _folder(tmp_path / "m")
    recorded = write_manifest(root)
    (root / "report.json").write_text("{}")
    (root / "sub" / "weights.bin").unlink()
    (root / "extra.py").write_text("")
    with pytest.raises(IntegrityError) as info:
        check_manifest(root, manifest_sha256=recorded, what="m@1")
    assert info.value.problems == [
        "report.json: changed (sha256 differs from MANIFEST.json)",
        "sub/weights.bin: missing",
        "extra.py: not in MANIFEST.json (added after registration)",
    ]
    assert str(info.value).splitlines()[0] == "m@1: artifact 'report.json' does not match its recorded hash"


def test_a_stored_version_with_a_consistently_rewritten_manifest_is_refused(workspace, store_uri, runner):
    a = workspace.candidate()
    register_patch(a.patch, a.report, tracking_uri=store_uri)
    uri = client(resolve_store(store_uri)).get_model_version_download_uri(NAME, "1")
    stored = Path(uri.removeprefix("file://"))
    report = json.loads((stored / "report.json").read_text())
    report["failed_gates"] = []  # still a valid report, and a valid, self-consistent manifest
    (stored / "report.json").write_text(json.dumps(report))
    write_manifest(stored)
    bad = runner.invoke(cli, ["verify", f"{NAME}@1", "--tracking-uri", store_uri])
    assert bad.exit_code == 1, bad.output
    assert "'MANIFEST.json'" in bad.output and "recorded at registration" in bad.output
    with pytest.raises(IntegrityError, match="MANIFEST.json"):
        resolve_patch_ref(f"{NAME}@1", tracking_uri=store_uri)
