"""Fixtures for the serve tests: a compiled tiny graph and a real uvicorn server on a loopback port."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.serve import MAX_BODY, MAX_PIXELS
from tests.helpers.tiny import CLASSES, make_patch, random_sae, tiny_model


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    # small models on a shared 2-core machine: one thread avoids spin-wait contention
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="session")
def tiny(workdir):
    return tiny_model(workdir)


@pytest.fixture(scope="session")
def sae(tiny, workdir):
    return random_sae("standard", tiny.model.visual.transformer.width, workdir)


@pytest.fixture(scope="session")
def graph(tiny, sae, workdir):
    """(patch, compiled graph file) with the zero-shot head."""
    from steerpatch.compile import compile_patch

    patch = make_patch(tiny, sae, name="served-fix")
    path = workdir / "served.onnx"
    compile_patch(patch, model=tiny, sae=sae, classes=CLASSES, out=path)
    return patch, path


@pytest.fixture(scope="session")
def candidate(tiny, sae, workdir):
    """A second compiled patch (strong edits, so it disagrees with the first on some inputs)."""
    from steerpatch.compile import compile_patch

    patch = make_patch(tiny, sae, name="candidate-fix", edits=["3:scale:0", "7:add:1.5", "17:add:-1.5"])
    path = workdir / "candidate.onnx"
    compile_patch(patch, model=tiny, sae=sae, classes=CLASSES, out=path, progress=False)
    return patch, path


@pytest.fixture(scope="session")
def multi(tiny, sae, graph, candidate, workdir):
    """One graph holding the `graph` patch (patch_index 1) and the candidate (2)."""
    from steerpatch.compile import compile_patch

    path = workdir / "multi-serve.onnx"
    compile_patch([graph[0], candidate[0]], model=tiny, sae=sae, classes=CLASSES, out=path, progress=False)
    return path


@pytest.fixture(scope="module")
def server(graph):
    from steerpatch.serve import ServerThread, create_app

    with ServerThread(create_app(graph[1], max_pixels=MAX_PIXELS, max_body_bytes=MAX_BODY)) as running:
        yield running


@pytest.fixture()
def client(server):
    import httpx

    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http
