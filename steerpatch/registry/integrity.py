"""Check what a store holds against what the registry recorded when it was registered.

The record is the model version's `steerpatch.*` tags, written once at registration; files that
travel with an artifact (its MANIFEST.json, its MLmodel, its report) are evidence to be checked
against that record, never the record itself. Two kinds of version are checked:

- a patch version (`<model>.<patch>`): MANIFEST.json against its recorded hash, every file against
  the manifest, MLmodel against the flavor steerpatch writes, and the patch and report against the
  recorded patch hash, fingerprints and dataset hash;
- a compiled graph version (`<model>.<patch>-onnx`): the same manifest check, `model.onnx` against its
  recorded hash, and its recorded patch hash and model fingerprint against the patch version it was
  compiled from (when it was compiled from a registered one).

Every refusal is an `IntegrityError` (exit 1) whose first line names the version, the file and what
differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from steerpatch.errors import IntegrityError
from steerpatch.io import sha256_file
from steerpatch.registry.bundle import LOADER_MODULE, MANIFEST, PATCH_FILE, REPORT_JSON, check_manifest

TAG = "steerpatch."
MANIFEST_TAG = TAG + "manifest_sha256"
REPORT_TAG = TAG + "report_sha256"
GRAPH_TAG = TAG + "graph_sha256"
# compiled graphs: a sibling registered model `<patch model>-onnx` whose versions carry kind=onnx-graph
GRAPH_KIND = "onnx-graph"
GRAPH_SUFFIX = "-onnx"
GRAPH_FILE = "model.onnx"
GRAPH_LOADER = "mlflow.onnx"
MLMODEL = "MLmodel"


def is_graph(mv: Any) -> bool:
    """Whether a model version is a compiled graph (else a patch version)."""
    return (mv.tags or {}).get(TAG + "kind") == GRAPH_KIND


def _recorded_manifest(mv: Any, what: str) -> str:
    recorded = (mv.tags or {}).get(MANIFEST_TAG)
    if not recorded:
        raise IntegrityError(
            f"{what}: the registry has no recorded {MANIFEST} hash ({MANIFEST_TAG}); it was not registered "
            "by this steerpatch, so nothing vouches for its files: register it again"
        )
    return recorded


def check_mlmodel(local: Path, *, loader: str, what: str, patch_hash: str | None = None) -> None:
    """Refuse an MLmodel that would make MLflow import anything but the expected loader.

    Args:
        local: the downloaded model folder.
        loader: the only `python_function.loader_module` allowed.
        what: the version, for messages.
        patch_hash: the recorded patch hash the steerpatch flavor must name, when checked.

    Raises:
        IntegrityError: naming what MLmodel says and what was expected.
    """
    import yaml

    try:
        doc = yaml.safe_load((local / MLMODEL).read_text(encoding="utf-8"))
        pyfunc = doc["flavors"]["python_function"]
    except (OSError, yaml.YAMLError, KeyError, TypeError, UnicodeDecodeError):
        raise IntegrityError(f"{what}: artifact '{MLMODEL}' is missing or unreadable; the stored model was changed") from None
    if pyfunc.get("loader_module") != loader:
        raise IntegrityError(
            f"{what}: artifact '{MLMODEL}' names loader_module {pyfunc.get('loader_module')!r}, expected {loader!r}"
        )
    if pyfunc.get("code"):
        raise IntegrityError(f"{what}: artifact '{MLMODEL}' ships code ({pyfunc['code']!r}) for MLflow to import; "
                             "steerpatch models carry none")
    if patch_hash is not None:
        flavor = (doc["flavors"].get("steerpatch") or {}).get("patch_hash")
        if flavor != patch_hash:
            raise IntegrityError(
                f"{what}: artifact '{MLMODEL}' names patch_hash {flavor!r}, registered as {patch_hash!r}"
            )


def verify_patch_folder(local: Path, mv: Any, what: str) -> tuple[int, Any, Any]:
    """Check a downloaded patch version against the registry's record of it.

    Returns:
        `(files checked, patch, report)` once everything matches.

    Raises:
        IntegrityError: at the first difference (manifest, MLmodel, patch, report).
    """
    from steerpatch.errors import SteerpatchError
    from steerpatch.patch import load_patch
    from steerpatch.validate.report import load_report

    tags = mv.tags or {}
    n = check_manifest(local, manifest_sha256=_recorded_manifest(mv, what), what=what)
    recorded_hash = tags.get(TAG + "patch_hash")
    check_mlmodel(local, loader=LOADER_MODULE, what=what, patch_hash=recorded_hash)
    try:
        patch = load_patch(local / PATCH_FILE)
        report = load_report(local / REPORT_JSON)
    except SteerpatchError as error:
        raise IntegrityError(f"{what}: a stored artifact no longer loads: {str(error).splitlines()[0]}") from None
    expected = {
        PATCH_FILE: [("content hash", patch.content_hash, recorded_hash),
                     ("model fingerprint", patch.model.fingerprint, tags.get(TAG + "model_fingerprint")),
                     ("SAE fingerprint", patch.sae.fingerprint, tags.get(TAG + "sae_fingerprint"))],
        REPORT_JSON: [("hashes.patch", report.hashes.patch, recorded_hash),
                      ("hashes.model", report.hashes.model, tags.get(TAG + "model_fingerprint")),
                      ("hashes.sae", report.hashes.sae, tags.get(TAG + "sae_fingerprint")),
                      ("hashes.dataset", report.hashes.dataset, tags.get(TAG + "dataset_hash")),
                      ("patch", report.patch, tags.get(TAG + "patch_ref"))],
    }
    for file, checks in expected.items():
        for field, found, recorded in checks:
            if recorded is None or found != recorded:
                raise IntegrityError(f"{what}: artifact '{file}' has {field} {found!r}, registered as {recorded!r}")
    recorded_report = tags.get(REPORT_TAG)
    if recorded_report and sha256_file(local / REPORT_JSON) != recorded_report:
        raise IntegrityError(f"{what}: artifact '{REPORT_JSON}' sha256 differs from the one registered")
    return n, patch, report


def verify_graph_folder(local: Path, mv: Any, what: str) -> tuple[int, Path]:
    """Check a downloaded compiled-graph version against the registry's record of it.

    Returns:
        `(files checked, the verified local .onnx file)`.

    Raises:
        IntegrityError: at the first difference (manifest, MLmodel, graph hash).
    """
    tags = mv.tags or {}
    n = check_manifest(local, manifest_sha256=_recorded_manifest(mv, what), what=what)
    check_mlmodel(local, loader=GRAPH_LOADER, what=what)
    graph, recorded = local / GRAPH_FILE, tags.get(GRAPH_TAG)
    if not graph.is_file():
        raise IntegrityError(f"{what}: artifact '{GRAPH_FILE}' is missing")
    if not recorded or sha256_file(graph) != recorded:
        raise IntegrityError(f"{what}: artifact '{GRAPH_FILE}' sha256 differs from the one registered ({recorded})")
    return n, graph


def check_graph_links(c: Any, mv: Any, what: str) -> Any:
    """A graph's recorded patch hash and model fingerprint against the patch version it names.

    Returns:
        The patch model version, or None for a graph compiled from a file.

    Raises:
        IntegrityError: when the two records disagree.
    """
    from steerpatch.registry.store import with_retry

    tags = mv.tags or {}
    patch_version = tags.get(TAG + "patch_version")
    if not patch_version:
        return None
    patch_model = mv.name[: -len(GRAPH_SUFFIX)] if mv.name.endswith(GRAPH_SUFFIX) else tags.get(TAG + "patch_model")
    pv = with_retry(lambda: c.get_model_version(patch_model, patch_version), what=f"read {patch_model}@{patch_version}")
    ptags = pv.tags or {}
    for key in ("patch_hash", "model_fingerprint", "sae_fingerprint"):
        if tags.get(TAG + key) != ptags.get(TAG + key):
            raise IntegrityError(
                f"{what}: artifact '{GRAPH_FILE}' was recorded with {key} {tags.get(TAG + key)!r} but "
                f"{patch_model}@{patch_version} has {ptags.get(TAG + key)!r}"
            )
    return pv


def graphs_of(c: Any, name: str, patch_hash: str | None) -> list[Any]:
    """The compiled-graph versions registered for a patch (by content hash), oldest first."""
    from steerpatch.registry.store import with_retry

    if not patch_hash:
        return []
    sibling = name + GRAPH_SUFFIX
    try:
        found = with_retry(
            lambda: c.search_model_versions(f"name = '{sibling}' and tag.`{TAG}patch_hash` = '{patch_hash}'"),
            what=f"search the graphs of {name}",
        )
    except Exception:  # noqa: BLE001 - a sibling model that does not exist holds no graphs
        return []
    return sorted(found, key=lambda v: int(v.version))
