"""The links of a registered multi-patch graph to its patches' registered versions.

A multi-patch graph (`steerpatch.compile.multi`) serves several patches, so its registered version
records each of them: one tag (a JSON list, in patch-index order) and the same list as a file in the
model folder, so MANIFEST.json covers it too. Downloading the graph checks the tag, the file and the
graph's own metadata against each other and verifies every linked patch version.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steerpatch.errors import IntegrityError, SteerpatchError
from steerpatch.registry.integrity import GRAPH_SUFFIX, TAG
from steerpatch.registry.register import registered_name
from steerpatch.registry.store import with_retry
from steerpatch.registry.verification import verify_model_version

PATCHES_TAG = "steerpatch.patches"
PATCHES_FILE = "PATCHES.json"


def multi_name(info: Any) -> str:
    """The default registered name of a multi-patch graph: `<model>.<patch>_<patch>...-onnx` (a valid NAME@ALIAS)."""
    return registered_name(info.model_id, "_".join(entry.patch_name for entry in info.patches)) + GRAPH_SUFFIX


def patch_links(c: Any, info: Any) -> list[dict[str, Any]]:
    """Each patch of a multi-patch graph with the registered patch version of the same content hash, if any."""
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


def verify_patch_links(c: Any, store: Any, mv: Any, info: Any, folder: Path, what: str, *,
                       report: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Check a downloaded multi-patch graph's patch links; each linked patch version is verified too.

    The version's tag, the folder's `PATCHES.json` (already checked against MANIFEST.json) and the
    graph's own metadata must list the same patches in the same order, and every linked patch version
    must hold the patch hash, model and SAE fingerprints the graph was compiled with. Every link is
    checked before one error names each patch that failed.

    Args:
        report: called once per patch, in index order, with `{"index", "patch_ref", "patch_hash",
            "patch_model", "patch_version", "status": "ok"|"failed"|"unregistered", "problem"}`
            (`steerpatch verify` prints these); not called when the list itself does not match.

    Returns:
        The number of linked patch versions verified.

    Raises:
        IntegrityError: naming the graph version, the patch and what differs.
    """
    recorded = (mv.tags or {}).get(PATCHES_TAG)
    stored = folder / PATCHES_FILE
    stored_text = stored.read_text(errors="replace") if stored.is_file() else None
    if not recorded or stored_text != recorded:
        where = _first_difference(info, recorded, stored_text)
        raise IntegrityError(f"{what}: artifact '{PATCHES_FILE}' is missing or differs from the {PATCHES_TAG} tag{where}")
    try:
        links = json.loads(recorded)
        listed = [(link["index"], link["patch_hash"]) for link in links]
    except (ValueError, TypeError, KeyError) as error:
        raise IntegrityError(f"{what}: the {PATCHES_TAG} tag is not a list of patch links ({error})") from None
    if listed != [(entry.index, entry.patch_hash) for entry in info.patches]:
        raise IntegrityError(f"{what}: the graph's patches {[e.patch_hash[:12] for e in info.patches]} differ from "
                             f"the registered ones {[h[:12] for _, h in listed]}"
                             f"{_first_difference(info, listed, [(e.index, e.patch_hash) for e in info.patches])}")
    checked, problems = 0, []
    for link, entry in zip(links, info.patches, strict=True):
        outcome = {"index": entry.index, "patch_ref": entry.patch_ref, "patch_hash": entry.patch_hash,
                   "patch_model": link.get("patch_model"), "patch_version": link.get("patch_version"),
                   "status": "unregistered", "problem": None}
        if link.get("patch_version"):
            try:
                _verify_link(c, store, link, entry, info)
                outcome["status"] = "ok"
                checked += 1
            except SteerpatchError as error:  # a deleted or changed patch version; the others are still checked
                outcome["status"], outcome["problem"] = "failed", str(error).splitlines()[0]
                problems.append(outcome["problem"])
        if report is not None:
            report(outcome)
    if problems:
        raise IntegrityError(f"{what}: " + "; ".join(problems))
    return checked


def _verify_link(c: Any, store: Any, link: dict[str, Any], entry: Any, info: Any) -> None:
    """One linked patch version against the patch the graph was compiled with, then its own files."""
    from mlflow.exceptions import MlflowException

    model, version = str(link.get("patch_model")), str(link["patch_version"])
    try:
        pv = with_retry(functools.partial(c.get_model_version, model, version), what=f"read {model}@{version}")
    except MlflowException as error:  # deleted since the graph was registered, say
        raise IntegrityError(f"patch_index {entry.index} is linked to {model}@{version}, which the registry "
                             f"cannot read ({str(error).splitlines()[0]})") from None
    tags = pv.tags or {}
    expected = {"patch_hash": entry.patch_hash, "model_fingerprint": info.model_fingerprint,
                "sae_fingerprint": entry.sae_fingerprint}
    for key, value in expected.items():
        if tags.get(TAG + key) != value:
            raise IntegrityError(f"patch_index {entry.index} was compiled with {key} {value!r} but "
                                 f"{model}@{version} has {tags.get(TAG + key)!r}")
    try:
        verify_model_version(c, store, pv, graphs=False)
    except SteerpatchError as error:
        raise IntegrityError(f"patch_index {entry.index} ({entry.patch_ref}): {str(error).splitlines()[0]}") from None


def _first_difference(info: Any, a: Any, b: Any) -> str:
    """`; first at patch_index N (REF)` for the first position where two patch lists differ, from the graph's metadata."""
    try:
        first = [json.loads(x) if isinstance(x, str) else x for x in (a, b)]
        if not all(isinstance(x, list) for x in first):
            return ""
        position = next(i for i, (x, y) in enumerate(itertools.zip_longest(*first)) if x != y)
    except (ValueError, RecursionError, StopIteration):  # unreadable lists: the message says the file differs
        return ""
    if position >= len(info.patches):
        return f"; first after the graph's last patch (patch_index {len(info.patches)})"
    entry = info.patches[position]
    return f"; first at patch_index {entry.index} ({entry.patch_ref})"
