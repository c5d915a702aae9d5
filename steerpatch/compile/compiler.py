"""`compile_patch`: a patch becomes a parity-checked ONNX graph of the steered image encoder.

Resolve the patch (file, object or registry ref) -> load and bind its model and SAE -> build the
steered encoder (sparse or exact) with an optional zero-shot head -> export -> run the parity gate in
ONNX Runtime against the engine's torch hooks -> record everything in the graph -> write atomically.
Nothing is written when any step fails.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steerpatch.errors import CompileError, SAEError

HEADS = ("zero-shot", "embedding")
DEFAULT_TOLERANCE = 1e-4
_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*@[A-Za-z0-9._-]+$")


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


def is_registry_ref(source: str) -> bool:
    """True for `NAME@ALIAS` / `NAME@VERSION` strings that are not existing files."""
    return not Path(source).exists() and bool(_REF.match(source))


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
    from steerpatch.registry import resolve_patch_ref

    patch, local_dir = resolve_patch_ref(text, tracking_uri=tracking_uri)
    local_dir = Path(local_dir)
    classes = None
    classes_file = local_dir / "classes.json"
    if classes_file.is_file():
        classes = json.loads(classes_file.read_text())["classes"]
    sae_dir = local_dir / "sae" if (local_dir / "sae").is_dir() else None
    return ResolvedPatch(patch, registry_ref=text, sae_dir=sae_dir, classes=classes)


def find_sae(patch: Any, sae_dir: Path | None) -> Any:
    """The SAE a patch was made with: the registry copy, its recorded location, or the shipped default.

    Raises:
        SAEError: when none of them has the patch's SAE fingerprint.
    """
    from steerpatch.sae import default_sae_path, load_sae

    candidates = [sae_dir] if sae_dir is not None else []
    candidates += [Path(patch.sae.location).expanduser(), default_sae_path()]
    for candidate in candidates:
        if candidate is not None and candidate.exists():
            sae = load_sae(candidate)
            if sae.fingerprint == patch.sae.fingerprint:
                return sae
    raise SAEError(
        f"cannot find the SAE of patch {patch.ref} (fingerprint {patch.sae.fingerprint}, location "
        f"'{patch.sae.location}'); pass the SAE object the patch was made with"
    )


def default_classes(loaded: Any) -> list[str] | None:
    """Class names when none are given: the concept world's shapes for the embedded default model."""
    if loaded.name == "concept-clip":
        from steerpatch.world import SHAPES

        return sorted(SHAPES)
    return None


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
    from steerpatch.compile.graph import MODES, EditTable, EncoderGraph, SteeringModule, n_tokens
    from steerpatch.steer.delta import token_index

    head_weights = head.weights if head is not None else None
    logit_scale = float(head.logit_scale) if head is not None else 100.0
    visual = loaded.model.visual
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
    table = EditTable.from_edits(patch.edits)
    batch_first = bool(getattr(visual.transformer, "batch_first", True))
    steering = SteeringModule(sae, table, patch.tokens, n_tokens(visual), mode, batch_first=batch_first)
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
    class_names = list(classes or (dataset.classes if dataset else None) or default_classes(model) or [])
    if not class_names:
        raise CompileError(
            f"the zero-shot head needs class names for model {model.name!r}; pass classes (--classes a,b,c), "
            "held-out data (--data DIR), or use --head embedding"
        )
    from steerpatch.models import build_zero_shot_head

    return build_zero_shot_head(model, class_names), class_names


