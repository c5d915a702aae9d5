"""What a compiled graph says about itself, stored in the ONNX file's `metadata_props`.

The whole record is one JSON document under the key `steerpatch`; the fields people look for with
generic ONNX tools (patch hash, model fingerprint, classes, mode, parity) are also copied as flat keys.
The server reads the record to preprocess images and to answer `/metadata`.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

METADATA_KEY = "steerpatch"
FLAT_KEYS = ("patch_hash", "patch_ref", "model_fingerprint", "sae_fingerprint", "mode", "head")


class Preprocessing(BaseModel):
    """How an image becomes the graph's `pixels` input (open_clip's eval transform)."""

    model_config = ConfigDict(extra="forbid")

    image_size: int = Field(ge=1)
    mean: list[float]
    std: list[float]
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    resize_mode: Literal["shortest", "squash"] = "shortest"


class PatchEntry(BaseModel):
    """One patch of a multi-patch graph: rows with `patch_index == index` are steered by it."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=1)
    patch_name: str
    patch_version: str
    patch_ref: str
    patch_hash: str
    registry_ref: str | None = None
    sae_fingerprint: str
    sae_architecture: str
    tokens: str | list[int]
    n_edits: int
    mode: Literal["sparse", "exact"]
    parity_max_abs_diff: float


class GraphInfo(BaseModel):
    """The provenance and contract of one compiled graph.

    Attributes:
        patch_ref: "name@version" of the compiled patch, or None for an unsteered graph.
        registry_ref: "NAME@VERSION" of the registered patch it was compiled from, when known.
        mode: "sparse" (edited latents only), "exact" (full SAE encoder) or "none" (no steering).
        parity_max_abs_diff: measured max |ORT - torch| over every output and sample.
    """

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = 1
    patch_name: str | None
    patch_version: str | None
    patch_ref: str | None
    patch_hash: str | None
    registry_ref: str | None = None
    model_id: str
    model_fingerprint: str
    sae_fingerprint: str | None
    sae_architecture: str | None
    block: int | None
    tokens: str | list[int] | None
    n_edits: int
    head: Literal["zero-shot", "embedding"]
    classes: list[str]
    outputs: list[str]
    mode: Literal["sparse", "exact", "none"]
    mode_reason: str
    extra_weights: int = Field(ge=0, description="scalars the steering adds to the graph")
    parity_max_abs_diff: float
    parity_per_output: dict[str, float]
    parity_tolerance: float
    parity_samples: int
    parity_inputs: str
    opset: int
    preprocessing: Preprocessing
    steerpatch_version: str
    # multi-patch graphs only: the patches in `patch_index` order (index 0 is the unpatched model)
    patches: list[PatchEntry] | None = None
    # `--optimize`: the transformer optimiser's fusions (None: not optimised, or not kept)
    fusions: dict[str, int] | None = None
    # `--int8`: top-1 agreement of the int8 graph with the fp32 one on the gate's inputs (None: fp32)
    int8_top1_agreement: float | None = None

    @property
    def patch_count(self) -> int:
        """Patches selectable by `patch_index` (0 for a single-patch graph, which has no such input)."""
        return len(self.patches or [])

    def patch_hash_at(self, index: int) -> str | None:
        """The hash of the patch that steers rows with `patch_index == index` (None: unpatched)."""
        if not self.patches:
            return self.patch_hash
        return None if index == 0 else self.patches[index - 1].patch_hash

    def to_props(self) -> dict[str, str]:
        """The ONNX `metadata_props` entries for this record."""
        props = {METADATA_KEY: self.model_dump_json()}
        for key in FLAT_KEYS:
            value = getattr(self, key)
            props[key] = "" if value is None else str(value)
        props["classes"] = json.dumps(self.classes)
        props["parity_max_abs_diff"] = repr(self.parity_max_abs_diff)
        if self.patches:
            props["patch_hashes"] = json.dumps([entry.patch_hash for entry in self.patches])
        return props

    @classmethod
    def from_props(cls, props: dict[str, str]) -> GraphInfo:
        """Read the record back from a graph's metadata.

        Raises:
            KeyError: when the graph was not written by steerpatch compile.
        """
        return cls.model_validate_json(props[METADATA_KEY])
