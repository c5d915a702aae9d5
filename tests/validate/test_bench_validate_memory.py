"""The memory benchmark's own measuring helpers: a child's peak RSS, and the generated photos."""

from __future__ import annotations

import json
import sys

import bench_validate_memory
import pytest


def test_peak_rss_is_the_childs_own():
    # a large parent must not leak its own resident size into the child's peak (fork keeps the high-water mark)
    ballast = bytearray(400 << 20)
    ballast[::4096] = b"x" * len(ballast[::4096])
    small, _ = bench_validate_memory.measure_child([sys.executable, "-c", "b = bytearray(8 << 20); b[::4096] = b'x' * len(b[::4096])"])
    big, _ = bench_validate_memory.measure_child([sys.executable, "-c", "b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096])"])
    assert big - small == pytest.approx(192, abs=24)  # MB: each child measured alone, not the max over children


def test_a_failing_child_stops_the_benchmark():
    with pytest.raises(SystemExit, match="exited 2"):
        bench_validate_memory.measure_child([sys.executable, "-c", "import sys; sys.exit(2)"])


def test_photos_are_1024x768_jpegs_with_a_manifest(tmp_path):
    from PIL import Image

    from steerpatch.data import load_dataset

    rows = bench_validate_memory.make_photos(tmp_path / "photos", 3, 1)
    small = bench_validate_memory.subset(tmp_path / "photos", rows[:2], tmp_path / "small")
    data = load_dataset(small)
    assert len(data) == 2 and [json.loads(r)["path"] for r in rows[:2]] == [i.id for i in data.items]
    with Image.open(data.items[0].path) as image:
        assert (image.format, image.size) == ("JPEG", (1024, 768))
