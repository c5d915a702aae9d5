"""Small builders shared by the steering tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from steerpatch.patch import Patch, new_patch

FAKE_MODEL = SimpleNamespace(name="tensor-only", fingerprint="ab" * 32)


def make_patch(
    sae: Any, edits: list[Any], *, tokens: Any = "all", model: Any = FAKE_MODEL, name: str = "p"
) -> Patch:
    """A patch bound to `sae` (and by default to a stand-in model for tensor-level tests)."""
    return new_patch(name, model, sae, edits, rationale="test", author="tests", tokens=tokens)
