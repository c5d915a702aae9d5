"""Where the registry lives: explicit sqlite store and artifact root, never the current directory."""

from __future__ import annotations

from pathlib import Path

import pytest

import steerpatch
from steerpatch.errors import RegistryError
from steerpatch.registry import default_registry_dir, resolve_store, resolve_tracking
from steerpatch.registry.store import store_dir_in


def test_default_store_is_under_the_registry_dir_not_the_cwd(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("STEERPATCH_REGISTRY_DIR", str(tmp_path / "reg"))
    monkeypatch.chdir(tmp_path)
    tracking, registry, artifacts = resolve_tracking()
    assert tracking == f"sqlite:///{tmp_path / 'reg' / 'mlflow.db'}"
    assert registry == tracking
    assert artifacts == (tmp_path / "reg" / "artifacts").as_uri()
    assert resolve_store().lock_path == tmp_path / "reg" / ".lock"
    assert not any(p.name in ("mlruns", "mlflow.db") for p in Path(tmp_path).iterdir())


def test_checkout_default_is_the_ignored_state_folder_not_the_committed_one(monkeypatch):
    monkeypatch.delenv("STEERPATCH_REGISTRY_DIR", raising=False)
    repo = Path(steerpatch.__file__).resolve().parents[1]
    assert default_registry_dir() == store_dir_in(repo)
    assert store_dir_in(repo) in (repo / ".steerpatch" / "registry", repo / "registry")


def test_store_folder_of_a_checkout_an_older_checkout_and_an_install(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "registry").mkdir(parents=True)  # the committed folder: policy, schema, vetted patches
    (checkout / "pyproject.toml").write_text("[project]\n")
    assert store_dir_in(checkout) == checkout / ".steerpatch" / "registry"
    (checkout / "registry" / "mlflow.db").write_bytes(b"")  # a store made before the default moved
    assert store_dir_in(checkout) == checkout / "registry"
    assert store_dir_in(tmp_path / "site-packages") == Path.home() / ".steerpatch" / "registry"


def test_environment_uri_wins_over_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'env.db'}")
    store = resolve_store()
    assert store.tracking_uri == f"sqlite:///{tmp_path / 'env.db'}"
    assert store.artifact_root == (tmp_path / "artifacts").as_uri()
    explicit = resolve_store(f"sqlite:///{tmp_path / 'x' / 'given.db'}")
    assert explicit.tracking_uri.endswith("/x/given.db")


def test_server_uri_has_no_local_lock_or_artifact_root():
    store = resolve_store("http://127.0.0.1:5000")
    assert store.lock_path is None and store.artifact_root is None


@pytest.mark.parametrize("uri", ["mlruns", "file:///tmp/mlruns", "./somewhere"])
def test_plain_folders_are_refused(uri):
    with pytest.raises(RegistryError, match="plain folder"):
        resolve_store(uri)
