"""Steering patches: the strict JSON format, its operations, and the patch algebra.

This package never imports torch; the engine that applies patches lives in `steerpatch.steer`.
"""

from steerpatch.patch.algebra import PatchDiff, bump, compose, diff_patches
from steerpatch.patch.create import new_patch, parse_edit
from steerpatch.patch.document import (
    MAX_PATCH_BYTES,
    dumps_patch,
    load_patch,
    patch_from_json,
    rehash_file,
    save_patch,
    validate_document,
)
from steerpatch.patch.format import (
    FORMAT_VERSION,
    Edit,
    HookRef,
    Instance,
    ModelRef,
    Patch,
    Provenance,
    SAERef,
    canonical_json,
    patch_json_schema,
)
from steerpatch.patch.ops import OPS, Op, get_op, register_op
from steerpatch.tokens import parse_tokens

__all__ = [
    "FORMAT_VERSION",
    "MAX_PATCH_BYTES",
    "OPS",
    "Edit",
    "HookRef",
    "Instance",
    "ModelRef",
    "Op",
    "Patch",
    "PatchDiff",
    "Provenance",
    "SAERef",
    "bump",
    "canonical_json",
    "compose",
    "diff_patches",
    "dumps_patch",
    "get_op",
    "load_patch",
    "new_patch",
    "parse_edit",
    "parse_tokens",
    "patch_from_json",
    "patch_json_schema",
    "rehash_file",
    "register_op",
    "save_patch",
    "validate_document",
]
