"""Eight processes registering versions of one model at once: eight consecutive versions, no lock errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from steerpatch.registry import resolve_store
from steerpatch.registry.store import client

SCRIPT = """
import sys
from steerpatch.registry import register_patch
v = register_patch(sys.argv[1], sys.argv[2], tracking_uri=sys.argv[3])
print(v.version, v.patch_ref)
"""


@pytest.mark.slow
def test_eight_concurrent_registrations(workspace, tmp_path):
    # a brand-new store: the processes also race to create its schema
    uri = f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"
    candidates = [workspace.candidate(version=f"1.0.{i}", scale=i / 10) for i in range(8)]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(c.patch), str(c.report), uri],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for c in candidates
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
        assert "database is locked" not in (out + err).lower()
    versions = sorted(int(out.split()[0]) for out, _ in outputs)
    assert versions == list(range(1, 9))
    c = client(resolve_store(uri))
    stored = c.search_model_versions("name = 'concept-clip.water-shortcut'")
    refs = sorted(v.tags["steerpatch.patch_ref"] for v in stored)
    assert refs == sorted(c.patch_obj.ref for c in candidates)
