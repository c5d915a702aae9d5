"""Registered patch and graph versions for the serving tests: a patch version with a built report, and
where the store keeps a version's files."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from tests.helpers.tiny import CLASSES


def register_patch_version(patch, tiny, sae, folder: Path, store: str):
    """Register `patch` as a patch version, with a report built as `steerpatch validate` builds one."""
    import hashlib

    import numpy as np

    from steerpatch.io import atomic_write_text
    from steerpatch.patch import save_patch
    from steerpatch.registry import register_patch
    from steerpatch.validate.metrics import ImageResults
    from steerpatch.validate.policy import Policy
    from steerpatch.validate.report import build_report

    n = 30
    labels = np.arange(n) % len(CLASSES)
    probs = np.full((n, len(CLASSES)), 1 / len(CLASSES))
    results = ImageResults(ids=[f"{i}.png" for i in range(n)], labels=labels, pred_before=labels, pred_after=labels,
                           probs_before=probs, probs_after=probs, cos=np.full(n, 0.99), classes=CLASSES)
    hashes = {"patch": patch.content_hash, "model": tiny.fingerprint, "sae": sae.fingerprint,
              "dataset": hashlib.sha256(b"d").hexdigest()}
    report = build_report(results, patch_ref=patch.ref, hashes=hashes, policy=Policy())
    folder.mkdir(parents=True, exist_ok=True)
    report_path = atomic_write_text(folder / "report.json", report.model_dump_json(indent=2))
    atomic_write_text(folder / "report.html", "<html></html>")
    return register_patch(save_patch(patch, folder / "patch.json"), report_path, tracking_uri=store)


def stored_folder(store: str, name: str, version: str) -> Path:
    import mlflow

    uri = mlflow.MlflowClient(store, store).get_model_version_download_uri(name, version)
    return Path(unquote(urlparse(uri).path))
