"""Atomic writes honour the umask and refuse special files."""

from __future__ import annotations

import os
import stat

import pytest

from steerpatch.errors import SteerpatchError
from steerpatch.io import atomic_dir, atomic_file, atomic_write_text, refuse_special_file, sha256_file


@pytest.fixture()
def umask():
    """Set the process umask for one test and restore it."""
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)]
)
def test_artifacts_get_the_mode_the_umask_gives(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    text = atomic_write_text(tmp_path / "a.json", "{}")
    with atomic_file(tmp_path / "b.onnx") as tmp:
        tmp.write_bytes(b"x")
    with atomic_dir(tmp_path / "report") as folder:
        (folder / "report.json").write_text("{}")
    assert stat.S_IMODE(text.stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "b.onnx").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "report").stat().st_mode) == dir_mode
    # still atomic: nothing but the destinations is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.onnx", "report"]


def test_special_files_are_refused_and_regular_ones_pass(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(SteerpatchError, match=r"'.*pipe' is a FIFO, not a regular file") as info:
        sha256_file(fifo)
    assert info.value.exit_code == 2
    with pytest.raises(SteerpatchError, match="is a device"):
        refuse_special_file("/dev/null")
    (tmp_path / "ok.txt").write_text("x")
    refuse_special_file(tmp_path / "ok.txt")
    refuse_special_file(tmp_path / "missing")  # left to the caller to report
    refuse_special_file(tmp_path / "ok.txt", entries=True)
    with pytest.raises(SteerpatchError, match="pipe' is a FIFO"):
        refuse_special_file(tmp_path, entries=True)
