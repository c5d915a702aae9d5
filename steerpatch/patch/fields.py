"""The patch format's field types: the checks behind names, versions, refs, digests, timestamps and text.

Each check raises a `PydanticCustomError` whose message names the value and the fix; the
`Annotated` types below attach them to the models in `format.py`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from steerpatch.patch.ops import OPS

MAX_NAME_LENGTH = 128
# far beyond any published SAE (34M latents) and any ViT's sequence, yet small enough that every
# index fits int32 and no number in a patch needs more than 10 digits
MAX_D_SAE = 1 << 27
MAX_TOKENS = 1 << 16
MAX_TEXT_LENGTH = 4096
# words of letters and digits joined by single '.', '_' or '-': no '..', no trailing '.', so the name
# is the same file name on every file system and MLflow accepts '<model>.<name>' as a registered model
_SLUG = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*")
# semver.org 2.0.0, without leading zeros in numeric identifiers
_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")
# free text (rationale, note) may span lines; nothing else may
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]")


def field_error(kind: str, message: str) -> PydanticCustomError:
    """A pydantic error of type `kind` whose message is shown as written."""
    # Braces in user values must not be read as template fields.
    return PydanticCustomError(kind, message.replace("{", "{{").replace("}", "}}"))


def check_name(value: str) -> str:
    """Validate a patch name: a slug of lowercase letters, digits, '-', '_' and '.'."""
    if _CONTROL.search(value):
        raise field_error(
            "patch_name", f"name {clip_value(value)} contains control characters; use a slug like 'water-shortcut'"
        )
    if "/" in value or "\\" in value:
        raise field_error(
            "patch_name", f"name {clip_value(value)} contains a path separator; use a slug like 'water-shortcut'"
        )
    if not value or len(value) > MAX_NAME_LENGTH or not _SLUG.fullmatch(value):
        raise field_error(
            "patch_name",
            f"name {clip_value(value)} is not a slug; use 1-{MAX_NAME_LENGTH} lowercase letters and digits, words joined "
            "by single '-', '_' or '.' (no '..', no leading or trailing separator), such as 'water-shortcut'",
        )
    return value


def check_version(value: str) -> str:
    """Validate a semantic version such as '1.2.0'."""
    if not _SEMVER.fullmatch(value):
        raise field_error(
            "patch_version",
            f"version {clip_value(value)} is not a semantic version; use MAJOR.MINOR.PATCH such as '1.0.0'",
        )
    return value


def check_ref(value: str) -> str:
    """Validate a patch reference 'name@version'."""
    from steerpatch.refs import split_ref  # the one NAME@SELECTOR parser

    parts = split_ref(value)
    if parts is None:
        raise field_error(
            "patch_ref",
            f"{clip_value(value)} is not a patch reference; use 'name@version' such as 'water-shortcut@1.0.0'",
        )
    name, version = parts
    check_name(name)
    check_version(version)
    return value


def check_sha256(value: str) -> str:
    """Validate a lowercase SHA-256 hex digest."""
    if not _SHA256.fullmatch(value):
        raise field_error("sha256", f"{clip_value(value)} is not a SHA-256 hex digest; use 64 lowercase hex characters")
    return value


def check_timestamp(value: str) -> str:
    """Validate an ISO 8601 UTC timestamp such as '2024-05-01T12:00:00Z'."""
    try:
        offset = datetime.fromisoformat(value).utcoffset()
    except ValueError:
        offset = None
    if offset is None or offset.total_seconds() != 0:
        raise field_error(
            "timestamp",
            f"{clip_value(value)} is not an ISO 8601 UTC timestamp; use the form '2024-05-01T12:00:00Z'",
        )
    return value


def check_op(value: str) -> str:
    """Validate an operation name against the op registry."""
    if value not in OPS:
        raise field_error("patch_op", f"unknown op {clip_value(value)}; use one of: {', '.join(OPS)}")
    return value


def check_line(value: str) -> str:
    """Validate one line of text: no control characters (a newline would forge lines in listings)."""
    if _CONTROL.search(value):
        raise field_error(
            "control_chars", f"{clip_value(value)} contains a control character or line break; remove it"
        )
    if len(value) > MAX_TEXT_LENGTH:
        raise field_error("text_length", f"is {len(value)} characters long; keep it under {MAX_TEXT_LENGTH}")
    return value


def check_text(value: str) -> str:
    """Validate free text (rationale, note): line breaks and tabs allowed, other control characters not."""
    if _CONTROL_BUT_LINES.search(value):
        raise field_error("control_chars", f"{clip_value(value)} contains a control character; remove it")
    return value


def clip_value(value: str) -> str:
    """`repr(value)`, cut to 60 characters for messages."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def utc_now() -> str:
    """The current time as an ISO 8601 UTC timestamp with second precision."""
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


Name = Annotated[str, AfterValidator(check_name)]
Version = Annotated[str, AfterValidator(check_version)]
Ref = Annotated[str, AfterValidator(check_ref)]
Sha256 = Annotated[str, AfterValidator(check_sha256)]
Timestamp = Annotated[str, AfterValidator(check_timestamp)]
OpName = Annotated[str, AfterValidator(check_op), Field(json_schema_extra={"enum": list(OPS)})]
Line = Annotated[str, AfterValidator(check_line)]
Text = Annotated[str, AfterValidator(check_text)]
LatentIndex = Annotated[int, Field(ge=0, lt=MAX_D_SAE)]
