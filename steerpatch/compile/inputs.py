"""What a compile starts from: the patch (file, object or registry ref), its SAE, model binding, head and data.

Shared by the single-patch compiler and the multi-patch graph builder, so neither imports the other.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerpatch.errors import CompileError
from steerpatch.refs import is_registry_ref

HEADS = ("zero-shot", "embedding")


@dataclass
class CompileResult:
    """What `compile_patch` produced.

    Attributes:
        path: the written graph, or None when `out` was not requested (in-memory only).
        info: the record stored in the graph's metadata (mode, parity, hashes, classes).
        data: the serialized graph.
        seconds: wall time of the whole compile.
        registered: name/version/uri of the registered compiled model, when registered.
    """

    path: Path | None
    info: Any
    data: bytes = field(repr=False)
    seconds: float
    registered: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        info = self.info
        return {
            "path": str(self.path) if self.path else None,
            "bytes": len(self.data),
            "seconds": round(self.seconds, 3),
            "mode": info.mode,
            "mode_reason": info.mode_reason,
            "extra_weights": info.extra_weights,
            "head": info.head,
            "outputs": info.outputs,
            "classes": info.classes,
            "parity": {
                "max_abs_diff": info.parity_max_abs_diff,
                "per_output": info.parity_per_output,
                "tolerance": info.parity_tolerance,
                "samples": info.parity_samples,
                "inputs": info.parity_inputs,
                "passed": info.parity_max_abs_diff <= info.parity_tolerance,
            },
            "patch_ref": info.patch_ref,
            "patch_hash": info.patch_hash,
            "registry_ref": info.registry_ref,
            "model_fingerprint": info.model_fingerprint,
            "opset": info.opset,
            "registered": self.registered,
            "fusions": info.fusions,
            "int8_top1_agreement": info.int8_top1_agreement,
            "patches": [entry.model_dump(mode="json") for entry in info.patches] if info.patches else None,
        }


@dataclass(frozen=True)
class ResolvedPatch:
    """A patch and what came with it: the registry folder's SAE and classes, when it was a ref."""

    patch: Any
    registry_ref: str | None = None
    sae_dir: Path | None = None
    classes: list[str] | None = None


def resolve_patch(source: Any, *, tracking_uri: str | None = None) -> ResolvedPatch:
    """A `Patch` object, a patch file, or a registry ref `NAME@ALIAS|NAME@VERSION`.

    Raises:
        PatchError: for an invalid file; RegistryError for an unknown ref.
    """
    from steerpatch.patch import Patch, load_patch

    if isinstance(source, Patch):
        return ResolvedPatch(source)
    text = str(source)
    if not is_registry_ref(text):
        return ResolvedPatch(load_patch(text))
    from steerpatch.registry.artifacts import resolve_patch_ref

    patch, local_dir = resolve_patch_ref(text, tracking_uri=tracking_uri)
    local_dir = Path(local_dir)
    classes = None
    classes_file = local_dir / "classes.json"
    if classes_file.is_file():
        classes = json.loads(classes_file.read_text())["classes"]
    sae_dir = local_dir / "sae" if (local_dir / "sae").is_dir() else None
    return ResolvedPatch(patch, registry_ref=text, sae_dir=sae_dir, classes=classes)


def find_sae(patch: Any, sae_dir: Path | None) -> Any:
    """The SAE a patch was made with: the registry copy first, then `load_patch_sae`'s rule.

    Raises:
        PatchError: when none of them has the patch's SAE fingerprint.
    """
    from steerpatch.steer.sae_lookup import load_patch_sae

    return load_patch_sae(patch, stored=sae_dir)


