"""Committed files that must stay in step with the code: the patch JSON Schema and the vetted example patch."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_committed_schema_matches_the_format():
    from steerpatch.patch import patch_json_schema

    committed = json.loads((ROOT / "registry" / "patch.schema.json").read_text(encoding="utf-8"))
    assert committed == patch_json_schema()


def test_vetted_patch_loads_and_its_report_passes_and_matches():
    from steerpatch.patch import load_patch
    from steerpatch.validate import load_report

    patch = load_patch(ROOT / "registry" / "patches" / "water-shortcut.json")
    report = load_report(ROOT / "registry" / "patches" / "water-shortcut" / "report.json")
    assert report.verdict == "pass"
    assert report.hashes.patch == patch.content_hash
    conflicting = report.groups["conflicting"]
    assert conflicting.after - conflicting.before >= 0.25
    assert report.flips.right_to_wrong <= 0.02 * report.n
    assert report.accuracy.after >= report.accuracy.before
