"""`compile_patches`: several patches of one model and block in one graph, selected per row.

The graph takes a second input, `patch_index` (int64, one per batch row): 0 runs the unpatched
model, i runs the i-th patch given. Each patch keeps its own SAE, token scope and compile mode; the
steering modules are the ones a single-patch compile builds (`steerpatch.compile.graph`), put side
by side in a `PatchSelector`. The parity gate checks every index against the torch hooks, and once
more with a batch that mixes them. Nothing is written unless every index passes.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from steerpatch.errors import CompileError


def check_compatible(patches: Sequence[Any]) -> None:
    """Patches of one graph must steer the same model at the same block, each once.

    Raises:
        CompileError: naming the first patch that differs (exit code 2), or a patch given twice.
    """
    first = patches[0]
    seen: dict[str, str] = {}
    for patch in patches:
        if (patch.model.id, patch.model.fingerprint) != (first.model.id, first.model.fingerprint):
            raise CompileError(
                f"patch {patch.ref} is for model {patch.model.id!r} ({patch.model.fingerprint[:12]}) but "
                f"{first.ref} is for {first.model.id!r} ({first.model.fingerprint[:12]}); one multi-patch graph "
                "serves one model: compile them separately"
            )
        if patch.hook.block != first.hook.block:
            raise CompileError(
                f"patch {patch.ref} steers block {patch.hook.block} but {first.ref} steers block "
                f"{first.hook.block}; one multi-patch graph steers one block: compile them separately"
            )
        if patch.content_hash in seen:
            raise CompileError(f"patch {patch.ref} is given twice (as {seen[patch.content_hash]}); give each patch once")
        seen[patch.content_hash] = patch.ref


def build_multi_graph(loaded: Any, patches: Sequence[Any], saes: Sequence[Any], head: Any = None) -> tuple[Any, list[str]]:
    """The exportable module for several patches on one block (pixels, patch_index -> outputs).

    Args:
        loaded: the `LoadedModel`.
        patches: the patches, in patch-index order (index 1 first).
        saes: each patch's SAE.
        head: a `ZeroShotHead` to bake in, or None.

    Returns:
        (module, each patch's compile mode).

    Raises:
        CompileError: for an SAE architecture the compiler does not support.
    """
    from steerpatch.compile.graph import (
        MODES,
        EditTable,
        EncoderGraph,
        PatchSelector,
        SteeringModule,
        n_tokens,
    )
    from steerpatch.steer.delta import token_index

    visual = loaded.model.visual
    batch_first = bool(getattr(visual.transformer, "batch_first", True))
    modules, modes = [], []
    for patch, sae in zip(patches, saes, strict=True):
        if sae.architecture not in MODES:
            raise CompileError(f"SAE architecture {sae.architecture!r} cannot be compiled; supported: {', '.join(MODES)}")
        mode = MODES[sae.architecture][0]
        token_index(patch.tokens, n_tokens(visual))  # the check eager steering makes, with its words
        table = EditTable.from_edits(patch.edits)
        modules.append(SteeringModule(sae, table, patch.tokens, n_tokens(visual), mode, batch_first=batch_first))
        modes.append(mode)
    selector = PatchSelector(modules, batch_first=batch_first)
    head_weights = head.weights if head is not None else None
    logit_scale = float(head.logit_scale) if head is not None else 100.0
    module = EncoderGraph(visual, patches[0].hook.block, selector, head_weights, logit_scale).eval()
    return module, modes


def compile_patches(
    sources: Sequence[Any],
    *,
    model: Any = None,
    saes: Any = None,
    head: str = "zero-shot",
    classes: list[str] | None = None,
    out: str | Path | None = None,
    data: Any = None,
    tolerance: float = 1e-4,
    samples: int = 64,
    tracking_uri: str | None = None,
    providers: list[str] | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = True,
) -> Any:
    """Compile two or more patches into one graph whose `patch_index` input picks each row's patch.

    Args:
        sources: patches, patch files or registry refs, in patch-index order (index 1 first).
        model: the `LoadedModel`; default: load the patches' model.
        saes: one SAE for all, a list with one per patch, or None to find each patch's own.
        head, classes, out, data, tolerance, samples, tracking_uri, providers, log, progress: as in
            `steerpatch.compile.compile_patch`.

    Returns:
        A `CompileResult` whose `info.patches` lists the patches with their hashes, in order.

    Raises:
        CompileError: patches for different models or blocks, or parity above the tolerance at any
            index (nothing is written then).

    Example:
        >>> result = compile_patches(["water.json", "grass.json"], out="multi.onnx")  # doctest: +SKIP
        >>> [p.patch_ref for p in result.info.patches]  # doctest: +SKIP
        ['water-shortcut@1.0.0', 'grass@1.0.0']
    """
    import steerpatch
    from steerpatch.compile.export import OPSET, export_graph, serialize, set_metadata, write_graph
    from steerpatch.compile.inputs import (
        HEADS,
        CompileResult,
        bind,
        find_sae,
        load_data,
        preprocessing_of,
        resolve_patch,
        zero_shot_head,
    )
    from steerpatch.compile.metadata import GraphInfo, PatchEntry
    from steerpatch.compile.parity import compare, onnx_outputs, parity_inputs, torch_reference
    from steerpatch.compile.runtime import create_session, import_onnxruntime

    started = time.perf_counter()
    say = log or (lambda _line: None)
    import_onnxruntime()
    if head not in HEADS:
        raise CompileError(f"--head {head!r} is not one of {', '.join(HEADS)}")
    if not tolerance >= 0:
        raise CompileError(f"--tolerance {tolerance} must be a non-negative number, e.g. 1e-4")
    if len(sources) < 2:
        raise CompileError("a multi-patch graph needs at least two patches; compile one patch with compile_patch")
    resolved = [resolve_patch(source, tracking_uri=tracking_uri) for source in sources]
    patches = [r.patch for r in resolved]
    check_compatible(patches)
    if saes is not None and not isinstance(saes, list | tuple):
        saes = [saes] * len(patches)
    if saes is not None and len(saes) != len(patches):
        raise CompileError(f"{len(saes)} SAEs given for {len(patches)} patches; give one per patch or one for all")
    dataset = load_data(data)
    if model is None:
        from steerpatch.models import load_model

        model = load_model(patches[0].model.id)
    saes = list(saes) if saes is not None else [find_sae(p, r.sae_dir) for p, r in zip(patches, resolved, strict=True)]
    for patch, sae in zip(patches, saes, strict=True):
        bind(patch, model, sae)
    known = next((r.classes for r in resolved if r.classes), None)
    zero_shot, class_names = zero_shot_head(model, head, classes or known, dataset)
    say(f"compiling {len(patches)} patches into one graph: " + ", ".join(f"{i}={p.ref}" for i, p in enumerate(patches, 1)))
    module, modes = build_multi_graph(model, patches, saes, zero_shot)
    extra = module.selector.extra_weights()
    say(f"exporting ONNX (opset {OPSET}, head {head}, inputs pixels + patch_index); {extra} extra weights")
    proto = export_graph(module, model.image_size, module.output_names)
    session = create_session(serialize(proto), providers)
    pixels, source = parity_inputs(model, dataset, samples)
    n = len(pixels)
    references = [torch_reference(model, None, None, zero_shot, pixels, progress=progress)]
    references += [torch_reference(model, p, s, zero_shot, pixels, progress=progress) for p, s in zip(patches, saes, strict=True)]
    results = []
    for index, reference in enumerate(references):
        got = onnx_outputs(session, pixels, progress=progress, patch_index=np.full(n, index, dtype=np.int64))
        results.append(compare(reference, got, tolerance=tolerance, inputs=source))
        say(f"parity at patch_index {index}: max abs diff {results[-1].max_abs_diff:.3g}")
    # one batch mixing every index: rows must not leak into each other
    mixed = np.arange(n, dtype=np.int64) % len(references)
    expected = {name: np.stack([references[int(k)][name][row] for row, k in enumerate(mixed)]) for name in references[0]}
    mixed_result = compare(expected, onnx_outputs(session, pixels, progress=progress, patch_index=mixed),
                           tolerance=tolerance, inputs=source)
    say(f"parity on a mixed batch: max abs diff {mixed_result.max_abs_diff:.3g} (tolerance {tolerance:g})")
    checks: list[tuple[str, Any]] = [(str(i), r) for i, r in enumerate(results)] + [("mixed", mixed_result)]
    for where, result in checks:
        if not result.passed:
            raise CompileError(
                f"parity check failed at patch_index {where}: max abs difference {result.max_abs_diff:.3g} exceeds "
                f"the tolerance {tolerance:g} on {result.samples} inputs; nothing was written"
            )
    worst = max([*results, mixed_result], key=lambda r: r.max_abs_diff)
    entries = [
        PatchEntry(index=i, patch_name=p.name, patch_version=p.version, patch_ref=p.ref, patch_hash=p.content_hash,
                   registry_ref=r.registry_ref, sae_fingerprint=s.fingerprint, sae_architecture=s.architecture,
                   tokens=p.tokens, n_edits=len(p.edits), mode=mode,  # type: ignore[arg-type]
                   parity_max_abs_diff=results[i].max_abs_diff)
        for i, (p, r, s, mode) in enumerate(zip(patches, resolved, saes, modes, strict=True), 1)
    ]
    info = GraphInfo(
        patch_name=None, patch_version=None, patch_ref=None, patch_hash=None, registry_ref=None,
        model_id=model.name, model_fingerprint=model.fingerprint, sae_fingerprint=None, sae_architecture=None,
        block=patches[0].hook.block, tokens=None, n_edits=sum(len(p.edits) for p in patches),
        head=head,  # type: ignore[arg-type]
        classes=class_names, outputs=module.output_names,
        mode="exact" if "exact" in modes else "sparse",
        mode_reason=f"{len(patches)} patches selected per row by patch_index (" + ", ".join(modes) + ")",
        extra_weights=extra, parity_max_abs_diff=worst.max_abs_diff, parity_per_output=worst.per_output,
        parity_tolerance=tolerance, parity_samples=n, parity_inputs=source, opset=OPSET,
        preprocessing=preprocessing_of(model), steerpatch_version=steerpatch.__version__, patches=entries,
    )
    data_bytes = serialize(set_metadata(proto, info.to_props()))
    path = write_graph(data_bytes, out) if out is not None else None
    return CompileResult(path, info, data_bytes, time.perf_counter() - started)


# a registered multi-patch graph links each of its patches: one tag (a JSON list, in patch-index
# order) and the same list as a file in the model folder, so MANIFEST.json covers it too
PATCHES_TAG = "steerpatch.patches"
PATCHES_FILE = "PATCHES.json"


def multi_name(info: Any) -> str:
    """The default registered name of a multi-patch graph: `<model>.<patch>_<patch>...-onnx` (a valid NAME@ALIAS)."""
    from steerpatch.registry import registered_name
    from steerpatch.registry.integrity import GRAPH_SUFFIX

    return registered_name(info.model_id, "_".join(entry.patch_name for entry in info.patches)) + GRAPH_SUFFIX


def patch_links(c: Any, info: Any) -> list[dict[str, Any]]:
    """Each patch of a multi-patch graph with the registered patch version of the same content hash, if any."""
    from steerpatch.registry import registered_name
    from steerpatch.registry.integrity import TAG
    from steerpatch.registry.store import with_retry

    links = []
    for entry in info.patches:
        model = registered_name(info.model_id, entry.patch_name)
        query = f"name = '{model}' and tag.`{TAG}patch_hash` = '{entry.patch_hash}'"
        try:
            found = with_retry(functools.partial(c.search_model_versions, query), what=f"find patch {entry.patch_ref}")
        except Exception:  # noqa: BLE001 - no registered patch model: that patch was compiled from a file
            found = []
        version = max((str(v.version) for v in found), key=int, default=None)
        links.append({"index": entry.index, "patch_ref": entry.patch_ref, "patch_hash": entry.patch_hash,
                      "patch_model": model, "patch_version": version})
    return links


def multi_record(c: Any, info: Any) -> tuple[dict[str, str], dict[str, str]]:
    """(extra version tags, extra model-folder files) recording a multi-patch graph's patches."""
    text = json.dumps(patch_links(c, info), sort_keys=True)
    hashes = json.dumps([entry.patch_hash for entry in info.patches])
    return {PATCHES_TAG: text, "steerpatch.patch_hashes": hashes}, {PATCHES_FILE: text}


def verify_patch_links(c: Any, store: Any, mv: Any, info: Any, folder: Path, what: str) -> int:
    """Check a downloaded multi-patch graph's patch links; each linked patch version is verified too.

    The version's tag, the folder's `PATCHES.json` (already checked against MANIFEST.json) and the
    graph's own metadata must list the same patches in the same order, and every linked patch version
    must hold the patch hash, model and SAE fingerprints the graph was compiled with.

    Returns:
        The number of linked patch versions verified.

    Raises:
        IntegrityError: naming the graph version, the patch and what differs.
    """
    from steerpatch.errors import IntegrityError
    from steerpatch.registry.integrity import TAG
    from steerpatch.registry.store import with_retry
    from steerpatch.registry.verification import verify_model_version

    recorded = (mv.tags or {}).get(PATCHES_TAG)
    stored = folder / PATCHES_FILE
    if not recorded or not stored.is_file() or stored.read_text() != recorded:
        raise IntegrityError(f"{what}: artifact '{PATCHES_FILE}' is missing or differs from the {PATCHES_TAG} tag")
    try:
        links = json.loads(recorded)
        listed = [(link["index"], link["patch_hash"]) for link in links]
    except (ValueError, TypeError, KeyError) as error:
        raise IntegrityError(f"{what}: the {PATCHES_TAG} tag is not a list of patch links ({error})") from None
    if listed != [(entry.index, entry.patch_hash) for entry in info.patches]:
        raise IntegrityError(f"{what}: the graph's patches {[e.patch_hash[:12] for e in info.patches]} differ from "
                             f"the registered ones {[h[:12] for _, h in listed]}")
    checked = 0
    for link, entry in zip(links, info.patches, strict=True):
        if not link.get("patch_version"):
            continue
        model, version = str(link["patch_model"]), str(link["patch_version"])
        pv = with_retry(functools.partial(c.get_model_version, model, version), what=f"read {model}@{version}")
        tags = pv.tags or {}
        expected = {"patch_hash": entry.patch_hash, "model_fingerprint": info.model_fingerprint,
                    "sae_fingerprint": entry.sae_fingerprint}
        for key, value in expected.items():
            if tags.get(TAG + key) != value:
                raise IntegrityError(f"{what}: patch_index {entry.index} was compiled with {key} {value!r} but "
                                     f"{model}@{version} has {tags.get(TAG + key)!r}")
        verify_model_version(c, store, pv, graphs=False)
        checked += 1
    return checked
