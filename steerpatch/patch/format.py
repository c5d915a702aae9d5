"""The patch document: strict, versioned pydantic models and the canonical content hash.

A patch is small JSON that people read, diff and hand-edit, so every field is checked and unknown
keys are refused. `content_hash` is the SHA-256 of the canonical JSON of everything else (keys
sorted, no whitespace, UTF-8), so it is stable under key order and formatting and catches edits
made after saving. A `Patch` object is always consistent: its hash is checked when it is built.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from steerpatch.patch.ops import OPS

FORMAT_VERSION = 1
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


def _error(kind: str, message: str) -> PydanticCustomError:
    # Braces in user values must not be read as template fields.
    return PydanticCustomError(kind, message.replace("{", "{{").replace("}", "}}"))


def check_name(value: str) -> str:
    """Validate a patch name: a slug of lowercase letters, digits, '-', '_' and '.'."""
    if _CONTROL.search(value):
        raise _error(
            "patch_name", f"name {_clip(value)} contains control characters; use a slug like 'water-shortcut'"
        )
    if "/" in value or "\\" in value:
        raise _error(
            "patch_name", f"name {_clip(value)} contains a path separator; use a slug like 'water-shortcut'"
        )
    if not value or len(value) > MAX_NAME_LENGTH or not _SLUG.fullmatch(value):
        raise _error(
            "patch_name",
            f"name {_clip(value)} is not a slug; use 1-{MAX_NAME_LENGTH} lowercase letters and digits, words joined "
            "by single '-', '_' or '.' (no '..', no leading or trailing separator), such as 'water-shortcut'",
        )
    return value


def check_version(value: str) -> str:
    """Validate a semantic version such as '1.2.0'."""
    if not _SEMVER.fullmatch(value):
        raise _error(
            "patch_version",
            f"version {_clip(value)} is not a semantic version; use MAJOR.MINOR.PATCH such as '1.0.0'",
        )
    return value


def check_ref(value: str) -> str:
    """Validate a patch reference 'name@version'."""
    from steerpatch.refs import split_ref  # the one NAME@SELECTOR parser

    parts = split_ref(value)
    if parts is None:
        raise _error(
            "patch_ref",
            f"{_clip(value)} is not a patch reference; use 'name@version' such as 'water-shortcut@1.0.0'",
        )
    name, version = parts
    check_name(name)
    check_version(version)
    return value


def check_sha256(value: str) -> str:
    """Validate a lowercase SHA-256 hex digest."""
    if not _SHA256.fullmatch(value):
        raise _error("sha256", f"{_clip(value)} is not a SHA-256 hex digest; use 64 lowercase hex characters")
    return value


def check_timestamp(value: str) -> str:
    """Validate an ISO 8601 UTC timestamp such as '2024-05-01T12:00:00Z'."""
    try:
        offset = datetime.fromisoformat(value).utcoffset()
    except ValueError:
        offset = None
    if offset is None or offset.total_seconds() != 0:
        raise _error(
            "timestamp",
            f"{_clip(value)} is not an ISO 8601 UTC timestamp; use the form '2024-05-01T12:00:00Z'",
        )
    return value


def check_op(value: str) -> str:
    """Validate an operation name against the op registry."""
    if value not in OPS:
        raise _error("patch_op", f"unknown op {_clip(value)}; use one of: {', '.join(OPS)}")
    return value


def check_line(value: str) -> str:
    """Validate one line of text: no control characters (a newline would forge lines in listings)."""
    if _CONTROL.search(value):
        raise _error(
            "control_chars", f"{_clip(value)} contains a control character or line break; remove it"
        )
    if len(value) > MAX_TEXT_LENGTH:
        raise _error("text_length", f"is {len(value)} characters long; keep it under {MAX_TEXT_LENGTH}")
    return value


def check_text(value: str) -> str:
    """Validate free text (rationale, note): line breaks and tabs allowed, other control characters not."""
    if _CONTROL_BUT_LINES.search(value):
        raise _error("control_chars", f"{_clip(value)} contains a control character; remove it")
    return value


def _clip(value: str) -> str:
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

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)


class Edit(BaseModel):
    """One change to one SAE latent."""

    model_config = _STRICT

    latent: LatentIndex = Field(description="SAE latent index, 0 <= latent < d_sae")
    op: OpName = Field(description="operation: " + "; ".join(f"{o.name}: {o.summary}" for o in OPS.values()))
    value: float = Field(description="the op's parameter: a finite number within the op's range")

    @model_validator(mode="after")
    def _value_in_domain(self) -> Edit:
        problem = OPS[self.op].check_value(self.value)
        if problem:
            raise _error("edit_value", f"value {problem}")
        return self


class ModelRef(BaseModel):
    """The base model the patch was made for."""

    model_config = _STRICT

    id: Line = Field(min_length=1, description="how the model was loaded, e.g. 'concept-clip' or 'ViT-B-32'")
    fingerprint: Sha256 = Field(description="SHA-256 of the model weights")


class SAERef(BaseModel):
    """The SAE whose latents the edits name."""

    model_config = _STRICT

    location: Line = Field(description="path or reference the SAE was loaded from")
    fingerprint: Sha256 = Field(description="SHA-256 of the SAE tensors and config")
    architecture: str = Field(
        min_length=1,
        pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$",
        description="SAE architecture: a registered one, e.g. 'standard', 'topk', 'jumprelu'",
    )


class HookRef(BaseModel):
    """Where the patch acts: the residual output of one vision transformer block."""

    model_config = _STRICT

    block: int = Field(ge=0, description="index into model.visual.transformer.resblocks")


class Instance(BaseModel):
    """One source example that motivated the patch."""

    model_config = _STRICT

    id: Line | None = Field(default=None, description="dataset item id (path relative to the dataset root)")
    image_sha256: Sha256 | None = Field(default=None, description="SHA-256 of the image file")
    label: Line | None = None
    predicted: Line | None = None
    scores: dict[str, float] = Field(default_factory=dict, description="attribution score per latent index")

    @field_validator("scores")
    @classmethod
    def _latent_keys(cls, scores: dict[str, float]) -> dict[str, float]:
        bad = [k for k in scores if not (k.isascii() and k.isdecimal() and int(k) < MAX_D_SAE)]
        if bad:
            raise _error(
                "score_key", f"score keys must be latent indices such as '123'; found {_clip(bad[0])}"
            )
        return scores

    @model_validator(mode="after")
    def _identified(self) -> Instance:
        if self.id is None and self.image_sha256 is None:
            raise _error("instance_id", "an instance needs 'id' or 'image_sha256'; add one of them")
        return self


class Provenance(BaseModel):
    """Where the patch came from."""

    model_config = _STRICT

    instances: list[Instance] = Field(default_factory=list)
    note: Text = ""
    composed_from: list[Ref] = Field(
        default_factory=list, description="refs of patches this one was composed from"
    )


Tokens = Literal["cls", "patches", "all"] | Annotated[
    list[Annotated[int, Field(ge=0, lt=MAX_TOKENS)]], Field(max_length=MAX_TOKENS)
]


class Patch(BaseModel):
    """A steering patch: edits to SAE latents at one block, bound to one model and one SAE.

    Build one with `Patch.create(...)` (computes the hash) or `steerpatch.patch.new_patch`; read one
    with `load_patch`. A Patch is immutable; `with_changes` returns a re-hashed copy.
    """

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        allow_inf_nan=False,
        frozen=True,
        title="steerpatch patch",
    )

    format_version: Literal[1] = Field(description="document format; this steerpatch writes 1")
    name: Name
    version: Version
    rationale: Text = Field(description="why this patch exists, for reviewers")
    author: Line
    created_at: Timestamp
    parent: Ref | None = Field(description="'name@version' this patch was bumped from, or null")
    model: ModelRef
    sae: SAERef
    hook: HookRef
    tokens: Tokens = Field(description="'cls' (token 0), 'patches' (tokens 1..), 'all', or token indices")
    d_sae: int | None = Field(
        default=None, ge=1, le=MAX_D_SAE, description="the SAE's latent count, to check edits offline"
    )
    edits: list[Edit]
    provenance: Provenance = Field(default_factory=Provenance)
    content_hash: Sha256 = Field(description="SHA-256 of the canonical JSON of all other fields")

    @field_validator("tokens")
    @classmethod
    def _unique_tokens(cls, tokens: Any) -> Any:
        if isinstance(tokens, list):
            if not tokens:
                raise _error("tokens", "an explicit token list is empty; list token indices or use 'all'")
            if len(set(tokens)) != len(tokens):
                raise _error("tokens", "token indices repeat; list each index once")
        return tokens

    @field_validator("edits")
    @classmethod
    def _distinct_latents(cls, edits: list[Edit], info: ValidationInfo) -> list[Edit]:
        seen: dict[int, int] = {}
        for i, edit in enumerate(edits):
            if edit.latent in seen:
                raise _error(
                    "duplicate_latent",
                    f"edits[{i}].latent: latent {edit.latent} is already edited by edits[{seen[edit.latent]}]; "
                    "keep one edit per latent",
                )
            seen[edit.latent] = i
        d_sae = info.data.get("d_sae")
        if d_sae is not None:
            for i, edit in enumerate(edits):
                if edit.latent >= d_sae:
                    raise _error(
                        "latent_range",
                        f"edits[{i}].latent: {edit.latent} is out of range for an SAE with d_sae={d_sae}; "
                        f"use an index in 0..{d_sae - 1}",
                    )
        return edits

    @model_validator(mode="after")
    def _check_hash(self, info: ValidationInfo) -> Patch:
        expected = self.compute_hash()
        if info.context and info.context.get("rehash"):
            object.__setattr__(self, "content_hash", expected)
        elif self.content_hash != expected:
            raise _error(
                "hash_mismatch",
                f"content_hash: {self.content_hash} does not match the content ({expected}): the document was "
                "changed after it was saved; if the change is intended run `steerpatch patch check --rehash FILE`",
            )
        return self

    # ---- identity and hashing -------------------------------------------------------------------

    @property
    def ref(self) -> str:
        """'name@version'."""
        return f"{self.name}@{self.version}"

    def body(self) -> dict[str, Any]:
        """All fields except `content_hash`, as JSON-ready values."""
        data = self.model_dump(mode="json")
        data.pop("content_hash")
        return data

    def compute_hash(self) -> str:
        """SHA-256 hex of the canonical JSON of `body()`."""
        return hashlib.sha256(canonical_json(self.body())).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The document as JSON-ready values, hash included."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Patch:
        """Validate a document (its hash must match). Raises PatchError listing every problem."""
        from steerpatch.patch.document import validate_document

        return validate_document(data)

    @classmethod
    def create(cls, **fields: Any) -> Patch:
        """Build a patch from fields (without `content_hash`) and compute its hash.

        `format_version` defaults to the current one, `created_at` to now, `parent` to None.

        Raises:
            PatchError: listing every invalid field.
        """
        from steerpatch.patch.document import validate_document

        fields = {"format_version": FORMAT_VERSION, "created_at": utc_now(), "parent": None, **fields}
        fields["content_hash"] = "0" * 64
        return validate_document(fields, rehash=True)

    def with_changes(self, **changes: Any) -> Patch:
        """A re-hashed copy with some fields replaced (nested models may be given as dicts)."""
        fields = self.body()
        for key, value in changes.items():
            fields[key] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        fields["edits"] = [
            e.model_dump(mode="json") if isinstance(e, BaseModel) else e for e in fields["edits"]
        ]
        return Patch.create(**fields)


def canonical_json(data: Any) -> bytes:
    """Canonical UTF-8 JSON: keys sorted, no whitespace, non-ASCII kept, NaN refused."""
    return json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def patch_json_schema() -> dict[str, Any]:
    """The JSON Schema of the patch format (draft 2020-12, as pydantic writes it)."""
    schema = Patch.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
