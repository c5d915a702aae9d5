"""Verify a whole registered version against the registry's record: download it, check every file.

Sits above `artifacts` (which downloads) and `integrity` (which checks a local folder), so that neither
of those needs the other.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steerpatch.registry.artifacts import download_version
from steerpatch.registry.integrity import (
    TAG,
    check_graph_links,
    graphs_of,
    is_graph,
    verify_graph_folder,
    verify_patch_folder,
)


def verify_model_version(c: Any, store: Any, mv: Any, *, graphs: bool = True,
                         check_folder: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Download one version (patch or graph) and check it, and for a patch its compiled graphs.

    Args:
        check_folder: called with the downloaded folder once its files have been checked, before it
            is removed, for a caller's further checks (a multi-patch graph's patch links).

    Returns:
        `{"name", "version", "kind", "files", "graphs": [{"name", "version"}], "ok": True}`.

    Raises:
        IntegrityError: at the first difference.
    """
    what = f"{mv.name}@{mv.version}"
    checked: list[dict[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="steerpatch-verify-") as tmp:
        local = download_version(c, store, mv.name, str(mv.version), Path(tmp) / "model")
        if is_graph(mv):
            n, _ = verify_graph_folder(local, mv, what)
            check_graph_links(c, mv, what)
            kind = "graph"
        else:
            n, _, _ = verify_patch_folder(local, mv, what)
            kind = "patch"
        if check_folder is not None:
            check_folder(local)
    if kind == "patch" and graphs:
        for gv in graphs_of(c, mv.name, (mv.tags or {}).get(TAG + "patch_hash")):
            verify_model_version(c, store, gv, graphs=False)
            checked.append({"name": gv.name, "version": str(gv.version)})
    return {"name": mv.name, "version": str(mv.version), "kind": kind, "files": n, "graphs": checked, "ok": True}
