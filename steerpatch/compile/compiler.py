"""`compile_patch`: a patch becomes a parity-checked ONNX graph of the steered image encoder.

Resolve the patch (file, object or registry ref) -> load and bind its model and SAE -> build the
steered encoder (sparse or exact) with an optional zero-shot head -> export -> run the parity gate in
ONNX Runtime against the engine's torch hooks -> record everything in the graph -> write atomically.
Nothing is written when any step fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steerpatch.compile.inputs import (  # noqa: F401 - re-exported: the compiler's public names
    HEADS,
    CompileResult,
    ResolvedPatch,
    bind,
    build_graph,
    find_sae,
    is_registry_ref,
    load_data,
    preprocessing_of,
    resolve_patch,
    zero_shot_head,
)
from steerpatch.errors import CompileError

DEFAULT_TOLERANCE = 1e-4


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
    proto = export_graph(module, model.image_size, module.output_names, fusable=optimize)
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
