"""The on-disk MLflow model of a patch, and its SHA-256 manifest.

A patch model folder holds::

    MLmodel                 flavor "steerpatch" + pyfunc (loader module `mlflow_steerpatch`)
    patch.json              the patch document, byte for byte as given
    sae/cfg.json            the SAE it edits, in SAELens format (safetensors, never pickle)
    sae/sae_weights.safetensors
    sae/reference.json      the SAE fingerprint, architecture, original location and edited latents
    report.json             the validation report the patch was registered with
    report.html
    classes.json            the class names (and prompt templates) the pyfunc scores
    requirements.txt, python_env.yaml
    MANIFEST.json           sha256 of every other file

`MANIFEST.json` is written last and its own hash is recorded as a model-version tag, so a changed
manifest is caught as surely as a changed weight file.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steerpatch.errors import IntegrityError, RegistryError
from steerpatch.io import atomic_write_text, sha256_file

FLAVOR_NAME = "steerpatch"
LOADER_MODULE = "mlflow_steerpatch"
MANIFEST = "MANIFEST.json"
PATCH_FILE = "patch.json"
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
CLASSES_FILE = "classes.json"
SAE_DIR = "sae"
SAE_REFERENCE = "sae/reference.json"
BUNDLE_FORMAT = 1
# files MLflow itself drops into a model folder when it is downloaded by a models:/ URI
MLFLOW_DOWNLOAD_FILES = frozenset({"registered_model_meta"})


@dataclass(frozen=True)
class Bundle:
    """What `build_bundle` wrote.

    Attributes:
        path: the model folder.
        patch: the loaded `steerpatch.patch.Patch`.
        report: the report as JSON-ready values.
        manifest_sha256: SHA-256 of MANIFEST.json.
    """

    path: Path
    patch: Any
    report: dict[str, Any]
    manifest_sha256: str


def report_dict(report: Any) -> dict[str, Any]:
    """A validation report (pydantic model or mapping) as JSON-ready values."""
    if hasattr(report, "model_dump"):
        return report.model_dump(mode="json")
    return dict(report)


def check_report_matches(patch: Any, report: dict[str, Any], *, report_path: str | Path = "report") -> None:
    """Refuse a report that was computed for another patch, model or SAE.

    Raises:
        RegistryError: naming each hash that differs, with both values.
    """
    hashes = report.get("hashes") or {}
    expected = {"patch": patch.content_hash, "model": patch.model.fingerprint, "sae": patch.sae.fingerprint}
    problems = [
        f"hashes.{key} is {hashes.get(key)!r} but the patch has {value!r}"
        for key, value in expected.items()
        if hashes.get(key) != value
    ]
    if problems:
        raise RegistryError(
            f"report '{report_path}' was not computed for patch {patch.ref}; "
            f"re-run `steerpatch validate` on this patch and register with the new report",
            problems,
        )


def check_report_consistent(patch: Any, report: Any, *, report_path: str | Path = "report") -> None:
    """Refuse a report whose numbers do not follow from its own counts, or that names another patch.

    Raises:
        IntegrityError: (exit 1) listing every contradiction (see `steerpatch.registry.evidence`).
    """
    from steerpatch.registry.evidence import consistency_problems

    problems = consistency_problems(report, patch)
    if problems:
        raise IntegrityError(
            f"report '{report_path}' for {patch.ref} contradicts itself ({problems[0]}); it was edited "
            "after `steerpatch validate` wrote it: re-run validation",
            problems[1:],
        )


def classes_from_report(report: dict[str, Any]) -> list[str] | None:
    """The class names a report measured, when it records them."""
    if isinstance(report.get("classes"), list) and report["classes"]:
        return [str(c) for c in report["classes"]]
    per_class = report.get("per_class") or report.get("classes_accuracy")
    if isinstance(per_class, dict) and per_class:
        return sorted(per_class)
    return None


def _html_beside(report_path: Path) -> Path | None:
    for candidate in (report_path.with_suffix(".html"), report_path.parent / REPORT_HTML):
        if candidate.is_file():
            return candidate
    return None


def _resolve_sae(patch: Any, sae_path: str | Path | None) -> Any:
    """The patch's SAE, found by `load_patch_sae`; a bundle never carries another one, whatever was passed."""
    from steerpatch.errors import SAEError
    from steerpatch.steer.sae_lookup import load_patch_sae

    sae = load_patch_sae(patch, path=sae_path)
    if sae.fingerprint != patch.sae.fingerprint:
        raise SAEError(
            f"SAE '{sae_path}' has fingerprint {sae.fingerprint} but patch {patch.ref} was made for "
            f"{patch.sae.fingerprint}; pass the SAE the patch was made with"
        )
    return sae


