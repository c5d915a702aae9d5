"""Registry fixtures: a real small SAE, real patches and real validation reports in temp folders."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["circle", "square", "star"]
MODEL_FINGERPRINT = hashlib.sha256(b"registry-test-model").hexdigest()


@dataclass
class Candidate:
    patch: Path
    report: Path
    patch_obj: object


class Workspace:
    """Writes patches and matching reports for one SAE, as `steerpatch validate` would."""

    def __init__(
        self, root: Path, model_id: str = "concept-clip", model_fingerprint: str = MODEL_FINGERPRINT
    ):
        import torch

        from steerpatch.sae import SAE, SAEConfig, save_sae

        self.root = root
        self.model_id = model_id
        self.model_fingerprint = model_fingerprint
        gen = torch.Generator().manual_seed(0)
        cfg = SAEConfig(
            d_in=8, d_sae=16, architecture="standard", metadata={"block": 0, "token_scope": "all"}
        )
        tensors = {
            "W_enc": torch.randn(8, 16, generator=gen),
            "b_enc": torch.zeros(16),
            "W_dec": torch.randn(16, 8, generator=gen),
            "b_dec": torch.zeros(8),
        }
        self.sae_dir = save_sae(SAE(cfg, tensors), root / "sae")
        from steerpatch.sae import load_sae

        self.sae = load_sae(self.sae_dir)
        self.policy = root / "policy.toml"
        self.policy.write_text(
            "format_version = 1\n[gates]\nmax_right_to_wrong_rate = 0.02\nmin_cos_mean = 0.8\n"
        )

    def candidate(
        self,
        name: str = "water-shortcut",
        version: str = "1.0.0",
        *,
        parent: str | None = None,
        scale: float = 0.0,
        right_to_wrong: int = 0,
        report_hashes: dict | None = None,
    ) -> Candidate:
        from steerpatch.patch import Edit, HookRef, ModelRef, Patch, SAERef, save_patch

        patch = Patch.create(
            name=name,
            version=version,
            rationale=f"suppress the water latent ({version})",
            author="ada",
            parent=parent,
            model=ModelRef(id=self.model_id, fingerprint=self.model_fingerprint),
            sae=SAERef(location=str(self.sae_dir), fingerprint=self.sae.fingerprint, architecture="standard"),
            hook=HookRef(block=0),
            tokens="all",
            edits=[Edit(latent=3, op="scale", value=scale)],
        )
        folder = self.root / f"{name}-{version}"
        folder.mkdir(parents=True, exist_ok=True)
        patch_path = save_patch(patch, folder / "patch.json")
        report_path = self.write_report(patch, folder, right_to_wrong=right_to_wrong, report_hashes=report_hashes)
        return Candidate(patch_path, report_path, patch)

    def write_report(
        self, patch, folder: Path, *, right_to_wrong: int = 0, report_hashes: dict | None = None
    ) -> Path:
        """A report for `patch` as `steerpatch validate` would write it: 100 images, 10 wrong before
        that the patch fixes, `right_to_wrong` right ones it breaks."""
        from steerpatch.io import atomic_write_text
        from steerpatch.validate.metrics import ImageResults
        from steerpatch.validate.policy import load_policy
        from steerpatch.validate.report import build_report

        n = 100
        labels = np.arange(n) % len(CLASSES)
        before = labels.copy()
        before[:10] = (labels[:10] + 1) % len(CLASSES)  # 10 wrong before
        after = labels.copy()
        after[10 : 10 + right_to_wrong] = (labels[10 : 10 + right_to_wrong] + 1) % len(CLASSES)
        probs = np.full((n, len(CLASSES)), 1 / len(CLASSES))
        results = ImageResults(
            ids=[f"img{i}.png" for i in range(n)],
            labels=labels,
            pred_before=before,
            pred_after=after,
            probs_before=probs,
            probs_after=probs,
            cos=np.full(n, 0.95),
            classes=CLASSES,
            groups=["aligned" if i % 2 else "conflicting" for i in range(n)],
        )
        hashes = report_hashes or {
            "patch": patch.content_hash,
            "model": patch.model.fingerprint,
            "sae": patch.sae.fingerprint,
            "dataset": hashlib.sha256(b"world").hexdigest(),
        }
        report = build_report(
            results, patch_ref=patch.ref, hashes=hashes, policy=load_policy(self.policy), group_by="shortcut"
        )
        report_path = atomic_write_text(folder / "report.json", report.model_dump_json(indent=2))
        atomic_write_text(folder / "report.html", f"<html><body>{report.verdict}</body></html>")
        return report_path


@pytest.fixture()
def workspace(tmp_path) -> Workspace:
    return Workspace(tmp_path / "work")


@pytest.fixture(scope="session")
def _initialised_db(tmp_path_factory) -> Path:
    """An empty MLflow sqlite database with its schema created once (creating it takes ~8 s).

    `STEERPATCH_TEST_MLFLOW_DB` names a prebuilt empty store to copy instead: `tests/mutation.py` builds
    one per run, since every mutant's pytest session would otherwise pay the 8 s again.
    """
    from steerpatch.registry.store import client, resolve_store

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    prebuilt = os.environ.get("STEERPATCH_TEST_MLFLOW_DB")
    if prebuilt:
        shutil.copyfile(prebuilt, db)
        return db
    client(resolve_store(f"sqlite:///{db}"))
    return db


@pytest.fixture()
def store_uri(tmp_path, monkeypatch, _initialised_db) -> str:
    """A fresh sqlite store in a temp folder; MLFLOW_TRACKING_URI is cleared so only this URI counts."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "store").mkdir()
    shutil.copyfile(_initialised_db, tmp_path / "store" / "mlflow.db")
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


