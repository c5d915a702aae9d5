"""Fixtures for the patch tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.patch_docs import make_fields


@pytest.fixture()
def make_patch():
    """Build a valid Patch, with any field replaced."""
    from steerpatch.patch import Patch

    def build(**overrides: Any):
        return Patch.create(**make_fields(**overrides))

    return build


@pytest.fixture()
def valid_doc(make_patch) -> dict[str, Any]:
    """The JSON document (hash included) of a valid patch."""
    return make_patch().to_dict()
