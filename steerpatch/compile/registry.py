"""Compiled graphs in the MLflow registry: log them as `mlflow.onnx` models, find them again.

A compiled graph is registered as a version of a sibling of its patch's registered model:
`<model>.<patch>-onnx` beside `<model>.<patch>`. Its tags link it to the patch (ref, hash, registry
version) and record the compile mode and parity result. The model folder is a plain `mlflow.onnx`
model with a tensor signature and the graph inline, so `mlflow models serve -m
models:/<name>@production --env-manager local` serves it without steerpatch.

This is the only module of the compile and serve packages that imports mlflow.
"""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from steerpatch.errors import RegistryError, SteerpatchError

TAG = "steerpatch."
KIND = "onnx-graph"
SUFFIX = "-onnx"
GRAPH_FILE = "model.onnx"


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
    from steerpatch.registry import registered_name

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
        "patch_model": compiled_name(info.model_id, info.patch_name)[: -len(SUFFIX)],
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


def register_graph(result: Any, *, alias: str | None = None, tracking_uri: str | None = None) -> GraphVersion:
    """Log a compiled graph as an `mlflow.onnx` model and register it as a new sibling-model version.

    Args:
        result: a `CompileResult` (its graph bytes and metadata record).
        alias: alias to point at the new version (compiling `NAME@production` passes `production`).
        tracking_uri: MLflow tracking URI; default: see `steerpatch.registry.resolve_store`.

    Returns:
        The new `GraphVersion`.

    Raises:
        RegistryError: when the store refuses; nothing half-registered is left behind.
    """
    import mlflow.onnx
    import onnx

    from steerpatch.compile.runtime import execution_providers
    from steerpatch.registry.register import find_version_by_patch_ref
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
    name = compiled_name(info.model_id, info.patch_name)
    providers = execution_providers()
    patch_model = name[: -len(SUFFIX)]
    found = with_retry(lambda: find_version_by_patch_ref(c, patch_model, info.patch_ref), what="find the patch")
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
            exp = with_retry(lambda: experiment_id(c, store), what="find the steerpatch experiment")
            logged = with_retry(
                lambda: c.create_logged_model(exp, name=info.patch_name + SUFFIX, model_type="onnx", tags=tags),
                what="create the logged model",
            )
            logged_id = logged.model_id
            with_retry(lambda: c.log_model_artifacts(logged.model_id, str(folder)), what="upload the graph")
            with_retry(lambda: c.finalize_logged_model(logged.model_id, "READY"), what="finalize the logged model")
            created = with_retry(lambda: _ensure_model(c, name, info), what="create the compiled model")
            mv = with_retry(
                lambda: c.create_model_version(
                    name,
                    source=f"models:/{logged.model_id}",
                    tags=tags,
                    description=f"ONNX graph of patch {info.patch_ref} ({info.mode} compile, head {info.head})",
                    model_id=logged.model_id,
                ),
                what="create the model version",
            )
            version = str(mv.version)
            if alias:
                with_retry(lambda: c.set_registered_model_alias(name, alias, version), what=f"set alias {alias}")
        except BaseException as error:
            _rollback(c, name, version, created, logged_id)
            if isinstance(error, Exception) and not isinstance(error, SteerpatchError):
                raise RegistryError(f"registering the graph of {info.patch_ref} as '{name}' failed: {error}") from error
            raise
    return GraphVersion(name, version, info.patch_ref, info.patch_hash, patch_version, f"{name}@{alias or version}")


def _ensure_model(c: Any, name: str, info: Any) -> bool:
    from steerpatch.registry.register import ensure_registered_model

    return ensure_registered_model(
        c, name, tags={TAG + "kind": KIND, TAG + "patch_name": info.patch_name, TAG + "model_id": info.model_id},
        description=f"Compiled ONNX graphs of steerpatch patch '{info.patch_name}' for '{info.model_id}'",
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
    from steerpatch.registry.artifacts import get_version, parse_ref
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


def download_graph(graph: GraphVersion, dst: str | Path, *, tracking_uri: str | None = None) -> Path:
    """Fetch a registered graph's `.onnx` file into folder `dst`.

    Returns:
        The local path of the graph file.

    Raises:
        RegistryError: when the version holds no ONNX graph.
    """
    from steerpatch.registry.artifacts import download_version
    from steerpatch.registry.store import client, resolve_store

    store = resolve_store(tracking_uri)
    local = download_version(client(store), store, graph.name, graph.version, Path(dst))
    found = sorted(Path(local).rglob("*.onnx"))
    if not found:
        raise RegistryError(f"{graph.name}@{graph.version} holds no .onnx file; it was not registered by steerpatch")
    return found[0]
