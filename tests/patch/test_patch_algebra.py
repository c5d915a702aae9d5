"""compose, diff and bump."""

from __future__ import annotations

import pytest

from steerpatch.errors import PatchError
from steerpatch.patch import Edit, bump, compose, diff_patches
from steerpatch.patch.algebra import merge_edits, next_version


def _edits(*specs: tuple[int, str, float]) -> list[dict]:
    return [{"latent": latent, "op": op, "value": value} for latent, op, value in specs]


def test_compose_stacks_disjoint_edits(make_patch):
    a = make_patch(name="a", edits=_edits((1, "scale", 0.0)))
    b = make_patch(name="b", version="2.0.0", edits=_edits((2, "clamp", 1.0), (3, "add", 0.5)))
    both = compose([a, b], name="ab")
    assert [(e.latent, e.op) for e in both.edits] == [(1, "scale"), (2, "clamp"), (3, "add")]
    assert both.provenance.composed_from == ["a@1.0.0", "b@2.0.0"]
    assert both.parent is None and both.version == "1.0.0"
    assert both.model == a.model and both.sae == a.sae and both.hook == a.hook
    assert len(both.provenance.instances) == 2
    assert both.rationale.startswith("a@1.0.0: ")


def test_compose_conflict_names_both_patches(make_patch):
    a = make_patch(name="a", edits=_edits((7, "scale", 0.0)))
    b = make_patch(name="b", edits=_edits((7, "clamp", 2.0), (8, "scale", 2.0)))
    with pytest.raises(PatchError) as info:
        compose([a, b], name="ab")
    message = str(info.value)
    assert "latent 7: a@1.0.0 sets scale 0 and b@1.0.0 sets clamp 2" in message
    assert "resolve='first' or 'last'" in message


@pytest.mark.parametrize(("resolve", "expected"), [("first", ("scale", 0.0)), ("last", ("clamp", 2.0))])
def test_compose_with_an_explicit_resolution(make_patch, resolve, expected):
    a = make_patch(name="a", edits=_edits((7, "scale", 0.0)))
    b = make_patch(name="b", edits=_edits((7, "clamp", 2.0), (8, "scale", 2.0)))
    both = compose([a, b], name="ab", resolve=resolve)
    by_latent = {e.latent: (e.op, e.value) for e in both.edits}
    assert by_latent == {7: expected, 8: ("scale", 2.0)}


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("hook", {"block": 3}, "hook.block 3"),
        ("tokens", "cls", "tokens 'cls'"),
        ("model", {"id": "concept-clip", "fingerprint": "9" * 64}, "model.fingerprint"),
        ("sae", {"location": "x", "fingerprint": "8" * 64, "architecture": "topk"}, "sae.fingerprint"),
    ],
)
def test_compose_refuses_different_bindings(make_patch, field, value, fragment):
    a = make_patch(name="a", edits=_edits((1, "scale", 0.0)))
    b = make_patch(name="b", edits=_edits((2, "scale", 0.0)), **{field: value})
    with pytest.raises(PatchError, match="cannot compose") as info:
        compose([a, b], name="ab")
    assert fragment in str(info.value) and "b@1.0.0" in str(info.value)


def test_compose_needs_a_patch():
    with pytest.raises(PatchError, match="at least one"):
        compose([], name="x")


def test_diff_of_identical_patches(make_patch):
    a = make_patch()
    result = diff_patches(a, make_patch())
    assert result.identical
    assert result.to_text() == "water-shortcut@1.0.0 and water-shortcut@1.0.0 are identical"
    assert result.to_dict()["identical"] is True


def test_diff_reports_edits_and_metadata(make_patch):
    a = make_patch(edits=_edits((1, "scale", 0.0), (2, "clamp", 1.0), (3, "add", 0.5)))
    b = make_patch(
        version="1.1.0", rationale="sharper", tokens="cls",
        edits=_edits((1, "scale", 0.25), (3, "add", 0.5), (4, "clamp_if_active", 0.0)),
    )  # fmt: skip
    result = diff_patches(a, b)
    data = result.to_dict()
    assert set(data["metadata"]) == {"version", "rationale", "tokens"}
    assert data["metadata"]["tokens"] == {"a": "all", "b": "cls"}
    assert [e["latent"] for e in data["edits"]["added"]] == [4]
    assert [e["latent"] for e in data["edits"]["removed"]] == [2]
    assert data["edits"]["changed"] == [
        {
            "latent": 1,
            "a": {"latent": 1, "op": "scale", "value": 0.0},
            "b": {"latent": 1, "op": "scale", "value": 0.25},
        }
    ]
    text = result.to_text()
    for line in ("~ version: \"1.0.0\" -> \"1.1.0\"", "- edit latent 2: clamp 1", "+ edit latent 4: clamp_if_active 0",
                 "~ edit latent 1: scale 0 -> scale 0.25"):  # fmt: skip
        assert line in text.splitlines()


def test_bump_links_the_parent_and_rehashes(make_patch):
    old = make_patch()
    new = bump(old, created_at="2024-06-01T00:00:00Z")
    assert (new.version, new.parent) == ("1.0.1", "water-shortcut@1.0.0")
    assert new.edits == old.edits and new.content_hash == new.compute_hash() != old.content_hash
    assert bump(old, "minor").version == "1.1.0"
    assert bump(old, "major").version == "2.0.0"
    assert bump(old, version="3.0.0-rc.1").version == "3.0.0-rc.1"
    changed = bump(old, edits=[Edit(latent=5, op="scale", value=0.0)], rationale="new reason", author="bo")
    assert (
        [e.latent for e in changed.edits] == [5]
        and changed.rationale == "new reason"
        and changed.author == "bo"
    )


def test_bump_refuses_the_same_version_and_bad_edits(make_patch):
    old = make_patch()
    with pytest.raises(PatchError, match="is the current version"):
        bump(old, version="1.0.0")
    with pytest.raises(PatchError, match="out of range for an SAE with d_sae=512"):
        bump(old, edits=[Edit(latent=600, op="scale", value=0.0)])


@pytest.mark.parametrize(
    ("version", "part", "expected"),
    [
        ("0.1.9", "patch", "0.1.10"),
        ("1.2.3-rc.1", "patch", "1.2.4"),
        ("1.2.3+b", "minor", "1.3.0"),
        ("9.9.9", "major", "10.0.0"),
    ],
)
def test_next_version(version, part, expected):
    assert next_version(version, part) == expected


def test_merge_edits():
    base = [Edit(latent=1, op="scale", value=0.0), Edit(latent=2, op="clamp", value=1.0)]
    merged = merge_edits(
        base, [Edit(latent=2, op="scale", value=3.0), Edit(latent=9, op="add", value=1.0)], remove=[1]
    )
    assert [(e.latent, e.op) for e in merged] == [(2, "scale"), (9, "add")]
    with pytest.raises(PatchError, match=r"latent\(s\) \[4\] are not edited"):
        merge_edits(base, remove=[4])