def compile_patch(
    patch: Any,
    *,
    model: Any = None,
    sae: Any = None,
    head: str = "zero-shot",
    classes: list[str] | None = None,
    out: str | Path | None = None,
    data: Any = None,
    tolerance: float = DEFAULT_TOLERANCE,
    samples: int = 64,
    tracking_uri: str | None = None,
    providers: list[str] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
    optimize: bool = False,
    int8: bool = False,
) -> CompileResult:
    """Compile a patch into an ONNX graph of the steered image encoder, gated on parity.

    Args:
        patch: a `Patch`, a patch file, or a registry ref `NAME@ALIAS|NAME@VERSION`; a list of two or
            more of them compiles one multi-patch graph (see `steerpatch.compile.multi.compile_patches`).
        model: the `LoadedModel`; default: load `patch.model.id`.
        sae: the SAE; default: the registry copy, the patch's location, or the shipped default.
        head: "zero-shot" (outputs embedding, logits, probs) or "embedding" (embedding only).
        classes: class names of the zero-shot head; default: the registry's, the data's, or the
            concept world's for the embedded model.
        out: file to write; None keeps the graph in memory only (`result.data`).
        data: held-out images (folder or `ImageDataset`) for the parity gate; default random inputs.
        tolerance: the largest max-abs difference the gate accepts.
        samples: parity inputs (at least 64).
        tracking_uri: MLflow store for registry refs.
        providers: ONNX Runtime providers for the gate; default: best installed.
        log: called with a line per step (the CLI prints them to stderr).
        progress: show progress bars on stderr for the parity runs.
        optimize: run ONNX Runtime's transformer optimiser; kept only where parity still holds.
        int8: int8 dynamic quantisation, kept only with top-1 agreement >= 99.5% with the fp32 graph
            on the gate's inputs (`GateFailed`, exit 1, otherwise). Never on by default.

    Returns:
        A `CompileResult`; its `info` is also stored in the graph's metadata.

    Raises:
        CompileError: unsupported architecture, export failure, or parity above the tolerance
            (nothing is written then).
        PatchError / SAEError: a patch that does not fit its model or SAE.
        MissingDependencyError: onnxruntime is not installed.

    Example:
        >>> result = compile_patch("registry/patches/water-shortcut.json", out="steered.onnx")  # doctest: +SKIP
        >>> result.info.mode, result.info.parity_max_abs_diff  # doctest: +SKIP
        ('sparse', 2.1e-06)
    """
    from steerpatch.compile.export import OPSET, export_graph, serialize, set_metadata, write_graph
    from steerpatch.compile.metadata import GraphInfo
    from steerpatch.compile.parity import compare, onnx_outputs, parity_inputs, torch_reference
    from steerpatch.compile.runtime import create_session, import_onnxruntime

    if isinstance(patch, list | tuple):
        if len(patch) == 1:
            patch = patch[0]
        else:
            from steerpatch.compile.multi import compile_patches

            if optimize or int8:
                raise CompileError("--optimize and --int8 take one patch; compile a multi-patch graph without them")
            return compile_patches(patch, model=model, saes=sae, head=head, classes=classes, out=out, data=data,
                                   tolerance=tolerance, samples=samples, tracking_uri=tracking_uri,
                                   providers=providers, log=log, progress=progress)
    started = time.perf_counter()
    say = log or (lambda _line: None)
    import_onnxruntime()  # fail before minutes of work when the runtime is missing
    if head not in HEADS:
        raise CompileError(f"--head {head!r} is not one of {', '.join(HEADS)}")
    if not tolerance >= 0:
        raise CompileError(f"--tolerance {tolerance} must be a non-negative number, e.g. 1e-4")
    resolved = resolve_patch(patch, tracking_uri=tracking_uri)
    patch = resolved.patch
    dataset = load_data(data)
    say(f"compiling {patch.ref}{f' ({resolved.registry_ref})' if resolved.registry_ref else ''}")
    if model is None:
        from steerpatch.models import load_model

        model = load_model(patch.model.id)
    if sae is None:
        sae = find_sae(patch, resolved.sae_dir)
    bind(patch, model, sae)
    zero_shot, class_names = zero_shot_head(model, head, classes or resolved.classes, dataset)

    module, mode, why, extra = build_graph(model, patch, sae, zero_shot)
    say(f"mode: {mode} ({why}); {extra} extra weights")
    say(f"exporting ONNX (opset {OPSET}, head {head})")
    proto = export_graph(module, model.image_size, module.output_names)
    session = create_session(serialize(proto), providers)
    pixels, source = parity_inputs(model, dataset, samples)
    say(f"parity gate: ONNX Runtime vs torch steered model on {len(pixels)} inputs ({source})")
    reference = torch_reference(model, patch, sae, zero_shot, pixels, progress=progress)
    parity = compare(
        reference,
        onnx_outputs(session, pixels, progress=progress),
        tolerance=tolerance,
        inputs=source,
    )
    say(f"parity: max abs diff {parity.max_abs_diff:.3g} (tolerance {tolerance:g}) "
        + ", ".join(f"{k} {v:.3g}" for k, v in parity.per_output.items()))
    if not parity.passed:
        worst = max(parity.per_output, key=lambda name: parity.per_output[name])
        raise CompileError(
            f"parity check failed for {patch.ref}: max abs difference {parity.max_abs_diff:.3g} "
            f"(worst output {worst!r}) exceeds the tolerance {tolerance:g} on {parity.samples} inputs; "
            "nothing was written; raise --tolerance only if that difference is acceptable"
        )
    refined = None
    if optimize or int8:
        from steerpatch.compile.optimize import refine

        refined = refine(proto, parity, reference, pixels, model, optimize=optimize, int8=int8, providers=providers,
                         say=say)
        proto, parity = refined.proto, refined.parity
    import steerpatch

    info = GraphInfo(
        patch_name=patch.name,
        patch_version=patch.version,
        patch_ref=patch.ref,
        patch_hash=patch.content_hash,
        registry_ref=resolved.registry_ref,
        model_id=model.name,
        model_fingerprint=model.fingerprint,
        sae_fingerprint=sae.fingerprint,
        sae_architecture=sae.architecture,
        block=patch.hook.block,
        tokens=patch.tokens,
        n_edits=len(patch.edits),
        head=head,  # type: ignore[arg-type]  # checked against HEADS above
        classes=class_names,
        outputs=module.output_names,
        mode=mode,  # type: ignore[arg-type]  # one of MODES' modes or "none"
        mode_reason=why,
        extra_weights=extra,
        parity_max_abs_diff=parity.max_abs_diff,
        parity_per_output=parity.per_output,
        parity_tolerance=tolerance,
        parity_samples=parity.samples,
        parity_inputs=parity.inputs,
        opset=OPSET,
        preprocessing=preprocessing_of(model),
        steerpatch_version=steerpatch.__version__,
        fusions=refined.fused if refined else None,
        int8_top1_agreement=refined.int8_top1_agreement if refined else None,
    )
    data_bytes = serialize(set_metadata(proto, info.to_props()))
    path = write_graph(data_bytes, out) if out is not None else None
    return CompileResult(path, info, data_bytes, time.perf_counter() - started)


def load_data(data: Any) -> Any:
    """The held-out `ImageDataset` for the parity gate (None stays None)."""
    if data is None:
        return None
    from steerpatch.data import ImageDataset, load_dataset

    return data if isinstance(data, ImageDataset) else load_dataset(data)
