"""The `steerpatch` MLflow flavor: a steering patch with its SAE, validation report and SHA-256 manifest.

This module follows the contract of `mlflow.onnx`: `FLAVOR_NAME`, `save_model`, `log_model`,
`load_model` and `_load_pyfunc`. Nothing is pickled: the model is JSON, safetensors and HTML, and the
pyfunc is rebuilt from them by this module (MLmodel names it as `loader_module`), so it loads with
`MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false` and without executing any code stored in the model.

    import mlflow_steerpatch
    info = mlflow_steerpatch.log_model("water.json", name="patch", report="out/report.json")
    model = mlflow.pyfunc.load_model(info.model_uri)
    probabilities = model.predict(pd.DataFrame({"image": [png_bytes]}))

Loaded from the registry (`models:/NAME/VERSION`, `models:/NAME@ALIAS`), the model is checked
against what the registry recorded at registration (the version's manifest hash, patch hash and
fingerprints), not only against its own MANIFEST.json, before anything is built from it. MLflow
itself imports the `loader_module` the stored MLmodel names before this module runs, and offers no
hook to check earlier; `load_verified_pyfunc("NAME@ALIAS")` checks everything, MLmodel included,
before MLflow reads the folder (see the README's Security section).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerpatch.registry.bundle import (
    CLASSES_FILE,
    FLAVOR_NAME,
    PATCH_FILE,
    REPORT_JSON,
    SAE_DIR,
    build_bundle,
    check_manifest,
)

__all__ = ["FLAVOR_NAME", "PatchModel", "load_model", "load_verified_pyfunc", "log_model", "save_model"]

# MLflow writes this file (model name and version) into a folder it downloaded by a models:/ URI
REGISTERED_MODEL_META = "registered_model_meta"


@dataclass
class PatchModel:
    """The native form of a steerpatch model.

    Attributes:
        path: the local model folder.
        patch: the `steerpatch.patch.Patch`.
        sae: the `steerpatch.sae.SAE` the patch edits.
        report: the `steerpatch.validate.report.ValidationReport` it was logged with.
        classes: the class names its pyfunc scores.
    """

    path: Path
    patch: Any
    sae: Any
    report: Any
    classes: list[str]


def _as_file(value: Any, folder: Path, filename: str) -> Path:
    """A path for a document given as a path or as a pydantic object (written as JSON)."""
    if isinstance(value, str | os.PathLike):
        return Path(value)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / filename
    if hasattr(value, "to_dict"):
        target.write_text(json.dumps(value.to_dict(), indent=2), encoding="utf-8")
    else:
        target.write_text(value.model_dump_json(indent=2), encoding="utf-8")
    return target


def save_model(
    patch: Any,
    path: str | os.PathLike[str],
    report: Any = None,
    sae: str | os.PathLike[str] | None = None,
    classes: list[str] | None = None,
    mlflow_model: Any = None,
    metadata: dict[str, Any] | None = None,
    **kwargs: Any,
) -> None:
    """Save a patch as a steerpatch MLflow model in a local folder.

    Args:
        patch: the patch file path or a `steerpatch.patch.Patch`.
        path: the folder to create (must not exist or be empty).
        report: its validation report: a JSON path or a `ValidationReport` (required; its hashes must match).
        sae: the SAE folder when the patch's recorded location is not where it lives now.
        classes: class names for the pyfunc; default: those the report measured.
        mlflow_model: the `mlflow.models.Model` to add the flavor to (MLflow passes one when logging).
        metadata: free-form metadata recorded in MLmodel.
        kwargs: accepted for MLflow's logging signature; unused.

    Raises:
        RegistryError: for a missing report or one computed for another patch.
    """
    from mlflow.models import Model

    from steerpatch.errors import RegistryError

    if report is None:
        raise RegistryError(
            "save_model needs report=…: the validation report of this patch (steerpatch validate --out)"
        )
    path = Path(path).resolve()
    if path.exists() and any(path.iterdir()):
        raise RegistryError(f"model folder '{path}' already exists and is not empty; choose a new path")
    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    if metadata is not None:
        mlflow_model.metadata = metadata
    with tempfile.TemporaryDirectory(prefix="steerpatch-save-") as tmp:
        patch_file = _as_file(patch, Path(tmp), "patch.json")
        report_file = _as_file(report, Path(tmp), "report.json")
        build_bundle(
            path,
            patch_file,
            report_file,
            sae_path=None if sae is None else Path(sae),
            classes=classes,
            mlflow_model=mlflow_model,
        )


def log_model(
    patch: Any,
    artifact_path: str | None = None,
    report: Any = None,
    sae: str | os.PathLike[str] | None = None,
    classes: list[str] | None = None,
    registered_model_name: str | None = None,
    metadata: dict[str, Any] | None = None,
    name: str | None = None,
    tags: dict[str, Any] | None = None,
    model_id: str | None = None,
    **kwargs: Any,
) -> Any:
    """Log a patch as a steerpatch model (an MLflow LoggedModel) with the current tracking URI.

    For gated, audited registration with tags and cleanup use `steerpatch register`
    (`steerpatch.registry.register_patch`); this is the plain MLflow flavor API.

    Args:
        patch: the patch file path or a `steerpatch.patch.Patch`.
        artifact_path: deprecated MLflow alias of `name`.
        report: its validation report (path or object).
        sae: the SAE folder, if not at the patch's recorded location.
        classes: class names for the pyfunc.
        registered_model_name: also register a version under this name.
        metadata: free-form metadata recorded in MLmodel.
        name: the logged model's name.
        tags: tags for the logged model.
        model_id: log into an existing LoggedModel.
        kwargs: passed on to `mlflow.models.Model.log`.

    Returns:
        MLflow's `ModelInfo` for the logged model.
    """
    import sys

    from mlflow.models import Model

    return Model.log(
        artifact_path=artifact_path,
        name=name,
        flavor=sys.modules[__name__],
        patch=patch,
        report=report,
        sae=sae,
        classes=classes,
        registered_model_name=registered_model_name,
        metadata=metadata,
        tags=tags,
        model_id=model_id,
        **kwargs,
    )


def _check_against_registry(path: Path) -> bool:
    """Check a folder MLflow downloaded by a models:/ URI against the registry's record of that version.

    Returns:
        True when it was checked (the folder came from the registry), False for other URIs.

    Raises:
        IntegrityError: naming the version, the file and what differs.
    """
    import mlflow
    import yaml

    from steerpatch.errors import IntegrityError
    from steerpatch.registry.integrity import verify_patch_folder

    meta_file = path / REGISTERED_MODEL_META
    if not meta_file.is_file():
        return False
    try:
        meta = yaml.safe_load(meta_file.read_text(encoding="utf-8"))
        name, version = str(meta["model_name"]), meta["model_version"]
    except (yaml.YAMLError, KeyError, TypeError, UnicodeDecodeError):
        raise IntegrityError(f"steerpatch model '{path}': '{REGISTERED_MODEL_META}' is unreadable") from None
    if version is None or str(version) in ("", "None"):
        return False  # a logged model (models:/<model-id>), not a registered version: no record to check against
    version = str(version)
    mv = mlflow.MlflowClient().get_model_version(name, version)
    verify_patch_folder(path, mv, f"{name}@{version}")
    return True


def _load_local(path: Path) -> PatchModel:
    from steerpatch.patch import load_patch
    from steerpatch.sae import load_sae
    from steerpatch.validate.report import load_report

    if not _check_against_registry(path):
        # not from the registry (runs:/, a local folder): only the model's own manifest can be checked
        check_manifest(path, what=f"steerpatch model '{path}'")
    classes = json.loads((path / CLASSES_FILE).read_text(encoding="utf-8"))["classes"]
    return PatchModel(
        path=path,
        patch=load_patch(path / PATCH_FILE),
        sae=load_sae(path / SAE_DIR),
        report=load_report(path / REPORT_JSON),
        classes=list(classes),
    )


def load_model(model_uri: str, dst_path: str | None = None) -> PatchModel:
    """Load a steerpatch model from any MLflow URI (local path, `runs:/`, `models:/`, …).

    The manifest is checked first: a model whose files changed since logging is refused.

    Args:
        model_uri: where the model is.
        dst_path: local folder to download into (must exist); default a temporary one.

    Returns:
        The `PatchModel`.

    Raises:
        IntegrityError: when a file does not match the manifest.
    """
    from mlflow.tracking.artifact_utils import _download_artifact_from_uri
    from mlflow.utils.model_utils import _get_flavor_configuration

    local = Path(_download_artifact_from_uri(artifact_uri=model_uri, output_path=dst_path))
    _get_flavor_configuration(model_path=str(local), flavor_name=FLAVOR_NAME)
    return _load_local(local)


def load_verified_pyfunc(ref: str, tracking_uri: str | None = None) -> Any:
    """Load a registered patch as a pyfunc, checking everything before MLflow reads the folder.

    `mlflow.pyfunc.load_model("models:/…")` imports the loader the stored MLmodel names before any
    steerpatch code can run; this fetches the version, checks every file, the manifest and MLmodel
    against the registry's record (`steerpatch.registry.resolve_patch_ref`), and only then hands the
    verified local folder to MLflow.

    Args:
        ref: `NAME@VERSION` or `NAME@ALIAS` (or `models:/NAME/VERSION`, `models:/NAME@ALIAS`).
        tracking_uri: MLflow tracking URI; default: see `steerpatch.registry.resolve_store`.

    Returns:
        The `mlflow.pyfunc.PyFuncModel`.

    Raises:
        IntegrityError: (exit 1) naming the version, the file and what differs.

    Example:
        >>> model = load_verified_pyfunc("concept-clip.water-shortcut@production")  # doctest: +SKIP
    """
    import mlflow.pyfunc

    from steerpatch.refs import ref_of_model_uri
    from steerpatch.registry import resolve_patch_ref

    ref = ref_of_model_uri(ref) or ref  # an unresolvable models:/ URI is refused below, naming it
    _, folder = resolve_patch_ref(ref, tracking_uri=tracking_uri)
    return mlflow.pyfunc.load_model(str(folder))


def _load_pyfunc(path: str) -> Any:
    """Build the pyfunc from a local model folder (called by `mlflow.pyfunc.load_model`)."""
    from mlflow_steerpatch.pyfunc import SteeredClassifier

    folder = Path(path)
    if not (folder / PATCH_FILE).is_file() and (folder.parent / PATCH_FILE).is_file():
        folder = folder.parent
    return SteeredClassifier(_load_local(folder))
