"""Fixtures shared across the suite: real models, a generated held-out world, a CLI runner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# tests must never write into the repository's own registry store
os.environ["STEERPATCH_REGISTRY_DIR"] = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"steerpatch-test-registry-{os.getpid()}")


@pytest.fixture()
def runner():
    """A click CliRunner over the real `steerpatch` group."""
    from click.testing import CliRunner

    return CliRunner()


@pytest.fixture(scope="session")
def concept_model():
    """The embedded default model, loaded once."""
    from steerpatch.models import load_model

    return load_model("concept-clip")


@pytest.fixture(scope="session")
def vitb32():
    """A random-init real open_clip ViT-B-32 (deterministic seed)."""
    from steerpatch.models import load_model

    return load_model("ViT-B-32")


@pytest.fixture(scope="session")
def default_sae():
    """The SAE shipped for the embedded default model."""
    from steerpatch.sae import default_sae_path, load_sae

    return load_sae(default_sae_path())


@pytest.fixture(scope="session")
def test_world(tmp_path_factory) -> Path:
    """A generated, balanced held-out world (test split), written once per session."""
    from steerpatch.world import write_world

    root = tmp_path_factory.mktemp("world") / "test"
    write_world(root, split="test", n=600, seed=0)
    return root
