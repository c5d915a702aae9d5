"""Hand-edited patch files that are wrong in one way each: exit 2, one clean message naming the field.

The table holds well over 100 documents; a property test then throws random values at every field.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steerpatch.cli.main import cli
from steerpatch.errors import PatchError
from steerpatch.patch import MAX_PATCH_BYTES, patch_from_json
from tests.helpers.patch_docs import GOLDEN

VALID = json.loads(GOLDEN.read_text())


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, last = _parse(path)
        target = doc
        for key in parents:
            target = target[key]
        target[last] = value

    return mutate


def _drop(path: str) -> Callable[[dict], None]:
    def mutate(doc: dict) -> None:
        *parents, last = _parse(path)
        target = doc
        for key in parents:
            target = target[key]
        del target[last]

    return mutate


def _parse(path: str) -> list[Any]:
    keys: list[Any] = []
    for part in path.replace("[", ".[").split("."):
        if part:
            keys.append(int(part[1:-1]) if part.startswith("[") else part)
    return keys


def _doc(*mutations: Callable[[dict], None]) -> str:
    doc = copy.deepcopy(VALID)
    for mutate in mutations:
        mutate(doc)
    return json.dumps(doc, indent=2)


GOOD = json.dumps(VALID, indent=2)

# (case id, document text, fragment the message must contain)
CASES: list[tuple[str, str, str]] = [
    # malformed JSON
    ("empty file", "", "line 1, column 1"),
    ("open brace", "{", "line 1, column 2"),
    ("missing value", '{"name": }', "line 1, column 10"),
    ("trailing comma", GOOD[:-2] + ",\n}", "line "),
    ("single quotes", "{'name': 'x'}", "line 1, column 2"),
    ("comment", "// note\n" + GOOD, "line 1, column 1"),
    ("bare word", "patch", "line 1, column 1"),
    ("two documents", GOOD + GOOD, "Extra data"),
    ("utf8 bom", "\ufeff" + GOOD, "line 1, column 1"),
    (
        "NaN literal",
        GOOD.replace('"value": 0.5', '"value": NaN'),
        "edits[1].value: NaN or infinity is not allowed",
    ),
    (
        "Infinity literal",
        GOOD.replace('"value": 0.5', '"value": Infinity'),
        "edits[1].value: NaN or infinity",
    ),
    (
        "-Infinity literal",
        GOOD.replace('"value": 0.5', '"value": -Infinity'),
        "edits[1].value: NaN or infinity",
    ),
    (
        "overflowing literal",
        GOOD.replace('"value": 0.5', '"value": 1e400'),
        "edits[1].value: NaN or infinity",
    ),
    (
        "NaN score",
        GOOD.replace('"17": 0.91', '"17": NaN'),
        "provenance.instances[0].scores.17: NaN or infinity",
    ),
    ("NaN name", GOOD.replace('"name": "water-shortcut"', '"name": NaN'), "name: expected a string, got NaN"),
    (
        "repeated key",
        GOOD.replace('"author": "ana",', '"author": "ana",\n  "author": "bob",'),
        "'author' appears twice",
    ),
    (
        "repeated edit key",
        GOOD.replace('"latent": 17,', '"latent": 17, "latent": 18,'),
        "'latent' appears twice",
    ),
    ("top-level list", "[]", "expected a JSON object, got list"),
    ("top-level number", "7", "expected a JSON object, got int"),
    ("top-level string", '"patch"', "expected a JSON object, got str"),
    ("top-level null", "null", "expected a JSON object, got NoneType"),
    ("top-level true", "true", "expected a JSON object, got bool"),
    ("empty object", "{}", "name: required key is missing"),
    ("deep nesting", "[" * 100000 + "]" * 100000, "nesting is too deep"),
]
CASES += [(f"truncated at {n}", GOOD[:n], "line ") for n in (1, 10, 50, 120, 300, 600, len(GOOD) - 3)]
# unknown keys
for path in ("extra", "Name", "edits[0].weight", "model.url", "sae.k", "hook.site", "provenance.author",
             "provenance.instances[0].image", "edits[1].strength"):  # fmt: skip
    CASES.append((f"unknown key {path}", _doc(_set(path, 1)), f"{path}: unknown key"))
# missing keys
for path in ("name", "version", "rationale", "author", "created_at", "parent", "model", "sae", "hook", "tokens",
             "edits", "content_hash", "model.id", "model.fingerprint", "sae.location", "sae.fingerprint",
             "sae.architecture", "hook.block", "edits[0].latent", "edits[0].op", "edits[1].value"):  # fmt: skip
    CASES.append((f"missing {path}", _doc(_drop(path)), f"{path}: required key is missing"))
# wrong types
WRONG_TYPES: list[tuple[str, Any, str]] = [
    ("name", 5, "expected a string"),
    ("version", 1.0, "expected a string"),
    ("rationale", None, "expected a string"),
    ("author", [], "expected a string"),
    ("created_at", 0, "expected a string"),
    ("parent", 5, "parent"),
    ("model", "concept-clip", "expected an object"),
    ("sae", [], "expected an object"),
    ("hook", 2, "expected an object"),
    ("hook.block", "2", "expected an integer"),
    ("hook.block", 2.0, "expected an integer"),
    ("hook.block", True, "expected an integer"),
    ("tokens", 5, "not a token scope"),
    ("tokens", {"cls": True}, "not a token scope"),
    ("tokens", ["0"], "tokens[0]: expected an integer"),
    ("edits", {}, "expected a list"),
    ("edits", "17:scale:0", "expected a list"),
    ("edits[0]", "17:scale:0", "expected an object"),
    ("edits[0].latent", 1.5, "expected an integer"),
    ("edits[0].latent", "17", "expected an integer"),
    ("edits[0].latent", True, "expected an integer"),
    ("edits[0].latent", None, "expected an integer"),
    ("edits[0].value", "0", "expected a number"),
    ("edits[0].value", None, "expected a number"),
    ("edits[0].value", [0], "expected a number"),
    ("edits[0].value", True, "expected a number"),
    ("edits[0].op", 1, "expected a string"),
    ("d_sae", "512", "expected an integer"),
    ("provenance", [], "expected an object"),
    ("provenance.instances", {}, "expected a list"),
    ("provenance.instances[0].scores", [0.9], "expected an object"),
    ("provenance.instances[0].scores", {"17": "high"}, "expected a number"),
    ("provenance.instances[0].label", 3, "expected a string"),
    ("provenance.note", 5, "expected a string"),
    ("content_hash", 5, "expected a string"),
    ("model.fingerprint", None, "expected a string"),
]
for path, value, fragment in WRONG_TYPES:
    CASES.append((f"type {path}={value!r}", _doc(_set(path, value)), f"{path.split('[')[0]}"))
    CASES[-1] = (CASES[-1][0], CASES[-1][1], fragment)
# values out of range or malformed
BAD_VALUES: list[tuple[str, Any, str]] = [
    ("edits[0].value", float("inf"), "edits[0].value: NaN or infinity"),
    ("edits[1].value", float("-inf"), "edits[1].value: NaN or infinity"),
    ("provenance.instances[0].scores", {"17": float("nan")}, "NaN or infinity"),
    ("edits[0].latent", -1, "edits[0].latent: -1 is too small"),
    ("edits[0].latent", 512, "edits[0].latent: 512 is out of range for an SAE with d_sae=512"),
    ("edits[1].latent", 10**12, "edits[1].latent: 1000000000000 is too large; use a value < 134217728"),
    ("edits[1].latent", 600, "edits[1].latent: 600 is out of range"),
    ("edits[1].latent", 17, "edits[1].latent: latent 17 is already edited by edits[0]"),
    ("hook.block", -1, "hook.block: -1 is too small"),
    ("d_sae", 0, "d_sae: 0 is too small"),
    ("d_sae", 10, "out of range for an SAE with d_sae=10"),
    ("tokens", [-1], "tokens[0]: -1 is too small"),
    ("tokens", [], "token list is empty"),
    ("tokens", [0, 3, 0], "token indices repeat"),
    ("tokens", "first", "not a token scope"),
    ("tokens", "CLS", "not a token scope"),
    ("edits[0].op", "sclae", "unknown op 'sclae'"),
    ("edits[0].op", "Scale", "unknown op 'Scale'"),
    ("edits[0].op", "", "unknown op ''"),
    ("edits[1].op", "multiply", "use one of: scale, clamp, clamp_if_active, add"),
    ("model.id", "", "model.id: must not be empty"),
    ("sae.architecture", "", "sae.architecture: must not be empty"),
    ("model.fingerprint", "abc", "model.fingerprint: 'abc' is not a SHA-256"),
    ("sae.fingerprint", "g" * 64, "sae.fingerprint:"),
    ("sae.fingerprint", "2E" * 32, "64 lowercase hex"),
    ("content_hash", "abc", "content_hash: 'abc' is not a SHA-256"),
    ("content_hash", VALID["content_hash"].upper(), "content_hash:"),
    ("content_hash", "0" * 64, "does not match the content"),
    ("provenance.instances[0].scores", {"latent17": 0.5}, "score keys must be latent indices"),
    ("provenance.instances[0].image_sha256", "xyz", "is not a SHA-256"),
    ("provenance.instances", [{"label": "star"}], "needs 'id' or 'image_sha256'"),
    ("provenance.composed_from", ["not a ref"], "is not a patch reference"),
    # names and refs
    ("name", "../evil", "name: name '../evil' contains a path separator"),
    ("name", "a/b", "path separator"),
    ("name", "a\\b", "path separator"),
    ("name", "line\nbreak", "control characters"),
    ("name", "bell\x07", "control characters"),
    ("name", "Water", "not a slug"),
    ("name", "", "not a slug"),
    ("name", ".hidden", "not a slug"),
    ("name", "x" * 129, "not a slug"),
    ("name", "with space", "not a slug"),
    ("parent", "water-shortcut", "is not a patch reference"),
    ("parent", "a/b@1.0.0", "path separator"),
    ("parent", "@1.0.0", "not a slug"),
    ("parent", "water@latest", "not a semantic version"),
    ("version", "1", "version: version '1' is not a semantic version"),
    ("version", "1.0", "not a semantic version"),
    ("version", "01.0.0", "not a semantic version"),
    ("version", "latest", "not a semantic version"),
    ("created_at", "yesterday", "created_at: 'yesterday' is not an ISO 8601 UTC timestamp"),
    ("created_at", "2024-05-01T12:00:00", "not an ISO 8601 UTC"),
    ("created_at", "2024-05-01T12:00:00+02:00", "not an ISO 8601 UTC"),
    ("created_at", "2024-13-01T00:00:00Z", "not an ISO 8601 UTC"),
    # unknown format versions
    ("format_version", 0, "format_version: 0 is not supported"),
    ("format_version", 2, "format_version: 2 is not supported"),
    ("format_version", "1", 'format_version: "1" is not supported'),
    ("format_version", None, "format_version: null is not supported"),
    ("format_version", 1.5, "format_version: 1.5 is not supported"),
    ("format_version", True, "format_version: true is not supported"),
    # tampering: valid fields, stale hash
    ("rationale", "looks harmless", "does not match the content"),
    ("author", "mallory", "does not match the content"),
    ("edits[1].value", 7.0, "does not match the content"),
    ("model.fingerprint", "3" * 64, "does not match the content"),
    ("tokens", "cls", "does not match the content"),
]
for path, value, fragment in BAD_VALUES:
    CASES.append((f"value {path}={value!r}"[:80], _doc(_set(path, value)), fragment))
CASES.append(("edits reordered", _doc(lambda d: d["edits"].reverse()), "does not match the content"))
CASES.append(
    (
        "several problems at once",
        _doc(_set("name", "A"), _set("edits[0].op", "x"), _set("extra", 1)),
        "3 problems",
    )
)

IDS = [case[0] for case in CASES]


def test_table_is_large_enough():
    assert len(CASES) >= 100
    assert len(set(IDS)) == len(IDS)


@pytest.mark.parametrize(("text", "fragment"), [(c[1], c[2]) for c in CASES], ids=IDS)
def test_check_refuses_with_one_clean_message(runner, tmp_path, text, fragment):
    path = tmp_path / "patch.json"
    path.write_text(text, encoding="utf-8")
    result = runner.invoke(cli, ["patch", "check", str(path)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)  # not a crash
    assert "Traceback" not in result.output
    assert result.stderr.startswith("Error: ") and result.stderr.count("Error:") == 1
    assert result.stdout == ""
    assert fragment in result.stderr, result.stderr


@pytest.mark.parametrize(("text", "fragment"), [(c[1], c[2]) for c in CASES[::7]], ids=IDS[::7])
def test_nothing_is_written_from_a_bad_file(runner, tmp_path, text, fragment):
    path = tmp_path / "patch.json"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "bumped.json"
    result = runner.invoke(cli, ["patch", "bump", str(path), "--out", str(out)])
    assert result.exit_code == 2
    assert fragment in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patch.json"]


def test_non_utf8_bytes(runner, tmp_path):
    path = tmp_path / "patch.json"
    path.write_bytes(GOOD.encode().replace(b'"ana"', b'"an\xff"'))
    result = runner.invoke(cli, ["patch", "check", str(path)])
    assert result.exit_code == 2
    assert "is not UTF-8 text" in result.stderr


def test_file_over_10_mb(runner, tmp_path):
    doc = copy.deepcopy(VALID)
    doc["provenance"]["note"] = "x" * MAX_PATCH_BYTES
    path = tmp_path / "big.json"
    path.write_text(json.dumps(doc))
    result = runner.invoke(cli, ["patch", "check", str(path)])
    assert result.exit_code == 2
    assert "over the 10 MB limit" in result.stderr


def test_missing_file(runner, tmp_path):
    result = runner.invoke(cli, ["patch", "check", str(tmp_path / "nope.json")])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_all_problems_come_out_together():
    text = _doc(
        _set("name", "Bad Name"),
        _set("edits[0].value", float("inf")),
        _set("hook.block", "2"),
        _drop("author"),
    )
    with pytest.raises(PatchError) as info:
        patch_from_json(text)
    assert len(info.value.problems) == 4
    paths = sorted(p.split(":")[0] for p in info.value.problems)
    assert paths == ["author", "edits[0].value", "hook.block", "name"]


def test_check_reports_every_file_and_fails_if_any_is_bad(runner, tmp_path):
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(GOOD)
    bad.write_text(_doc(_set("extra", 1)))
    result = runner.invoke(cli, ["patch", "check", str(good), str(bad)])
    assert result.exit_code == 2
    assert "good.json: valid (water-shortcut@1.0.0" in result.stdout
    assert "extra: unknown key" in result.stderr


# ---- property: whatever value lands in whatever field, the answer is a PatchError, never a crash ----

FIELD_PATHS = [
    "name", "version", "rationale", "author", "created_at", "parent", "model", "model.id", "model.fingerprint",
    "sae", "sae.location", "sae.fingerprint", "sae.architecture", "hook", "hook.block", "tokens", "d_sae",
    "edits", "edits[0]", "edits[0].latent", "edits[0].op", "edits[0].value", "provenance",
    "provenance.instances", "provenance.instances[0]", "provenance.instances[0].scores", "provenance.note",
    "content_hash", "format_version", "unexpected",
]  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(FIELD_PATHS), value=JSON_VALUES)
def test_random_values_in_any_field_are_refused_cleanly(path, value):
    text = _doc(_set(path, value))
    if json.loads(text) == VALID:
        return  # the value drawn was the one already there
    with pytest.raises(PatchError) as info:
        patch_from_json(text)
    message = str(info.value)
    assert message.splitlines()[0].startswith("patch is invalid")
    assert "Traceback" not in message


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len(GOOD) - 2), junk=st.text(max_size=3))
def test_random_corruption_of_the_text_is_refused_cleanly(cut, junk):
    text = GOOD[:cut] + junk + GOOD[cut + 1 :]
    try:
        patch = patch_from_json(text)
    except PatchError:
        return
    # whitespace-only or same-character substitutions may leave an equivalent document
    assert patch.content_hash == VALID["content_hash"]
