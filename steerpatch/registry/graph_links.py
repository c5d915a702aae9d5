"""The links of a registered multi-patch graph to its patches' registered versions.

A multi-patch graph (`steerpatch.compile.multi`) serves several patches, so its registered version
records each of them: one tag (a JSON list, in patch-index order) and the same list as a file in the
model folder, so MANIFEST.json covers it too. Downloading the graph checks the tag, the file and the
graph's own metadata against each other and verifies every linked patch version.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from steerpatch.errors import IntegrityError
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