def preprocessing_of(loaded: Any) -> Any:
    """The graph's image preprocessing, read from the open_clip model's own configuration.

    Raises:
        CompileError: for a resize mode or interpolation the server cannot reproduce.
    """
    from open_clip import get_model_preprocess_cfg
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from pydantic import ValidationError

    from steerpatch.compile.metadata import Preprocessing

    cfg = get_model_preprocess_cfg(loaded.model)
    try:
        return Preprocessing(
            image_size=int(loaded.image_size),
            mean=[float(v) for v in cfg.get("mean") or OPENAI_DATASET_MEAN],
            std=[float(v) for v in cfg.get("std") or OPENAI_DATASET_STD],
            interpolation=cfg.get("interpolation", "bicubic"),
            resize_mode=cfg.get("resize_mode", "shortest"),
        )
    except ValidationError as error:
        raise CompileError(
            f"model {loaded.name!r} preprocesses with resize_mode={cfg.get('resize_mode')!r}, "
            f"interpolation={cfg.get('interpolation')!r}; the server supports resize modes shortest/squash and "
            "bicubic/bilinear/nearest interpolation"
        ) from error


def build_graph(loaded: Any, patch: Any = None, sae: Any = None, head: Any = None) -> tuple[Any, str, str, int]:
    """The exportable module for a patch (or the plain encoder when `patch` is None).

    Args:
        loaded: the `LoadedModel`.
        patch: the patch, or None.
        sae: the patch's SAE.
        head: a `ZeroShotHead` to bake in, or None for embeddings only.

    Returns:
        (module, mode, why, extra weights added by steering).

    Raises:
        CompileError: for an SAE architecture the compiler does not support.
    """
    from steerpatch.compile.graph import EncoderGraph, n_tokens, token_mask
    from steerpatch.compile.steering import MODES, SteeringModule
    from steerpatch.models.tower import is_batch_first, vision_tower
    from steerpatch.steer.delta import EditColumns, token_index

    head_weights = head.weights if head is not None else None
    logit_scale = float(head.logit_scale) if head is not None else 100.0

    visual = vision_tower(loaded)
    if patch is None or not patch.edits:
        module = EncoderGraph(visual, head_weights=head_weights, logit_scale=logit_scale).eval()
        why = "no patch" if patch is None else "the patch has no edits, so the graph is the plain encoder"
        return module, "none", why, 0
    if sae.architecture not in MODES:
        raise CompileError(
            f"SAE architecture {sae.architecture!r} cannot be compiled; supported: {', '.join(MODES)}"
        )
    mode, why = MODES[sae.architecture]
    # the same check eager steering makes, so compile refuses what validate refuses, with the same words
    token_index(patch.tokens, n_tokens(visual))
    columns = EditColumns.from_edits(patch.edits)
    batch_first = is_batch_first(visual)
    steering = SteeringModule(sae, columns, token_mask(patch.tokens, n_tokens(visual)), batch_first=batch_first)
    module = EncoderGraph(visual, patch.hook.block, steering, head_weights, logit_scale).eval()
    return module, mode, why, steering.extra_weights()


def bind(patch: Any, model: Any, sae: Any) -> None:
    """Check that a patch fits the model and SAE (fingerprints, block, width, latents).

    Raises:
        PatchError: naming what does not fit.
    """
    from steerpatch.models import resblocks, width_at_block
    from steerpatch.steer.binding import check_binding

    n_blocks = len(resblocks(model.model))
    width = width_at_block(model.model, patch.hook.block) if patch.hook.block < n_blocks else None
    check_binding(patch, model_fingerprint=model.fingerprint, sae=sae, n_blocks=n_blocks, width=width)


def zero_shot_head(model: Any, head: str, classes: list[str] | None, dataset: Any) -> tuple[Any, list[str]]:
    """The `ZeroShotHead` to bake in (None for `head="embedding"`) and its class names.

    Raises:
        CompileError: the zero-shot head without any source of class names.
    """
    if head != "zero-shot":
        return None, []
    from steerpatch.models import build_zero_shot_head, default_classes

    class_names = list(classes or (dataset.classes if dataset else None) or default_classes(model.name) or [])
    if not class_names:
        raise CompileError(
            f"the zero-shot head needs class names for model {model.name!r}; pass classes (--classes a,b,c), "
            "held-out data (--data DIR), or use --head embedding"
        )
    return build_zero_shot_head(model, class_names), class_names


def load_data(data: Any) -> Any:
    """The held-out `ImageDataset` for the parity gate (None stays None)."""
    if data is None:
        return None
    from steerpatch.data import ImageDataset, load_dataset

    return data if isinstance(data, ImageDataset) else load_dataset(data)
