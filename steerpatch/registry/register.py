"""Log a validated patch as an MLflow LoggedModel and register it as a new model version.

One registered model per (base model, patch name): `<model-id>.<patch-name>`, e.g.
`concept-clip.water-shortcut`. Each registration is all-or-nothing: the version is created with all
of its tags and its description in one call, its stored artifacts are re-checked against the
manifest, and on any failure the version, a registered model created for it, and the logged model
are deleted again.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from steerpatch.errors import RegistryError, SteerpatchError
from steerpatch.registry import bundle as bundle_mod
from steerpatch.registry.store import (
    Store,
    client,
    experiment_id,
    mlflow_uris,
    resolve_store,
    store_lock,
    with_retry,
)
from steerpatch.user import current_user

TAG = "steerpatch."


@dataclass(frozen=True)
class RegisteredVersion:
    """A model version that `register_patch` created.

    Attributes:
        name: the registered model name.
        version: the new version number, as a string (MLflow's convention).
        model_uri: `models:/<name>/<version>`.
        logged_model_id: the MLflow LoggedModel holding the artifacts.
        patch_ref: `<patch-name>@<semver>`.
        patch_hash: the patch content hash.
        verdict: the report's verdict at registration.
    """

    name: str
    version: str
    model_uri: str
    logged_model_id: str
    patch_ref: str
    patch_hash: str
    verdict: str
    existing: bool = False  # True when this exact content was already registered (nothing new was created)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def registered_name(model_id: str, patch_name: str) -> str:
    """The registered model name for a base model and a patch name.

    Example:
        >>> registered_name("hf-hub:org/clip", "water-shortcut")
        'hf-hub-org-clip.water-shortcut'
    """
    model_slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_id).strip("-.") or "model"
    return f"{model_slug}.{patch_name}"


def _metric(report: dict[str, Any], *path: str) -> Any:
    value: Any = report
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def version_tags(
    patch: Any, report: dict[str, Any], *, manifest_sha256: str, logged_model_id: str, report_sha256: str | None = None
) -> dict[str, str]:
    """The tags a registered version carries (all prefixed `steerpatch.`)."""
    tags: dict[str, Any] = {
        "patch_ref": patch.ref,
        "patch_name": patch.name,
        "patch_version": patch.version,
        "patch_hash": patch.content_hash,
        "model_id": patch.model.id,
        "model_fingerprint": patch.model.fingerprint,
        "sae_fingerprint": patch.sae.fingerprint,
        "sae_architecture": patch.sae.architecture,
        "dataset_hash": _metric(report, "hashes", "dataset"),
        "verdict": report.get("verdict"),
        "failed_gates": json.dumps(list(report.get("failed_gates") or [])),
        "accuracy_before": _metric(report, "accuracy", "before"),
        "accuracy_after": _metric(report, "accuracy", "after"),
        "right_to_wrong": _metric(report, "flips", "right_to_wrong"),
        "wrong_to_right": _metric(report, "flips", "wrong_to_right"),
        "n": report.get("n"),
        "author": patch.author,
        "parent": patch.parent or "",
        "manifest_sha256": manifest_sha256,
        "report_sha256": report_sha256,
        "logged_model_id": logged_model_id,
        "registered_by": current_user(),
    }
    return {TAG + k: str(v) for k, v in tags.items() if v is not None}


def find_version_by_patch_ref(c: Any, name: str, ref: str) -> str | None:
    """The newest version of `name` registered from patch `ref` (name@semver), if any."""
    versions = with_retry(
        lambda: c.search_model_versions(f"name = '{name}' and tag.`{TAG}patch_ref` = '{ref}'"),
        what=f"search the versions of {name}",
    )
    return max((v.version for v in versions), key=int, default=None)


def existing_registration(c: Any, name: str, patch: Any, report_sha256: str) -> str | None:
    """Enforce one content per `name@version`: the version already holding this exact content, or None.

    The same patch bytes with the same report registered again return the existing version instead
    of failing or duplicating it, so a registration retried after a dropped connection is harmless.

    Raises:
        RegistryError: (exit 2) when the patch's `name@version` is registered with other content
            (patch or report); the fix is a new version number.
    """
    from steerpatch.registry.integrity import REPORT_TAG

    versions = with_retry(
        lambda: c.search_model_versions(f"name = '{name}' and tag.`{TAG}patch_ref` = '{patch.ref}'"),
        what=f"search the versions of {name}",
    )
    for mv in sorted(versions, key=lambda v: int(v.version)):
        tags = mv.tags or {}
        if tags.get(TAG + "patch_hash") != patch.content_hash:
            raise RegistryError(
                f"{patch.ref} is already registered as {name} version {mv.version} with content hash "
                f"{tags.get(TAG + 'patch_hash')}, this patch.json has {patch.content_hash}; one name@version "
                f"holds one content: give it a new version with `steerpatch patch bump`"
            )
        if tags.get(REPORT_TAG) != report_sha256:
            raise RegistryError(
                f"{patch.ref} is already registered as {name} version {mv.version} with another report.json "
                f"(sha256 {tags.get(REPORT_TAG)}); a version's validation does not change: "
                f"give the patch a new version with `steerpatch patch bump`"
            )
    return max((str(v.version) for v in versions), key=int, default=None)


def ensure_registered_model(c: Any, name: str, *, tags: dict[str, str], description: str) -> bool:
    """Create the registered model `name` when missing (safe against a concurrent creator).

    Returns:
        True when this call created it.
    """
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
        return False
    except MlflowException as error:
        if "RESOURCE_DOES_NOT_EXIST" not in str(error.error_code):
            raise
    try:
        c.create_registered_model(name, tags=tags, description=description)
        return True
    except MlflowException as error:
        if "RESOURCE_ALREADY_EXISTS" in str(error.error_code):
            return False
        raise


def _ensure_registered_model(c: Any, name: str, patch: Any) -> bool:
    return ensure_registered_model(
        c, name, tags={TAG + "base_model": patch.model.id, TAG + "patch_name": patch.name},
        description=f"steerpatch patch '{patch.name}' for model '{patch.model.id}'",
    )


def _model_exists(c: Any, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
        return True
    except MlflowException as error:
        if "RESOURCE_DOES_NOT_EXIST" in str(error.error_code):
            return False
        raise


def _cleanup(c: Any, name: str, created_model: bool, logged_model_id: str | None) -> None:
    """Undo a failed registration: its version(s), a registered model it created, its logged model.

    Versions are found by their logged-model tag rather than by the number MLflow returned, because
    a call can fail after the store committed it (a dropped connection), leaving no number to go by.
    """

    def drop_versions() -> None:
        for mv in c.search_model_versions(
            f"name = '{name}' and tag.`{TAG}logged_model_id` = '{logged_model_id}'"
        ):
            c.delete_model_version(name, str(mv.version))

    def drop_model_if_empty() -> None:
        if not c.search_model_versions(f"name = '{name}'"):
            c.delete_registered_model(name)

    steps = []
    if logged_model_id is not None:
        steps.append(drop_versions)
    if created_model:
        steps.append(drop_model_if_empty)
    if logged_model_id is not None:
        steps.append(lambda: c.delete_logged_model(logged_model_id))
    for step in steps:
        # cleanup must try every step, whatever one of them raises
        with contextlib.suppress(Exception):
            with_retry(step, what="clean up a failed registration")


def _check_stored(c: Any, store: Store, name: str, version: str) -> None:
    """Download what the store now holds for the version and check it against the registry's record."""
    from steerpatch.registry.artifacts import download_version
    from steerpatch.registry.integrity import verify_patch_folder

    mv = with_retry(lambda: c.get_model_version(name, version), what=f"read {name}@{version}")
    with tempfile.TemporaryDirectory(prefix="steerpatch-check-") as tmp:
        local = download_version(c, store, name, version, Path(tmp))
        verify_patch_folder(local, mv, f"{name}@{version}")


def _log_report_metrics(
    c: Any, exp: str, model_id: str, patch: Any, report: dict[str, Any], dataset_source: str | None
) -> None:
    """The report's numbers as metrics on the LoggedModel, linked to the held-out dataset."""
    from steerpatch.registry import metrics as metrics_mod

    dataset = metrics_mod.dataset_entity(str(_metric(report, "hashes", "dataset")), dataset_source)
    values = metrics_mod.report_metrics(report)
    with_retry(
        lambda: metrics_mod.log_model_metrics(
            c, exp, model_id, values, dataset=dataset, run_name=f"register {patch.ref}"
        ),
        what="log the validation metrics",
    )


def register_patch(
    patch_path: str | Path,
    report_path: str | Path,
    *,
    sae_path: str | Path | None = None,
    classes: list[str] | None = None,
    tracking_uri: str | None = None,
    dataset_source: str | None = None,
) -> RegisteredVersion:
    """Log a patch with its report as a LoggedModel and register it as a new model version.

    Args:
        patch_path: the patch JSON.
        report_path: its validation report JSON (hashes must match the patch, model and SAE).
        sae_path: the SAE folder, when the patch's recorded location is not where it lives now.
        classes: class names for the pyfunc; default: those the report measured.
        tracking_uri: MLflow tracking URI; default: see `resolve_store`.
        dataset_source: where the held-out data lives (folder or URI), recorded as the source of the
            MLflow dataset the metrics are linked to; None records `steerpatch-dataset:<fingerprint>`.

    Returns:
        The new `RegisteredVersion`.

    Raises:
        RegistryError: if the report belongs to another patch, the patch's name@version is already
            registered with other content (bump the version), or the store refuses the registration
            (nothing is left behind).
        IntegrityError: if the report's numbers do not follow from its own counts.
        PatchError, SAEError: for an invalid patch or a missing SAE.

    Example:
        >>> v = register_patch("water.json", "out/report.json")  # doctest: +SKIP
        >>> v.model_uri
        'models:/concept-clip.water-shortcut/1'
    """
    store = resolve_store(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="steerpatch-bundle-") as tmp:
        built = bundle_mod.build_bundle(
            Path(tmp) / "model", patch_path, report_path, sae_path=sae_path, classes=classes
        )
        patch, report = built.patch, built.report
        name = registered_name(patch.model.id, patch.name)
        c = client(store)
        logged_model_id: str | None = None
        created_model = False
        version: str | None = None
        from steerpatch.io import sha256_file

        report_sha256 = sha256_file(built.path / bundle_mod.REPORT_JSON)
        with store_lock(store):
            existing = None
            if with_retry(lambda: _model_exists(c, name), what=f"read {name}"):
                existing = existing_registration(c, name, patch, report_sha256)
            if existing is not None:
                return RegisteredVersion(
                    name=name, version=existing, model_uri=f"models:/{name}/{existing}",
                    logged_model_id=str(c.get_model_version(name, existing).tags.get(TAG + "logged_model_id", "")),
                    patch_ref=patch.ref, patch_hash=patch.content_hash, verdict=str(report.get("verdict")),
                    existing=True,
                )
            try:
                exp = with_retry(lambda: experiment_id(c, store), what="find the steerpatch experiment")
                logged = with_retry(
                    lambda: c.create_logged_model(
                        exp, name=patch.name, model_type="steerpatch", tags={TAG + "patch_ref": patch.ref}
                    ),
                    what="create the logged model",
                )
                logged_model_id = logged.model_id
                with_retry(
                    lambda: c.log_model_artifacts(logged.model_id, str(built.path)), what="upload the model"
                )
                tags = version_tags(
                    patch, report, manifest_sha256=built.manifest_sha256, logged_model_id=logged.model_id,
                    report_sha256=report_sha256,
                )
                with_retry(
                    lambda: c.set_logged_model_tags(logged.model_id, tags), what="tag the logged model"
                )
                _log_report_metrics(c, exp, logged.model_id, patch, report, dataset_source)
                with_retry(
                    lambda: c.finalize_logged_model(logged.model_id, "READY"),
                    what="finalize the logged model",
                )
                created_model = with_retry(
                    lambda: _ensure_registered_model(c, name, patch), what="create the model"
                )
                if patch.parent:
                    parent_version = find_version_by_patch_ref(c, name, patch.parent)
                    tags[TAG + "parent_version"] = parent_version or ""
                with mlflow_uris(store):
                    mv = with_retry(
                        lambda: c.create_model_version(
                            name,
                            source=f"models:/{logged.model_id}",
                            tags=tags,
                            description=patch.rationale,
                            model_id=logged.model_id,
                        ),
                        what="create the model version",
                    )
                version = str(mv.version)
                _check_stored(c, store, name, version)
            except BaseException as error:
                _cleanup(c, name, created_model, logged_model_id)
                if isinstance(error, Exception) and not isinstance(error, SteerpatchError):
                    raise RegistryError(
                        f"registering {patch.ref} as '{name}' failed and was rolled back: {error}"
                    ) from error
                raise
    return RegisteredVersion(
        name=name,
        version=version,
        model_uri=f"models:/{name}/{version}",
        logged_model_id=logged_model_id,
        patch_ref=patch.ref,
        patch_hash=patch.content_hash,
        verdict=str(report.get("verdict")),
    )
