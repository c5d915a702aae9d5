"""Image folders and parquet files as (id, label, attributes, image) tables, the same on both engines."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from steerpatch.errors import DatasetError
from steerpatch.spark.sources import iter_local_batches, list_folder, source_kind, spark_frame


def test_folder_listing_follows_the_dataset_layout(image_folder):
    rows = list_folder(image_folder)
    ids = [r[0] for r in rows]
    assert ids == sorted(ids) and len(ids) == 31
    by_id = {r[0]: r for r in rows}
    assert by_id["square/001.png"][1] == "square"
    assert json.loads(by_id["square/001.png"][2]) == {"index": 1, "parity": "odd"}
    assert by_id["star/broken.png"][2] == "{}"  # not in the manifest


def test_missing_and_wrong_sources_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        source_kind(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a .parquet"):
        source_kind(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        list(iter_local_batches(tmp_path / "empty"))


def test_parquet_without_image_column_is_refused(tmp_path):
    pd.DataFrame({"id": ["a"], "pixels": [b"x"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DatasetError, match="lacks the column"):
        list(iter_local_batches(tmp_path / "bad.parquet"))


@pytest.fixture(scope="module")
def images_parquet(image_folder, tmp_path_factory):
    frame = pd.concat(list(iter_local_batches(image_folder)), ignore_index=True)
    path = tmp_path_factory.mktemp("pq") / "images.parquet"
    frame.to_parquet(path)
    return path


def test_local_parquet_round_trips_the_folder(image_folder, images_parquet):
    folder = pd.concat(list(iter_local_batches(image_folder, batch_size=7)), ignore_index=True)
    table = pd.concat(list(iter_local_batches(images_parquet, batch_size=7)), ignore_index=True)
    pd.testing.assert_frame_equal(folder, table)


def test_spark_reads_the_same_rows_as_the_local_engine(spark, image_folder, images_parquet):
    local = pd.concat(list(iter_local_batches(image_folder)), ignore_index=True).sort_values("id", ignore_index=True)
    for source in (image_folder, images_parquet):
        frame = spark_frame(spark, source, partitions=3)
        assert frame.rdd.getNumPartitions() == 3
        remote = frame.toPandas().sort_values("id", ignore_index=True)
        assert list(remote["id"]) == list(local["id"])
        assert list(remote["label"]) == list(local["label"])
        assert list(remote["attributes"]) == list(local["attributes"])
        assert [bytes(b) for b in remote["image"]] == list(local["image"])
