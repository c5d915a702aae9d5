from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    """A 96-image balanced test world (two full blocks of shape x background x watermark)."""
    from steerpatch.world import write_world

    root = tmp_path_factory.mktemp("small-world") / "test"
    write_world(root, split="test", n=96, seed=0, progress=False)
    return root
