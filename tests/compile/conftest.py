"""Fixtures for the compile tests (builders in tests/helpers/tiny.py, shared with the serve and registry tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiny import CLASSES, architectures, make_patch, random_sae, tiny_model


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("compile")


@pytest.fixture(scope="session")
def tiny(workdir):
    return tiny_model(workdir)


@pytest.fixture(scope="session")
def saes(tiny, workdir) -> dict:
    width = tiny.model.visual.transformer.width
    out = {name: random_sae(name, width, workdir) for name in architectures()}
    out["topk-rescaled"] = random_sae("topk", width, workdir, seed=1, rescale_acts_by_decoder_norm=True)
    return out


@pytest.fixture(scope="session")
def compiled(tiny, saes, workdir):
    """One compiled standard-SAE patch with the zero-shot head, written to a file."""
    from steerpatch.compile import compile_patch

    patch = make_patch(tiny, saes["standard"])
    result = compile_patch(patch, model=tiny, sae=saes["standard"], classes=CLASSES, out=workdir / "standard.onnx")
    return patch, result


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # small models on a shared 2-core machine: one thread avoids spin-wait contention (10x faster here)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
