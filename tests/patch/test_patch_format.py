"""The patch document: hashing, round trips, field rules, the golden file and the JSON Schema."""

from __future__ import annotations

import hashlib
import json

import pytest
from pydantic import ValidationError

from steerpatch.errors import PatchError, SteerpatchError
from steerpatch.patch import (
    FORMAT_VERSION,
    OPS,
    Patch,
    dumps_patch,
    load_patch,
    patch_from_json,
    patch_json_schema,
    save_patch,
)
from tests.helpers.patch_docs import GOLDEN, make_fields

GOLDEN_HASH = "02b97c464c74e273d42cc6c22ddde4484ae469a99ed72c7a147000d0fccc7112"


def test_golden_file_has_its_exact_hash():
    raw = json.loads(GOLDEN.read_text())
    assert raw["content_hash"] == GOLDEN_HASH
    # the hash definition, computed without pydantic: canonical JSON of every other field
    body = {k: v for k, v in raw.items() if k != "content_hash"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert hashlib.sha256(canonical).hexdigest() == GOLDEN_HASH
    patch = load_patch(GOLDEN)
    assert patch.content_hash == GOLDEN_HASH == patch.compute_hash()
    assert patch.ref == "water-shortcut@1.0.0"


def test_golden_file_bytes_are_what_save_writes(tmp_path):
    patch = load_patch(GOLDEN)
    out = save_patch(patch, tmp_path / "again.json")
    assert out.read_bytes() == GOLDEN.read_bytes()
    assert dumps_patch(Patch.create(**make_fields())) == GOLDEN.read_text()


def test_hash_is_stable_under_key_order_and_whitespace():
    raw = json.loads(GOLDEN.read_text())

    def reorder(value):
        if isinstance(value, dict):
            return {k: reorder(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [reorder(v) for v in value]
        return value

    for text in (
        json.dumps(reorder(raw)),
        json.dumps(raw, indent=7),
        json.dumps(raw, separators=(",", ":")),
        "\n\n  " + json.dumps(reorder(raw), indent="\t") + "\r\n",
    ):
        assert patch_from_json(text).content_hash == GOLDEN_HASH


def test_integer_values_hash_like_floats():
    raw = json.loads(GOLDEN.read_text())
    raw["edits"][0]["value"] = 0  # hand-written "0" instead of "0.0"
    assert patch_from_json(json.dumps(raw)).content_hash == GOLDEN_HASH


def test_any_content_change_breaks_the_hash():
    raw = json.loads(GOLDEN.read_text())
    raw["edits"][1]["value"] = 0.25
    with pytest.raises(PatchError, match="content_hash: .* does not match") as info:
        patch_from_json(json.dumps(raw))
    assert "steerpatch patch check --rehash" in str(info.value)


def test_round_trip_through_dict_and_file(make_patch, tmp_path):
    patch = make_patch(tokens=[0, 3, 5], parent="water-shortcut@0.9.0", d_sae=None)
    assert Patch.from_dict(patch.to_dict()) == patch
    path = save_patch(patch, tmp_path / "p.json")
    assert load_patch(path) == patch
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_patch_error_is_a_steerpatch_error_with_exit_code_2():
    assert issubclass(PatchError, SteerpatchError)
    assert PatchError("x").exit_code == 2


def test_patch_is_immutable_and_with_changes_rehashes(make_patch):
    patch = make_patch()
    with pytest.raises(ValidationError, match="frozen"):
        patch.name = "other"  # type: ignore[misc]
    changed = patch.with_changes(rationale="a better reason")
    assert changed.rationale == "a better reason"
    assert changed.content_hash != patch.content_hash
    assert changed.content_hash == changed.compute_hash()


def test_create_fills_defaults():
    fields = make_fields()
    del fields["created_at"], fields["parent"]
    patch = Patch.create(**fields)
    assert patch.format_version == FORMAT_VERSION
    assert patch.parent is None
    assert patch.created_at.endswith("Z")


@pytest.mark.parametrize("name", ["a", "water-shortcut", "v1.2_x", "0abc"])
def test_good_names(make_patch, name):
    assert make_patch(name=name).name == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("../evil", "path separator"),
        ("a/b", "path separator"),
        ("a\\b", "path separator"),
        ("tab\there", "control characters"),
        ("nul\x00", "control characters"),
        ("Upper", "not a slug"),
        ("", "not a slug"),
        ("-lead", "not a slug"),
        ("x" * 200, "not a slug"),
        ("spa ce", "not a slug"),
    ],
)
def test_bad_names(make_patch, name, fragment):
    with pytest.raises(PatchError, match=fragment):
        make_patch(name=name)


@pytest.mark.parametrize("version", ["0.0.1", "1.2.3", "10.20.30", "1.0.0-rc.1", "1.0.0+build.5"])
def test_good_versions(make_patch, version):
    assert make_patch(version=version).version == version


@pytest.mark.parametrize("version", ["1", "1.0", "01.0.0", "1.0.0.0", "v1.0.0", "1.0.0-"])
def test_bad_versions(make_patch, version):
    with pytest.raises(PatchError, match="semantic version"):
        make_patch(version=version)


def test_every_registered_op_is_accepted(make_patch):
    edits = [{"latent": i, "op": op, "value": 1.5} for i, op in enumerate(OPS)]
    assert [e.op for e in make_patch(edits=edits).edits] == list(OPS)


def test_schema_lists_fields_and_ops():
    schema = patch_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) >= {
        "format_version",
        "name",
        "version",
        "edits",
        "content_hash",
        "model",
        "sae",
    }
    assert schema["$defs"]["Edit"]["properties"]["op"]["enum"] == list(OPS)
    assert schema["$defs"]["Edit"]["additionalProperties"] is False


def test_the_patch_format_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from steerpatch.patch import load_patch, compose, diff_patches\n"
        f"load_patch({str(GOLDEN)!r})\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
