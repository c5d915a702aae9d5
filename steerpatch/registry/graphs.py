"""Compiled graphs in the MLflow registry: log them as `mlflow.onnx` models, find them again.

A compiled graph is registered as a version of a sibling of its patch's registered model:
`<model>.<patch>-onnx` beside `<model>.<patch>`. Its tags link it to the patch (ref, hash, registry
version) and record the compile mode and parity result, the SHA-256 of `model.onnx` and of the
folder's own `MANIFEST.json`; `download_graph` checks all of them (and the linked patch version)
before anything opens the graph, so a swapped or altered graph is never served. The model folder is a plain `mlflow.onnx`
model with a tensor signature and the graph inline, so `mlflow models serve -m
models:/<name>@production --env-manager local` serves it without steerpatch.

It lives in the registry package, beside the patch registration, because this package is the one
that imports mlflow: the compile and serve packages call it (`steerpatch.compile` re-exports
`register_graph`, `resolve_graph`, `download_graph`) and never import mlflow themselves.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from steerpatch.errors import IntegrityError, RegistryError, SteerpatchError
from steerpatch.registry.integrity import GRAPH_FILE, GRAPH_KIND, GRAPH_SUFFIX, GRAPH_TAG, MANIFEST_TAG, TAG

KIND = GRAPH_KIND
SUFFIX = GRAPH_SUFFIX


@dataclass(frozen=True)
class GraphVersion:
    """One registered compiled graph.

    Attributes:
        name: the compiled model's registered name.
        version: its version number (a string, as MLflow keeps it).
        patch_ref: `<patch>@<semver>` it was compiled from.
        patch_hash: that patch's content hash.
        patch_version: the version of the registered patch model, when it was compiled from one.
        via: the reference that was resolved (`NAME@ALIAS`), for display.
    """

    name: str
    version: str
    patch_ref: str
    patch_hash: str
    patch_version: str | None
    via: str

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_uri": self.model_uri}


def compiled_name(model_id: str, patch_name: str) -> str:
    """The registered name of a patch's compiled graphs (sibling of the patch's own model)."""
    from steerpatch.registry.register import registered_name

    return registered_name(model_id, patch_name) + SUFFIX


def _signature(info: Any) -> Any:
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    size = info.preprocessing.image_size
    inputs = Schema([TensorSpec(np.dtype(np.float32), (-1, 3, size, size), "pixels")])
    outputs: list[Any] = [TensorSpec(np.dtype(np.float32), (-1, -1), name) for name in info.outputs]
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


def _tags(info: Any, patch_version: str | None, providers: list[str]) -> dict[str, str]:
    tags = {
        "kind": KIND,
        "patch_ref": info.patch_ref,
        "patch_name": info.patch_name,
        "patch_hash": info.patch_hash,
        "patch_model": compiled_name(info.model_id, info.patch_name)[: -len(SUFFIX)] if info.patch_name else None,
        "patch_version": patch_version or "",
        "model_id": info.model_id,
        "model_fingerprint": info.model_fingerprint,
        "sae_fingerprint": info.sae_fingerprint,
        "head": info.head,
        "mode": info.mode,
        "mode_reason": info.mode_reason,
        "parity_max_abs_diff": repr(info.parity_max_abs_diff),
        "parity_tolerance": repr(info.parity_tolerance),
        "parity_samples": str(info.parity_samples),
        "providers": ",".join(providers),
    }
    return {TAG + key: str(value) for key, value in tags.items() if value is not None}


def register_graph(result: Any, *, alias: str | None = None, tracking_uri: str | None = None,
                   name: str | None = None) -> GraphVersion:
    """Log a compiled graph as an `mlflow.onnx` model and register it as a new sibling-model version.

    Args:
        result: a `CompileResult` (its graph bytes and metadata record).
        alias: alias to point at the new version (compiling `NAME@production` passes `production`).
        tracking_uri: MLflow tracking URI; default: see `steerpatch.registry.resolve_store`.
        name: registered name of a multi-patch graph (default `steerpatch.registry.graph_links.multi_name`);
            a single patch's graph is always registered beside its patch.

    Returns:
        The new `GraphVersion`.

    Raises:
        RegistryError: when the store refuses; nothing half-registered is left behind.
    """
    import mlflow.onnx
    import onnx

    from steerpatch.compile.runtime import execution_providers
    from steerpatch.io import sha256_file
    from steerpatch.registry.bundle import write_manifest
    from steerpatch.registry.store import (
        client,
        experiment_id,
        mlflow_uris,
        resolve_store,
        store_lock,
        with_retry,
    )

    info = result.info
    store = resolve_store(tracking_uri)
    c = client(store)
    providers = execution_providers()
    files: dict[str, str] = {}
    if info.patches:  # a multi-patch graph links each of its patches (steerpatch.registry.graph_links)
        from steerpatch.registry.graph_links import multi_name, multi_record

        name, patch_version = name or multi_name(info), None
        links, files = multi_record(c, info)
        tags = {**_tags(info, None, providers), **links}
    else:
        name = compiled_name(info.model_id, info.patch_name)
        patch_model = name[: -len(SUFFIX)]
        # linked by content hash, not by ref: a graph belongs to the patch whose bytes it was compiled from
        found = with_retry(lambda: _patch_version_by_hash(c, patch_model, info.patch_hash), what="find the patch")
        patch_version = None if found is None else str(found)
        tags = _tags(info, patch_version, providers)
    logged_id = version = None
    created = False
    with tempfile.TemporaryDirectory(prefix="steerpatch-onnx-") as tmp, store_lock(store), mlflow_uris(store):
        try:
            folder = Path(tmp) / "model"
            mlflow.onnx.save_model(
                onnx.load_from_string(result.data),
                str(folder),
                signature=_signature(info),
                onnx_execution_providers=providers,
                save_as_external_data=False,
                metadata={"steerpatch": info.model_dump(mode="json")},
            )
            for file, text in files.items():
                (folder / file).write_text(text)
            tags[MANIFEST_TAG] = write_manifest(folder)
            tags[GRAPH_TAG] = sha256_file(folder / GRAPH_FILE)
            exp = with_retry(lambda: experiment_id(c, store), what="find the steerpatch experiment")
            logged = with_retry(
                lambda: c.create_logged_model(exp, name=name.rpartition(".")[2] if info.patches else info.patch_name + SUFFIX,
                                              model_type="onnx", tags=tags),
                what="create the logged model",
            )
            logged_id = logged.model_id
            with_retry(lambda: c.log_model_artifacts(logged.model_id, str(folder)), what="upload the graph")
            from steerpatch.registry.metrics import log_graph_metrics  # parity and size as MLflow metrics

            with_retry(lambda: log_graph_metrics(c, exp, logged.model_id, info, len(result.data)), what="log metrics")
            with_retry(lambda: c.finalize_logged_model(logged.model_id, "READY"), what="finalize the logged model")
            created = with_retry(lambda: _ensure_model(c, name, info), what="create the compiled model")
            mv = with_retry(
                lambda: c.create_model_version(
                    name,
                    source=f"models:/{logged.model_id}",
                    tags=tags,
                    description=f"ONNX graph of {info.patch_ref or info.mode_reason} ({info.mode} compile, head {info.head})",
                    model_id=logged.model_id,
                ),
                what="create the model version",
            )
            version = str(mv.version)
            # what the store now holds must be what was recorded, or the registration is undone
            with tempfile.TemporaryDirectory(prefix="steerpatch-onnx-check-") as check:
                _verified_files(c, store, name, version, Path(check))
            if alias:
                with_retry(lambda: c.set_registered_model_alias(name, alias, version), what=f"set alias {alias}")
        except BaseException as error:
            _rollback(c, name, version, created, logged_id)
            if isinstance(error, Exception) and not isinstance(error, SteerpatchError):
                raise RegistryError(f"registering the graph of {info.patch_ref or name} as '{name}' failed: {error}") \
                    from error
            raise
    return GraphVersion(name, version, info.patch_ref or "", info.patch_hash or "", patch_version,
                        f"{name}@{alias or version}")


def _patch_version_by_hash(c: Any, patch_model: str, patch_hash: str | None) -> str | None:
    if not patch_hash:
        return None
    try:
        found = c.search_model_versions(f"name = '{patch_model}' and tag.`{TAG}patch_hash` = '{patch_hash}'")
    except Exception:  # noqa: BLE001 - no registered patch model: the graph was compiled from a file
        return None
    return max((str(v.version) for v in found), key=int, default=None)


def _ensure_model(c: Any, name: str, info: Any) -> bool:
    from steerpatch.registry.register import ensure_registered_model

    return ensure_registered_model(
        c, name, tags={TAG + "kind": KIND, TAG + "patch_name": info.patch_name or "", TAG + "model_id": info.model_id},
        description=f"Compiled ONNX graphs of steerpatch patch '{info.patch_name or name}' for '{info.model_id}'",
    )


def _rollback(c: Any, name: str, version: str | None, created: bool, logged_id: str | None) -> None:
    steps = []
    if version is not None:
        steps.append(lambda: c.delete_model_version(name, version))
    if created:
        steps.append(lambda: c.search_model_versions(f"name = '{name}'") or c.delete_registered_model(name))
    if logged_id is not None:
        steps.append(lambda: c.delete_logged_model(logged_id))
    for step in steps:
        # best effort: every step is tried even if the store is what failed
        with contextlib.suppress(Exception):
            step()


def resolve_graph(ref: str, *, tracking_uri: str | None = None) -> GraphVersion:
    """The compiled graph a reference points at now.

    `NAME` may be a compiled model (`…-onnx`), whose version is taken directly, or a patch model, whose
    alias is followed to a patch version and then to the newest graph compiled from that patch.

    Args:
        ref: `NAME@ALIAS`, `NAME@VERSION` or `NAME@latest`.
        tracking_uri: MLflow tracking URI; default: see `resolve_store`.

    Returns:
        The `GraphVersion` (metadata only; nothing is downloaded).

    Raises:
        RegistryError: for an unknown reference, or a patch version that was never compiled.
    """
    from steerpatch.refs import parse_ref
    from steerpatch.registry.artifacts import get_version
    from steerpatch.registry.store import client, resolve_store, with_retry

    store = resolve_store(tracking_uri)
    c = client(store)
    name, selector = parse_ref(ref)
    mv = get_version(c, name, selector)
    tags = mv.tags or {}
    if tags.get(TAG + "kind") == KIND:
        return GraphVersion(
            name, str(mv.version), tags.get(TAG + "patch_ref", ""), tags.get(TAG + "patch_hash", ""),
            tags.get(TAG + "patch_version") or None, ref,
        )
    patch_hash = tags.get(TAG + "patch_hash")
    if not patch_hash:
        raise RegistryError(f"'{ref}' is neither a steerpatch patch model nor a compiled graph")
    sibling = name + SUFFIX
    try:
        versions = with_retry(
            lambda: c.search_model_versions(f"name = '{sibling}' and tag.`{TAG}patch_hash` = '{patch_hash}'"),
            what=f"search the graphs of {name}",
        )
    except Exception:  # noqa: BLE001 - a missing sibling model reads as "never compiled"
        versions = []
    if not versions:
        raise RegistryError(
            f"{name}@{mv.version} ({ref}) has no compiled graph yet; run `steerpatch compile {ref} --register` first"
        )
    newest = max(versions, key=lambda v: int(v.version))
    return GraphVersion(sibling, str(newest.version), tags.get(TAG + "patch_ref", ""), patch_hash, str(mv.version), ref)


def _verified_files(c: Any, store: Any, name: str, version: str, dst: Path) -> tuple[Any, Path]:
    """Download a graph version and check its files against the registry's record; (version, graph file)."""
    from steerpatch.registry.artifacts import download_version
    from steerpatch.registry.integrity import verify_graph_folder
    from steerpatch.registry.store import with_retry

    mv = with_retry(lambda: c.get_model_version(name, version), what=f"read {name}@{version}")
    what = f"{name}@{version}"
    if (mv.tags or {}).get(TAG + "kind") != KIND:
        raise RegistryError(f"{what} is not a compiled graph (no {TAG}kind={KIND} tag)")
    local = download_version(c, store, name, version, dst)
    _, path = verify_graph_folder(local, mv, what)
    return mv, path


