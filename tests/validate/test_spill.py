"""The activation cache past its memory budget: shards on disk, checksums, atomic reuse, bad cache folders."""

from __future__ import annotations

import gc
import os
import shutil

import numpy as np
import pytest
import torch

from steerpatch.disk import check_cache_dir
from steerpatch.errors import OutputError
from steerpatch.validate import ActivationCache, Validator
from steerpatch.validate.shards import (
    CorruptShard,
    ShardedActivations,
    row_batches,
    write_shard,
)


@pytest.fixture()
def sharded(tmp_path):
    """A (23, 3, 4) tensor written as three uneven shards."""
    full = torch.arange(23 * 3 * 4, dtype=torch.float32).reshape(23, 3, 4)
    shards = [write_shard(tmp_path, k, full[a:b]) for k, (a, b) in enumerate([(0, 8), (8, 16), (16, 23)])]
    return full, ShardedActivations(tmp_path, shards, (23, 3, 4))


def test_sharded_activations_read_like_the_tensor(sharded):
    full, disk = sharded
    assert disk.shape == full.shape and len(disk) == 23
    assert torch.equal(disk[5:19], full[5:19]) and torch.equal(disk[:], full) and torch.equal(disk[-3:], full[-3:])
    assert torch.equal(disk[[22, 0, 9, 9, 15]], full[[22, 0, 9, 9, 15]])
    assert torch.equal(disk[7], full[7])
    for size in (5, 8, 30):
        assert [b.tolist() for b in row_batches(disk, size)] == [b.tolist() for b in full.split(size)]
        assert [b.tolist() for b in disk.split(size)] == [b.tolist() for b in full.split(size)]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
def test_a_damaged_shard_is_refused(sharded, damage):
    full, disk = sharded
    path = disk.folder / disk.shards[1].file
    data = path.read_bytes()
    if damage == "flip":
        path.write_bytes(data[:-5] + bytes([data[-5] ^ 1]) + data[-4:])
    elif damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.unlink()
    fresh = ShardedActivations(disk.folder, disk.shards, tuple(disk.shape))
    assert torch.equal(fresh[0:8], full[0:8])  # the intact shard still reads
    with pytest.raises(CorruptShard):
        fresh[10:12]


@pytest.fixture(scope="module")
def spilled(concept_model, concept_sae, small_world):
    """A validator whose cache budget is 0 bytes, so every activation goes to disk."""
    return Validator(concept_model, concept_sae, small_world, group_by="shortcut", progress=False, batch_size=8,
                     cache=ActivationCache(memory_budget=0))


def test_spilled_validation_matches_in_memory_exactly(spilled, concept_model, concept_sae, suppress_patch,
                                                      small_world):
    in_memory = Validator(concept_model, concept_sae, small_world, group_by="shortcut", progress=False,
                          batch_size=8)
    a = in_memory.validate(suppress_patch)
    b = spilled.validate(suppress_patch)
    cached = spilled.activations(spilled.dataset, suppress_patch.hook.block)
    assert isinstance(cached.hidden, ShardedActivations) and cached.memory_bytes == cached.features.numel() * 4
    assert in_memory.activations(in_memory.dataset, 2).in_memory
    keep = {"engine", "duration_s", "created_at", "started_at"}
    da = {k: v for k, v in a.model_dump(mode="json").items() if k not in keep}
    db = {k: v for k, v in b.model_dump(mode="json").items() if k not in keep}
    assert da == db
    results_a = in_memory._score(suppress_patch, in_memory.dataset, in_memory.activations(in_memory.dataset, 2))
    results_b = spilled._score(suppress_patch, spilled.dataset, cached)
    assert np.array_equal(results_a.probs_after, results_b.probs_after) and np.array_equal(results_a.cos, results_b.cos)


def test_a_temporary_spill_folder_is_removed_with_its_entry(concept_model, small_world, tmp_path):
    from steerpatch.data import load_dataset

    cache = ActivationCache(memory_budget=0, spill_dir=tmp_path)
    entry = cache.get(concept_model, load_dataset(small_world), 2, progress=False, batch_size=8)
    folder = entry.hidden.folder
    assert folder.parent == tmp_path and any(folder.glob("hidden-*.safetensors"))
    del entry, cache
    gc.collect()
    assert not folder.exists()


def test_spilled_entries_are_reused_by_a_new_process_and_checked(tmp_path, concept_model, small_world):
    from steerpatch.data import load_dataset

    data = load_dataset(small_world)
    first = ActivationCache(tmp_path, memory_budget=0)
    a = first.get(concept_model, data, 2, progress=False, batch_size=8)
    assert not a.in_memory and a.hidden.folder.parent == tmp_path
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # the temporary folder was renamed into place
    second = ActivationCache(tmp_path, memory_budget=0)
    b = second.get(concept_model, data, 2, progress=False)
    big = ActivationCache(tmp_path)  # the same entry fits this budget: read into memory
    c = big.get(concept_model, data, 2, progress=False)
    assert (first.misses, second.misses, big.misses) == (1, 0, 0) and c.in_memory
    assert a.ids == b.ids == c.ids and torch.equal(b.hidden[:], c.hidden) and torch.equal(a.features, c.features)

    shard = sorted(a.hidden.folder.glob("hidden-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated: detected, recomputed, rewritten
    third = ActivationCache(tmp_path)
    d = third.get(concept_model, data, 2, progress=False)
    assert (third.corrupt, third.misses) == (1, 1) and torch.equal(d.hidden, c.hidden)
    fourth = ActivationCache(tmp_path)
    fourth.get(concept_model, data, 2, progress=False)
    assert (fourth.corrupt, fourth.misses) == (0, 0)


@pytest.fixture()
def unwritable(tmp_path):
    """A folder this process cannot create files in (root ignores permission bits, so it gets sysfs)."""
    if os.geteuid() == 0:
        yield "/sys/steerpatch-cache"
        return
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    yield str(folder)
    folder.chmod(0o700)


def test_an_unwritable_cache_folder_is_one_line_before_any_work(unwritable, runner, tmp_path, small_world):
    from steerpatch.cli.main import cli

    with pytest.raises(OutputError, match="cannot be written"):
        ActivationCache(unwritable)
    # the patch does not even exist: the cache folder is refused before the patch, model or images are read
    result = runner.invoke(cli, ["validate", str(tmp_path / "missing.json"), "--data", str(small_world),
                                 "--cache-dir", unwritable, "--quiet"])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: cache folder") and result.stderr.count("\n") == 1, result.stderr


def test_a_cache_folder_without_the_space_needed_is_refused(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    assert check_cache_dir(tmp_path, needed_bytes=1) == tmp_path
    with pytest.raises(OutputError, match=r"MiB free but needs .*--cache-memory"):
        check_cache_dir(tmp_path, needed_bytes=free + (1 << 40))


def test_cache_memory_takes_sizes_and_refuses_nonsense(runner, patch_file, small_world):
    from steerpatch.cli.main import cli
    from steerpatch.disk import parse_size

    assert [parse_size(t) for t in ("0", "512MiB", "2GB", "1.5g", "64 kb")] == [0, 512 << 20, 2 * 10**9, 3 << 29, 64000]
    result = runner.invoke(cli, ["validate", patch_file, "--data", str(small_world), "--cache-memory", "lots"])
    assert result.exit_code == 2 and "'lots' is not a size" in result.stderr
    result = runner.invoke(cli, ["validate", patch_file, "--data", str(small_world), "--cache-memory", "0",
                                 "--quiet", "--no-dose", "--json"])
    assert result.exit_code in (0, 1), result.output
    assert '"n": 40' in result.stdout