def write_mlmodel(path: Path, *, patch_hash: str, mlflow_model: Any = None) -> Any:
    """Write MLmodel (the steerpatch flavor plus a pyfunc entry, no pickled object) and the env files.

    Args:
        path: the model folder.
        patch_hash: the patch content hash, recorded in the flavor config.
        mlflow_model: an `mlflow.models.Model` to add the flavors to (as `Model.log` passes one).

    Returns:
        The `mlflow.models.Model` written.
    """
    from mlflow import pyfunc
    from mlflow.models import Model, ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec
    from mlflow.utils.environment import _PythonEnv

    import steerpatch

    mlflow_model = mlflow_model if mlflow_model is not None else Model()
    if mlflow_model.signature is None:
        # inputs stay free-form (a DataFrame of images or a pixel tensor); the one parameter is declared
        # because MLflow drops undeclared params
        mlflow_model.signature = ModelSignature(params=ParamSchema([ParamSpec("steered", "boolean", True)]))
    pyfunc.add_to_model(mlflow_model, loader_module=LOADER_MODULE, data=".", python_env="python_env.yaml")
    mlflow_model.add_flavor(
        FLAVOR_NAME,
        steerpatch_version=steerpatch.__version__,
        bundle_format=BUNDLE_FORMAT,
        patch=PATCH_FILE,
        sae=SAE_DIR,
        report=REPORT_JSON,
        classes=CLASSES_FILE,
        manifest=MANIFEST,
        patch_hash=patch_hash,
    )
    mlflow_model.save(str(path / "MLmodel"))
    atomic_write_text(path / "requirements.txt", f"steerpatch=={steerpatch.__version__}\n")
    _PythonEnv(python=".".join(map(str, sys.version_info[:3])), dependencies=["-r requirements.txt"]).to_yaml(
        str(path / "python_env.yaml")
    )
    return mlflow_model


