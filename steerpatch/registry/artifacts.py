"""Find registered versions by reference and fetch their artifacts to local folders.

A reference is `NAME@VERSION` (digits), `NAME@ALIAS` (e.g. `production`) or `NAME@latest`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from steerpatch.errors import RegistryError
from steerpatch.refs import LATEST, parse_ref
from steerpatch.registry.bundle import PATCH_FILE
from steerpatch.registry.integrity import MANIFEST_TAG, verify_patch_folder
from steerpatch.registry.store import Store, client, resolve_store, with_retry


def get_version(c: Any, name: str, selector: str) -> Any:
    """The model version a selector names: a number, an alias, or `latest`.

    Raises:
        RegistryError: naming the model's versions and aliases when nothing matches.
    """
    from mlflow.exceptions import MlflowException

    try:
        if selector.isdecimal():
            return with_retry(lambda: c.get_model_version(name, selector), what=f"read {name}@{selector}")
        if selector == LATEST:
            versions = with_retry(lambda: c.search_model_versions(f"name = '{name}'"), what=f"list {name}")
            if not versions:
                raise RegistryError(_missing_message(c, name, selector))
            return max(versions, key=lambda v: int(v.version))
        return with_retry(
            lambda: c.get_model_version_by_alias(name, selector), what=f"read {name}@{selector}"
        )
    except MlflowException as error:
        raise RegistryError(_missing_message(c, name, selector)) from error


def _missing_message(c: Any, name: str, selector: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        model = c.get_registered_model(name)
    except MlflowException:
        known = sorted(m.name for m in c.search_registered_models(max_results=50))
        hint = ", ".join(known[:10]) or "none yet"
        return (
            f"no registered model named '{name}' (known: {hint}); check the name or run `steerpatch register`"
        )
    versions = sorted(int(v.version) for v in c.search_model_versions(f"name = '{name}'"))
    aliases = ", ".join(f"{a}->{v}" for a, v in sorted(model.aliases.items())) or "none"
    return f"'{name}@{selector}' does not exist; versions: {', '.join(map(str, versions)) or 'none'}; aliases: {aliases}"


def download_version(c: Any, store: Store, name: str, version: str, dst: Path) -> Path:
    """Copy every artifact of a version into the empty-or-missing folder `dst`; returns `dst`."""
    import mlflow.artifacts

    uri = with_retry(lambda: c.get_model_version_download_uri(name, version), what=f"locate {name}@{version}")
    dst.mkdir(parents=True, exist_ok=True)
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=uri, dst_path=str(dst), tracking_uri=store.tracking_uri
    )
    return Path(local)


def download_file(c: Any, store: Store, name: str, version: str, relpath: str, dst: Path) -> Path:
    """Copy one artifact file of a version into folder `dst`; returns the local file."""
    import mlflow.artifacts

    uri = with_retry(lambda: c.get_model_version_download_uri(name, version), what=f"locate {name}@{version}")
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{uri.rstrip('/')}/{relpath}", dst_path=str(dst), tracking_uri=store.tracking_uri
        )
    except Exception as error:  # noqa: BLE001 - any store error means the file is not there
        raise RegistryError(
            f"{name}@{version} has no artifact '{relpath}'; it was not registered by steerpatch"
        ) from error
    return Path(local)


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "steerpatch" / "models"


def resolve_patch_ref(
    ref: str, tracking_uri: str | None = None, *, dst: str | Path | None = None
) -> tuple[Any, Path]:
    """Fetch a registered patch model by reference, check it against the registry's record, load its patch.

    Every file is checked against MANIFEST.json, the manifest against the hash recorded at
    registration, MLmodel against the flavor steerpatch writes, and the patch and report against the
    recorded patch hash and fingerprints (see `steerpatch.registry.integrity`), also when the folder
    comes from the cache.

    Downloads go to a content-addressed cache (keyed by the manifest hash) unless `dst` is given,
    and land there atomically, so concurrent callers never see a half-copied folder.

    Args:
        ref: `NAME@VERSION`, `NAME@ALIAS` or `NAME@latest`.
        tracking_uri: MLflow tracking URI; default: see `resolve_store`.
        dst: folder to place the model in (must not exist or be empty).

    Returns:
        `(patch, local_dir)`: the loaded `steerpatch.patch.Patch` and the verified model folder.

    Raises:
        RegistryError: for an unknown model, version or alias.
        IntegrityError: when a stored file no longer matches the manifest.
    """
    from steerpatch.patch import load_patch

    store = resolve_store(tracking_uri)
    c = client(store)
    name, selector = parse_ref(ref)
    mv = get_version(c, name, selector)
    manifest_sha = (mv.tags or {}).get(MANIFEST_TAG)
    what = f"{name}@{mv.version}"
    if dst is not None:
        target = Path(dst)
    elif manifest_sha:
        target = _cache_root() / manifest_sha
    else:
        raise RegistryError(f"{what} has no {MANIFEST_TAG} tag; it was not registered by steerpatch")
    if target.is_dir() and any(target.iterdir()):
        if dst is not None:
            raise RegistryError(f"destination '{target}' is not empty; choose a new folder")
        verify_patch_folder(target, mv, what)
        return load_patch(target / PATCH_FILE), target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        local = download_version(c, store, name, str(mv.version), tmp)
        verify_patch_folder(local, mv, what)
        if target.exists():
            target.rmdir()
        os.replace(local, target)
    except FileExistsError:
        pass  # another process placed the same content first
    except OSError as error:
        if not (target.is_dir() and any(target.iterdir())):
            raise RegistryError(f"could not place {what} in '{target}': {error}") from error
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_patch(target / PATCH_FILE), target