def graph_record(path: Path) -> Any:
    """The steerpatch metadata (`GraphInfo`) inside a graph file, or None when it has none."""
    import onnx

    from steerpatch.compile.metadata import GraphInfo

    model = onnx.load(str(path), load_external_data=False)
    try:
        return GraphInfo.from_props({p.key: p.value for p in model.metadata_props})
    except (KeyError, ValueError):
        return None


def download_graph(graph: GraphVersion, dst: str | Path, *, tracking_uri: str | None = None) -> Path:
    """Fetch a registered graph's `.onnx` file into folder `dst`, checked against the registry's record.

    Checked before the file is returned: MANIFEST.json against its recorded hash and every file
    against it, MLmodel's loader, `model.onnx` against its recorded hash, the patch hash and model
    fingerprint inside the graph against the version's tags, and — for a graph compiled from a
    registered patch version — that version's own files and its recorded patch hash and fingerprints.
    This runs once per load or reload; requests never pay for it.

    Returns:
        The local path of the graph file.

    Raises:
        IntegrityError: (exit 1) naming the version, the file and what differs.
        RegistryError: when the version holds no steerpatch graph.
    """
    from steerpatch.registry.integrity import check_graph_links
    from steerpatch.registry.store import client, resolve_store
    from steerpatch.registry.verification import verify_model_version

    store = resolve_store(tracking_uri)
    c = client(store)
    mv, path = _verified_files(c, store, graph.name, graph.version, Path(dst))
    what = f"{graph.name}@{graph.version}"
    tags = mv.tags or {}
    if graph.patch_hash and graph.patch_hash != tags.get(TAG + "patch_hash"):
        raise IntegrityError(
            f"{what}: artifact '{GRAPH_FILE}' is recorded for patch hash {tags.get(TAG + 'patch_hash')!r}, "
            f"but {graph.via} resolved to patch hash {graph.patch_hash!r}"
        )
    info = graph_record(path)
    if info is None:
        raise IntegrityError(f"{what}: artifact '{GRAPH_FILE}' has no steerpatch metadata")
    for key in ("patch_hash", "model_fingerprint"):
        found, recorded = getattr(info, key), tags.get(TAG + key)
        if found != recorded:
            raise IntegrityError(f"{what}: artifact '{GRAPH_FILE}' has {key} {found!r}, registered as {recorded!r}")
    patch_version = check_graph_links(c, mv, what)
    if info.patches:  # a multi-patch graph: each linked patch version (steerpatch.registry.graph_links)
        from steerpatch.registry.graph_links import verify_patch_links

        verify_patch_links(c, store, mv, info, path.parent, what)
    if patch_version is not None:
        verify_model_version(c, store, patch_version, graphs=False)
    return path