def build_bundle(
    dest: str | Path,
    patch_path: str | Path,
    report_path: str | Path,
    *,
    sae_path: str | Path | None = None,
    classes: list[str] | None = None,
    mlflow_model: Any = None,
) -> Bundle:
    """Write a complete patch model folder (see the module docstring) into an empty `dest`.

    Args:
        dest: folder to write; created, must be empty.
        patch_path: the patch JSON file.
        report_path: the validation report JSON (its HTML twin is taken from beside it, or rendered).
        sae_path: the SAE folder; default: the patch's own SAE, found by `load_patch_sae`.
        classes: class names for the pyfunc; default: those the report measured.
        mlflow_model: an `mlflow.models.Model` to write the flavors into (see `write_mlmodel`).

    Returns:
        The written `Bundle`.

    Raises:
        RegistryError: if the report does not belong to the patch, or no class names are known.
        PatchError, SAEError: for an invalid patch or a missing/mismatched SAE.
    """
    from steerpatch.patch import load_patch
    from steerpatch.sae import save_sae
    from steerpatch.validate.report import load_report, write_report

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise RegistryError(f"model folder '{dest}' is not empty; choose a new folder")
    patch_path, report_path = Path(patch_path), Path(report_path)
    patch = load_patch(patch_path)
    report_obj = load_report(report_path)
    report = report_dict(report_obj)
    check_report_matches(patch, report, report_path=report_path)
    check_report_consistent(patch, report_obj, report_path=report_path)
    classes = classes or classes_from_report(report)
    if not classes:
        raise RegistryError(
            f"report '{report_path}' does not list the class names; pass them explicitly (classes=[...])"
        )
    sae = _resolve_sae(patch, sae_path)

    shutil.copyfile(patch_path, dest / PATCH_FILE)
    save_sae(sae, dest / SAE_DIR)
    atomic_write_text(
        dest / SAE_REFERENCE,
        json.dumps(
            {
                "format_version": 1,
                "fingerprint": sae.fingerprint,
                "architecture": sae.architecture,
                "location": patch.sae.location,
                "d_in": sae.d_in,
                "d_sae": sae.d_sae,
                "weights": "full",
                "edited_latents": sorted(e.latent for e in patch.edits),
            },
            indent=2,
        ),
    )
    shutil.copyfile(report_path, dest / REPORT_JSON)
    html = _html_beside(report_path)
    if html is not None:
        shutil.copyfile(html, dest / REPORT_HTML)
    else:
        tmp = dest / ".report"
        _, html_path = write_report(report_obj, tmp)
        shutil.move(str(html_path), dest / REPORT_HTML)
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(dest / CLASSES_FILE, json.dumps({"format_version": 1, "classes": classes}, indent=2))
    write_mlmodel(dest, patch_hash=patch.content_hash, mlflow_model=mlflow_model)
    manifest_sha = write_manifest(dest)
    return Bundle(dest, patch, report, manifest_sha)


def _files(root: Path) -> list[str]:
    names = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(n for n in names if n != MANIFEST and n not in MLFLOW_DOWNLOAD_FILES)


def write_manifest(root: str | Path) -> str:
    """Hash every file under `root` into MANIFEST.json.

    Returns:
        The SHA-256 of the manifest file itself.
    """
    root = Path(root)
    files = {name: sha256_file(root / name) for name in _files(root)}
    atomic_write_text(
        root / MANIFEST, json.dumps({"format_version": 1, "algorithm": "sha256", "files": files}, indent=2)
    )
    return sha256_file(root / MANIFEST)


def check_manifest(root: str | Path, *, manifest_sha256: str | None = None, what: str = "model") -> int:
    """Recompute every file hash under `root` against MANIFEST.json.

    Args:
        root: the downloaded model folder.
        manifest_sha256: the manifest's recorded hash (a version tag); checked first when given.
        what: how to name the model in messages, e.g. "concept-clip.water@3".

    Returns:
        The number of files checked.

    Raises:
        IntegrityError: naming every file that changed, went missing or appeared.
    """
    root = Path(root)
    manifest_file = root / MANIFEST
    if not manifest_file.is_file():
        raise IntegrityError(f"{what} has no {MANIFEST}; it was not written by steerpatch or was stripped")
    problems: list[str] = []
    if manifest_sha256 is not None and sha256_file(manifest_file) != manifest_sha256:
        problems.append(f"{MANIFEST}: changed (sha256 differs from the hash recorded at registration)")
    try:
        recorded: dict[str, str] = json.loads(manifest_file.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(
            f"{what}: artifact '{MANIFEST}' is not a valid manifest; the stored model was changed after registration"
        ) from None
    present = set(_files(root))
    for name, digest in sorted(recorded.items()):
        if name not in present:
            problems.append(f"{name}: missing")
        elif sha256_file(root / name) != digest:
            problems.append(f"{name}: changed (sha256 differs from {MANIFEST})")
    problems.extend(
        f"{name}: not in {MANIFEST} (added after registration)" for name in sorted(present - set(recorded))
    )
    if problems:
        # the file's name is everything before the last ": " (a name may itself hold a colon)
        first = problems[0].rsplit(": ", 1)[0]
        raise IntegrityError(f"{what}: artifact '{first}' does not match its recorded hash", problems)
    return len(recorded)