@pytest.fixture()
def two_versions(workspace, store_uri) -> Workspace:
    """The workspace with two versions registered in `store_uri`: v1 passes the policy, v2 (1.1.0, a child
    of v1) breaks 5 right answers."""
    from steerpatch.registry import register_patch

    good = workspace.candidate()
    bad = workspace.candidate(version="1.1.0", parent="water-shortcut@1.0.0", scale=0.5, right_to_wrong=5)
    register_patch(good.patch, good.report, tracking_uri=store_uri)
    register_patch(bad.patch, bad.report, tracking_uri=store_uri)
    return workspace


@pytest.fixture(scope="session")
def make_store(_initialised_db):
    """Builds `(uri, workspace)` in a folder: a copy of the empty store and a workspace beside it (for
    fixtures wider than one test, which cannot use `store_uri` and `workspace`)."""

    def make(root: Path) -> tuple[str, Workspace]:
        (root / "store").mkdir()
        shutil.copyfile(_initialised_db, root / "store" / "mlflow.db")
        return f"sqlite:///{root / 'store' / 'mlflow.db'}", Workspace(root / "work")

    return make


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory, make_store):
    """`(uri, workspace)`: one registered version promoted to production, for tests that damage and repair it."""
    from steerpatch.registry import promote, register_patch

    uri, workspace = make_store(tmp_path_factory.mktemp("shared"))
    good = workspace.candidate()
    register_patch(good.patch, good.report, tracking_uri=uri)
    promote("concept-clip.water-shortcut", 1, "production", policy=workspace.policy, tracking_uri=uri)
    return uri, workspace


@pytest.fixture(scope="module")
def _three_versions(tmp_path_factory, _initialised_db) -> tuple[Path, Path]:
    """`(database, policy)`: a store with three versions registered once per module by 'registrar' (v1
    passes, v2 breaks 5 right answers, v3 passes and names v1 as its parent) and the policy they were
    validated under.

    `STEERPATCH_TEST_STORE_CACHE` names a folder to build it in once and reuse: `tests/mutation.py` sets
    it, so each mutant's pytest session does not register the three versions again.
    """
    from steerpatch.registry import register_patch

    cache = os.environ.get("STEERPATCH_TEST_STORE_CACHE")
    root = Path(cache) / "three" if cache else tmp_path_factory.mktemp("three")
    db, policy, built = root / "store" / "mlflow.db", root / "work" / "policy.toml", root / "built"
    if built.is_file():
        return db, policy
    shutil.rmtree(root, ignore_errors=True)
    (root / "store").mkdir(parents=True)
    shutil.copyfile(_initialised_db, db)
    workspace = Workspace(root / "work")
    versions = (
        ("1.0.0", {}),
        ("1.1.0", {"scale": 0.5, "right_to_wrong": 5}),
        ("1.2.0", {"scale": 0.25, "parent": "water-shortcut@1.0.0"}),
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEERPATCH_USER", "registrar")
        for version, kwargs in versions:
            cand = workspace.candidate(version=version, **kwargs)
            register_patch(cand.patch, cand.report, tracking_uri=f"sqlite:///{db}")
    built.touch()
    return db, policy


@pytest.fixture()
def three(_three_versions, tmp_path, monkeypatch) -> tuple[str, Path]:
    """`(uri, policy)` over a private copy of the three-version store's database (its rows still point at
    the one artifact folder: read it, never change it); the acting user is 'grace'."""
    db, policy = _three_versions
    monkeypatch.setenv("STEERPATCH_USER", "grace")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    (tmp_path / "store").mkdir()
    shutil.copyfile(db, tmp_path / "store" / "mlflow.db")
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}", policy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_mlflow_server(root: Path, env: dict[str, str] | None = None):
    """A real `mlflow server` on loopback with its own sqlite store in `root`; yields its http URI."""
    import httpx

    port = free_port()
    log = open(root / "server.log", "wb")  # noqa: SIM115 - the server writes to it until teardown
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", **(env or {})},
        start_new_session=True,  # its own process group, so its workers stop with it
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{uri}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mlflow server did not become healthy within 90 s")
            time.sleep(0.2)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on loopback with its own sqlite store; yields its http URI."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri
