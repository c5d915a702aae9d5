"""From draft to registered patch: save, validate, register — the calls `steerpatch patch new`,
`steerpatch validate` and `steerpatch register` make, run on the studio's loaded model and SAE.

Saved patches live as `<patch_dir>/<name>.json`; a patch's validation report goes to
`<patch_dir>/<name>.report/` (report.json and report.html).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic_core import PydanticCustomError

from steerpatch.patch import Patch, load_patch, save_patch
from steerpatch.patch.format import check_name
from steerpatch.studio.imaging import StudioInputError
from steerpatch.studio.workbench import Workbench
from steerpatch.user import current_user


def patch_path(bench: Workbench, name: str) -> Path:
    """Where the patch called `name` is saved; refuses names that are not slugs (422)."""
    try:
        check_name(name)
    except PydanticCustomError as error:
        raise StudioInputError(error.message(), 422) from None
    return bench.patch_dir / f"{name}.json"


def report_dir(bench: Workbench, name: str) -> Path:
    """The folder holding the validation report of the patch called `name`."""
    return bench.patch_dir / f"{name}.report"


def provenance_for(bench: Workbench, key: str, scores: dict[str, float] | None, note: str = "") -> dict[str, Any]:
    """Provenance of a patch born on one instance: its id or image hash, label, prediction and scores."""
    inst = bench.instance(key)
    record: dict[str, Any] = {
        "image_sha256": inst.sha256,
        "label": inst.label,
        "predicted": bench.prediction(inst.probs)["predicted"],
        "scores": {str(int(k)): float(v) for k, v in (scores or {}).items()},
    }
    if inst.index is not None:
        record["id"] = bench.dataset[inst.index].id
    return {"instances": [record], "note": note}


def save_draft(
    bench: Workbench,
    key: str,
    raw_edits: list[dict[str, Any]],
    *,
    name: str,
    rationale: str,
    author: str | None = None,
    tokens: str | None = None,
    scores: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Save the current edits on instance `key` as a patch file.

    Args:
        bench: the workbench.
        key: the instance the patch was made on (recorded in provenance).
        raw_edits: the edits, as sent by the page.
        name: the patch name (a slug); the file is `<patch_dir>/<name>.json`.
        rationale: why the patch exists.
        author: who made it (default: `current_user()`).
        tokens: token scope.
        scores: attribution score per latent on the instance, for provenance.

    Returns:
        `{"name", "ref", "path", "content_hash", "edits"}`.

    Raises:
        StudioInputError: a bad name, no edits, or a name already saved (409).
    """
    path = patch_path(bench, name)
    edits = bench.parse_edits(raw_edits)
    if not edits:
        raise StudioInputError("the draft has no edits; move a slider or set a value before saving", 422)
    if not rationale.strip():
        raise StudioInputError("a patch needs a rationale; say why the edit is right", 422)
    if path.exists():
        raise StudioInputError(f"a patch named '{name}' is already saved at {path}; choose another name", 409)
    patch = bench.draft(
        edits,
        bench.check_tokens(tokens),
        name=name,
        rationale=rationale.strip(),
        author=(author or "").strip() or current_user(),
        provenance=provenance_for(bench, key, scores, note="made in steerpatch studio"),
    )
    save_patch(patch, path)
    return {
        "name": patch.name,
        "ref": patch.ref,
        "path": str(path),
        "content_hash": patch.content_hash,
        "edits": [e.model_dump() for e in patch.edits],
    }


def saved_patch(bench: Workbench, name: str) -> Patch:
    """Load a patch saved in the patch folder (404 when there is none of that name)."""
    path = patch_path(bench, name)
    if not path.is_file():
        raise StudioInputError(f"no saved patch named '{name}' in {bench.patch_dir}; save it first", 404)
    return load_patch(path)


def validate_saved(bench: Workbench, name: str, *, policy: Any = None) -> dict[str, Any]:
    """Validate a saved patch on the studio's dataset and write its ripple report.

    The patch's source instance (when it is a dataset item) is the target set, and images of the
    same class and group are the same-failure set.

    Returns:
        Verdict, failed gates, headline numbers and the report paths.
    """
    from steerpatch.validate import validate_patch, write_report

    patch = saved_patch(bench, name)
    positions = bench.id_positions()
    targets = [i.id for i in patch.provenance.instances if i.id in positions] or None
    same_failure = None
    if targets and bench.index.group_by is not None:
        first = bench.dataset[positions[targets[0]]]
        group_value = first.attributes.get(bench.index.group_by)
        same_failure = [
            item.id for item in bench.dataset.items
            if item.label == first.label and item.attributes.get(bench.index.group_by) == group_value
            and item.id not in targets
        ] or None
    with bench.lock:
        report = validate_patch(
            patch, bench.dataset, model=bench.loaded, sae=bench.sae, targets=targets, same_failure=same_failure,
            group_by=bench.index.group_by, policy=policy, classes=bench.classes, cache=bench.cache, progress=True,
        )
    json_path, html_path = write_report(report, report_dir(bench, name))
    return {
        "name": name,
        "verdict": report.verdict,
        "failed_gates": list(report.failed_gates),
        "accuracy": report.accuracy.model_dump(),
        "flips": report.flips.model_dump(),
        "worst_group": report.worst_group.model_dump() if report.worst_group else None,
        "target_fix_rate": report.target_fix_rate,
        "generalisation_fix_rate": report.generalisation_fix_rate,
        "groups": {g: v.model_dump() for g, v in report.groups.items()},
        "report_json": str(json_path),
        "report_html": str(html_path),
        "report_url": f"/reports/{name}/report.html",
    }


def register_saved(bench: Workbench, name: str) -> dict[str, Any]:
    """Register a validated patch in the MLflow registry (validate it first).

    Returns:
        The registered model name, version, model URI and verdict.
    """
    from steerpatch.registry import register_patch

    path = patch_path(bench, name)
    saved_patch(bench, name)
    report = report_dir(bench, name) / "report.json"
    if not report.is_file():
        raise StudioInputError(f"patch '{name}' has no validation report yet; validate it before registering", 409)
    version = register_patch(path, report, sae_path=bench.sae.location, tracking_uri=bench.tracking_uri)
    return version.to_dict()
