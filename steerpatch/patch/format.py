"""The patch document: strict, versioned pydantic models and the canonical content hash.

A patch is small JSON that people read, diff and hand-edit, so every field is checked and unknown
keys are refused. `content_hash` is the SHA-256 of the canonical JSON of everything else (keys
sorted, no whitespace, UTF-8), so it is stable under key order and formatting and catches edits
made after saving. A `Patch` object is always consistent: its hash is checked when it is built.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from steerpatch.errors import PatchError
from steerpatch.patch.fields import (
    MAX_D_SAE,
    MAX_NAME_LENGTH,
    MAX_TEXT_LENGTH,
    MAX_TOKENS,
    LatentIndex,
    Line,
    Name,
    OpName,
    Ref,
    Sha256,
    Text,
    Timestamp,
    Version,
    check_line,
    check_name,
    check_op,
    check_ref,
    check_sha256,
    check_text,
    check_timestamp,
    check_version,
    clip_value,
    field_error,
    utc_now,
)
from steerpatch.patch.ops import OPS
from steerpatch.patch.problems import problems, short_value

# the field checks are part of the format's public surface, importable from here as before
__all__ = [
    "FORMAT_VERSION", "MAX_D_SAE", "MAX_NAME_LENGTH", "MAX_TEXT_LENGTH", "MAX_TOKENS", "Edit", "HookRef", "Instance",
    "ModelRef", "Patch", "Provenance", "SAERef", "Tokens", "canonical_json", "check_line", "check_name", "check_op",
    "check_ref", "check_sha256", "check_text", "check_timestamp", "check_version", "patch_json_schema",
    "utc_now", "validate_document",
]

FORMAT_VERSION = 1
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
            raise field_error("edit_value", f"value {problem}")
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
            raise field_error(
                "score_key", f"score keys must be latent indices such as '123'; found {clip_value(bad[0])}"
            )
        return scores

    @model_validator(mode="after")
    def _identified(self) -> Instance:
        if self.id is None and self.image_sha256 is None:
            raise field_error("instance_id", "an instance needs 'id' or 'image_sha256'; add one of them")
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
                raise field_error("tokens", "an explicit token list is empty; list token indices or use 'all'")
            if len(set(tokens)) != len(tokens):
                raise field_error("tokens", "token indices repeat; list each index once")
        return tokens

    @field_validator("edits")
    @classmethod
    def _distinct_latents(cls, edits: list[Edit], info: ValidationInfo) -> list[Edit]:
        seen: dict[int, int] = {}
        for i, edit in enumerate(edits):
            if edit.latent in seen:
                raise field_error(
                    "duplicate_latent",
                    f"edits[{i}].latent: latent {edit.latent} is already edited by edits[{seen[edit.latent]}]; "
                    "keep one edit per latent",
                )
            seen[edit.latent] = i
        d_sae = info.data.get("d_sae")
        if d_sae is not None:
            for i, edit in enumerate(edits):
                if edit.latent >= d_sae:
                    raise field_error(
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
            raise field_error(
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
        return validate_document(data)

    @classmethod
    def create(cls, **fields: Any) -> Patch:
        """Build a patch from fields (without `content_hash`) and compute its hash.

        `format_version` defaults to the current one, `created_at` to now, `parent` to None.

        Raises:
            PatchError: listing every invalid field.
        """
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


def validate_document(data: Any, *, source: str = "patch", rehash: bool = False) -> Patch:
    """Turn a parsed JSON document into a Patch, or raise one PatchError listing every problem.

    Args:
        data: the parsed document.
        source: how to name the document in the message (a path, or "patch").
        rehash: compute `content_hash` instead of checking it (for building new patches).

    Returns:
        The validated Patch.

    Raises:
        PatchError: with one entry per problem, each naming its field and the fix.
    """
    if not isinstance(data, dict):
        raise PatchError(
            f"{source} is invalid", [f"(document): expected a JSON object, got {type(data).__name__}"]
        )
    version = data.get("format_version", FORMAT_VERSION)
    if version != FORMAT_VERSION or isinstance(version, bool):
        # Other versions may give fields other meanings: report only this.
        raise PatchError(
            f"{source} is invalid",
            [
                f"format_version: {short_value(version)} is not supported; this steerpatch reads format_version "
                f"{FORMAT_VERSION} (upgrade steerpatch, or set format_version to {FORMAT_VERSION} if the file is v1)"
            ],
        )
    try:
        return Patch.model_validate(data, context={"rehash": rehash})
    except ValidationError as error:
        found = problems(error)
    raise PatchError(f"{source} is invalid ({len(found)} problem{'s' if len(found) != 1 else ''})", found)


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
