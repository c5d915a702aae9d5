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
# one tag per linked patch version, `steerpatch.link.<patch_hash>` = `<patch model>@<version>`, so a
# patch's audit finds the graphs that link it with one registry filter instead of reading every graph;
# keyed by the hash (64 hex digits) because a key holding a model name could pass MLflow's key limit
LINK_TAG = "steerpatch.link."
# a patch linked into more graph versions than this is listed up to here, with `more` said
MAX_LINKING = 100


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
    links = patch_links(c, info)
    text = json.dumps(links, sort_keys=True)
    hashes = json.dumps([entry.patch_hash for entry in info.patches])
    found = {LINK_TAG + link["patch_hash"]: f"{link['patch_model']}@{link['patch_version']}"
             for link in links if link["patch_version"]}
    return {PATCHES_TAG: text, "steerpatch.patch_hashes": hashes, **found}, {PATCHES_FILE: text}


def linking_graphs(c: Any, patch_model: str, version: str,
                   patch_hash: str) -> tuple[list[dict[str, Any]], bool, list[str]]:
    """The registered multi-patch graph versions that link one patch version, found by its `steerpatch.link.` tag.

    Each hit is confirmed against the graph version's `steerpatch.patches` list, which says the
    patch_index; a graph tagged as linking the patch whose list does not say so is a problem.
    Graphs registered before the link tag existed are not found.

    Args:
        c: an `MlflowClient`.
        patch_model: the registered patch model (`<model>.<patch>`).
        version: the patch version.
        patch_hash: that version's recorded patch hash.

    Returns:
        (`[{"name", "version", "aliases", "patch_index"}]` one per graph version and index, by name
        then version; whether more than `MAX_LINKING` graph versions link it (the rest unlisted); problems).
    """
    if len(patch_hash or "") != 64 or not all(ch in "0123456789abcdef" for ch in patch_hash):
        return [], False, []  # no (or a mangled) recorded hash: nothing links it by that tag
    target = f"{patch_model}@{version}"
    query = f"tag.`{LINK_TAG}{patch_hash}` = '{target}'"
    found = with_retry(functools.partial(c.search_model_versions, query, max_results=MAX_LINKING + 1),
                       what=f"find the graphs linking {target}")
    aliases: dict[str, dict[str, str]] = {}
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for gv in sorted(found, key=lambda v: (v.name, int(v.version)))[:MAX_LINKING]:
        if gv.name not in aliases:
            model = with_retry(functools.partial(c.get_registered_model, gv.name), what=f"read {gv.name}")
            aliases[gv.name] = {a: str(v) for a, v in (model.aliases or {}).items()}
        try:
            links = json.loads((gv.tags or {}).get(PATCHES_TAG) or "[]")
            indexes = [link["index"] for link in links if isinstance(link, dict) and link.get("patch_hash") == patch_hash
                       and link.get("patch_model") == patch_model and str(link.get("patch_version")) == str(version)]
        except (ValueError, TypeError, RecursionError):
            indexes = []
        if not indexes:
            problems.append(f"{gv.name}@{gv.version} is tagged as linking {target} but its {PATCHES_TAG} list does not")
        for index in indexes:
            rows.append({"name": gv.name, "version": str(gv.version), "patch_index": index,
                         "aliases": sorted(a for a, v in aliases[gv.name].items() if v == str(gv.version))})
    return rows, len(found) > MAX_LINKING, problems


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
