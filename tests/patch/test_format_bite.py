"""The patch format's small parts, exactly: canonical bytes, error kinds, references, timestamps, schema."""

from __future__ import annotations

import math
import re

import pytest
from pydantic import ValidationError

from steerpatch.patch.format import Provenance, SAERef, canonical_json, patch_json_schema, utc_now


def test_canonical_json_is_sorted_compact_utf8():
    assert canonical_json({"b": 1, "a": ["é", 2.5]}) == '{"a":["é",2.5],"b":1}'.encode()
    assert canonical_json({"r": "water — é"}) == b'{"r":"water \xe2\x80\x94 \xc3\xa9"}'


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_canonical_json_refuses_non_finite_numbers(bad):
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        canonical_json({"value": bad})


def _error(model, **fields) -> dict:
    with pytest.raises(ValidationError) as info:
        model(**fields)
    (error,) = info.value.errors()
    return error


def test_a_reference_without_at_is_a_patch_ref_error():
    error = _error(Provenance, composed_from=["water-shortcut"])
    assert error["type"] == "patch_ref"
    assert error["msg"] == "'water-shortcut' is not a patch reference; use 'name@version' such as 'water-shortcut@1.0.0'"


def test_a_reference_splits_at_its_last_at():
    # the name part 'a@b' is what is wrong, not the version '1.0.0'
    error = _error(Provenance, composed_from=["a@b@1.0.0"])
    assert error["type"] == "patch_name" and "name 'a@b'" in error["msg"]


def test_a_bad_digest_is_a_sha256_error():
    error = _error(SAERef, location="x", fingerprint="ABC", architecture="standard")
    assert error["type"] == "sha256"
    assert error["msg"] == "'ABC' is not a SHA-256 hex digest; use 64 lowercase hex characters"


def test_utc_now_has_second_precision_and_a_z():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", utc_now())


def test_the_schema_declares_its_draft():
    assert patch_json_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
