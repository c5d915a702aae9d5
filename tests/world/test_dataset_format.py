"""The dataset format: ImageFolder tree plus optional manifest.jsonl, and its errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from steerpatch.data import load_dataset
from steerpatch.errors import DatasetError, OutputError
from steerpatch.world import SHAPES, make_sample, write_world


def test_world_tree_has_one_folder_per_class_and_a_manifest(small_world):
    data = load_dataset(small_world)
    assert data.classes == sorted(SHAPES)
    assert len(data) == 96
    rows = [json.loads(line) for line in (small_world / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 96
    for row, item in zip(rows, data.items, strict=True):
        assert item.id == row["path"] and item.label == row["label"] == row["path"].split("/")[0]
        assert item.attributes == row["attributes"]
    first = data[0]
    sample = make_sample("test", 0, 0)
    assert first.attributes["shape"] == sample.shape and first.attributes["shortcut"] == sample.shortcut
    assert np.array_equal(np.asarray(data.load_image(0)), np.asarray(sample.render()))  # PNG is lossless


def test_filter_subset_and_groups(small_world):
    data = load_dataset(small_world)
    conflicting = data.filter(shortcut="conflicting")
    assert len(conflicting) == 20 and all(i.attributes["background"] == "water" for i in conflicting)
    assert data.groups("shortcut") == {"aligned": 4, "conflicting": 20, "none": 72}
    assert len(data.filter(label="star", background="water")) == 4
    ids = [data[5].id, data[2].id]
    assert [i.id for i in data.subset(ids)] == ids
    with pytest.raises(DatasetError, match="nope.png"):
        data.subset(["nope.png"])


def test_fingerprint_tracks_content(small_world, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_world, copy)
    assert load_dataset(copy).fingerprint() == load_dataset(small_world).fingerprint()
    victim = load_dataset(copy)[0].path
    Image.new("RGB", (64, 64), "white").save(victim)
    assert load_dataset(copy).fingerprint() != load_dataset(small_world).fingerprint()


def test_plain_image_folder_without_manifest(tmp_path):
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for k in range(2):
            Image.new("RGB", (8, 8), (k * 50, 0, 0)).save(tmp_path / cls / f"{k}.jpg")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    data = load_dataset(tmp_path)
    assert data.classes == ["cat", "dog"]
    assert [i.id for i in data] == ["cat/0.jpg", "cat/1.jpg", "dog/0.jpg", "dog/1.jpg"]
    assert data[3].attributes == {} and data.load_image(3).size == (8, 8)


def test_manifest_row_pointing_at_missing_image(small_world, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(small_world, copy)
    gone = load_dataset(copy)[4].path
    gone.unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset(copy)
    message = str(info.value)
    assert "\n" not in message and str(gone) in message and "does not exist" in message and "fix" in message


def test_undecodable_image_names_the_file(small_world, tmp_path):
    copy = tmp_path / "w"
    shutil.copytree(small_world, copy)
    data = load_dataset(copy)
    data[1].path.write_bytes(b"this is not a png")
    with pytest.raises(DatasetError, match="cannot be decoded") as info:
        data.load_image(1)
    assert str(data[1].path) in str(info.value)
    with pytest.raises(DatasetError, match="cannot be decoded"):
        load_dataset(copy, verify=True)


def test_malformed_manifest_and_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "absent")
    (tmp_path / "a").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "x.png")
    (tmp_path / "manifest.jsonl").write_text('{"path": "a/x.png"}\n{not json\n{"path": "../etc/passwd"}\n')
    with pytest.raises(DatasetError, match=r"line 2: not JSON .*and 1 more"):
        load_dataset(tmp_path)
    empty = tmp_path / "empty"
    (empty / "cls").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no images"):
        load_dataset(empty)


def test_writer_refuses_a_non_empty_output_and_leaves_nothing_half_written(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        write_world(out, split="test", n=4, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    with pytest.raises(DatasetError, match="positive"):
        write_world(tmp_path / "zero", split="test", n=0, progress=False)
    assert not (tmp_path / "zero").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folders left behind
