"""Image sources as tables of (id, label, attributes, image): an image folder or a parquet of bytes.

A folder follows the dataset layout (`root/<class>/<file>.png`, optional `root/manifest.jsonl` with
`path`, `label` and `attributes`): the id is the path relative to the root, the label is the class
folder (or the manifest's), the attributes are the manifest's as JSON text. A parquet file needs
an `id` string column and an `image` binary column; `label` and `attributes` are optional.

The same rules serve both engines: `iter_local_batches` streams pandas frames on this machine,
`spark_frame` builds a Spark DataFrame whose image bytes are read by the executors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerpatch.errors import DatasetError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MANIFEST = "manifest.jsonl"
COLUMNS = ("id", "label", "attributes", "image")


def is_remote(source: str | Path) -> bool:
    """Whether a source is a URI for a Hadoop file system (hdfs://, s3a://, gs://, ...) rather than a local path."""
    text = str(source)
    return "://" in text and not text.startswith("file://")


def _local(source: str | Path) -> Path:
    text = str(source)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def source_kind(source: str | Path) -> str:
    """"folder" or "parquet" for a source, checking it exists when it is local.

    Raises:
        DatasetError: when a local source does not exist or is neither a folder nor a parquet file.
    """
    text = str(source)
    if is_remote(text):
        return "parquet" if text.rstrip("/").endswith(".parquet") else "folder"
    path = _local(text)
    if not path.exists():
        raise DatasetError(f"--data '{source}' does not exist; give an image folder or a parquet file of image bytes")
    if path.is_dir():
        # a Spark-written parquet dataset is a folder of part files
        if any(path.glob("*.parquet")) and not any(p.is_dir() for p in path.iterdir() if not p.name.startswith((".", "_"))):
            return "parquet"
        return "folder"
    if path.suffix == ".parquet":
        return "parquet"
    raise DatasetError(f"--data '{source}' is a file but not a .parquet; give an image folder or a parquet of image bytes")


def read_manifest(root: Path) -> dict[str, tuple[str | None, str]]:
    """The manifest's rows by path: (label, attributes as JSON text).

    Raises:
        DatasetError: naming the line of a row that is not valid JSON or has no `path`.
    """
    path = root / MANIFEST
    rows: dict[str, tuple[str | None, str]] = {}
    if not path.is_file():
        return rows
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[str(row["path"])] = (row.get("label"), json.dumps(row.get("attributes") or {}, sort_keys=True))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise DatasetError(
                f"{path} line {number} is not a manifest row ({error}); expected "
                '{"path": "<class>/<file>.png", "label": "<class>", "attributes": {...}}'
            ) from None
    return rows


def list_folder(root: str | Path) -> list[tuple[str, str | None, str, Path]]:
    """Every image under a local folder, sorted by id: (id, label, attributes JSON, path).

    Raises:
        DatasetError: when the folder holds no images.
    """
    root = _local(root)
    manifest = read_manifest(root)
    rows = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        item_id = path.relative_to(root).as_posix()
        if any(part.startswith((".", "_")) for part in item_id.split("/")):
            continue  # hidden, as Spark's file sources treat them
        folder_label = item_id.split("/")[0] if "/" in item_id else None
        label, attributes = manifest.get(item_id, (None, "{}"))
        rows.append((item_id, label or folder_label, attributes, path))
    if not rows:
        raise DatasetError(f"--data '{root}' holds no images ({', '.join(IMAGE_SUFFIXES)}); check the path")
    return rows


def _check_parquet_columns(names: list[str], source: str | Path) -> None:
    missing = [c for c in ("id", "image") if c not in names]
    if missing:
        raise DatasetError(
            f"parquet '{source}' lacks the column(s) {', '.join(missing)}; it needs `id` (string) and "
            f"`image` (encoded image bytes), optionally `label` and `attributes`; it has {', '.join(names)}"
        )


def _attributes_text(value: Any) -> str:
    if value is None:
        return "{}"
    if isinstance(value, str):
        return value
    return json.dumps(dict(value), sort_keys=True)


def count_local(source: str | Path) -> int:
    """Number of images a local source holds."""
    if source_kind(source) == "folder":
        return len(list_folder(source))
    import pyarrow.parquet as pq

    return int(pq.ParquetDataset(str(_local(source))).read(columns=["id"]).num_rows)


def iter_local_batches(source: str | Path, batch_size: int = 256) -> Iterator[pd.DataFrame]:
    """Stream a local source as pandas frames of (id, label, attributes, image bytes).

    Raises:
        DatasetError: for a missing source, an empty folder or a parquet without `id`/`image`.
    """
    import pandas as pd

    if source_kind(source) == "folder":
        rows = list_folder(source)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            yield pd.DataFrame({
                "id": [r[0] for r in chunk],
                "label": [r[1] for r in chunk],
                "attributes": [r[2] for r in chunk],
                "image": [r[3].read_bytes() for r in chunk],
            })
        return
    import pyarrow.parquet as pq

    dataset = pq.ParquetDataset(str(_local(source)))
    names = list(dataset.schema.names)
    _check_parquet_columns(names, source)
    wanted = [c for c in COLUMNS if c in names]
    for fragment in dataset.fragments:
        for batch in fragment.to_batches(columns=wanted, batch_size=batch_size):
            frame = batch.to_pandas()
            yield pd.DataFrame({
                "id": frame["id"].astype(str),
                "label": frame.get("label"),
                "attributes": [_attributes_text(v) for v in frame["attributes"]] if "attributes" in frame else "{}",
                "image": frame["image"],
            })


def qualified_root(spark: SparkSession, source: str | Path) -> str:
    """The folder as Spark writes it in the `path` column of binaryFile rows (e.g. `file:/abs/dir`)."""
    jvm: Any = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    text = str(_local(source).resolve()) if not is_remote(source) else str(source)
    path = jvm.org.apache.hadoop.fs.Path(text)
    return str(path.getFileSystem(conf).makeQualified(path).toString()).rstrip("/")


def spark_frame(spark: SparkSession, source: str | Path, *, partitions: int | None = None) -> DataFrame:
    """A Spark DataFrame of (id, label, attributes, image) whose bytes the executors read.

    Args:
        spark: the session.
        source: an image folder or a parquet file/folder, local or on any Hadoop file system.
        partitions: how many partitions to spread the images over; default one per 256 images,
            at least the session's default parallelism.

    Returns:
        The DataFrame (not yet computed).

    Raises:
        DatasetError: for a missing source, an empty folder or a parquet without `id`/`image`.
    """
    from pyspark.sql import functions as F

    kind = source_kind(source)
    location = str(_local(source).resolve()) if not is_remote(source) else str(source)
    if kind == "parquet":
        frame = spark.read.parquet(location)
        _check_parquet_columns(frame.columns, source)
        label = F.col("label").cast("string") if "label" in frame.columns else F.lit(None).cast("string")
        if "attributes" not in frame.columns:
            attributes = F.lit("{}")
        elif dict(frame.dtypes)["attributes"] == "string":
            attributes = F.coalesce(F.col("attributes"), F.lit("{}"))
        else:
            attributes = F.coalesce(F.to_json("attributes"), F.lit("{}"))
        frame = frame.select(F.col("id").cast("string").alias("id"), label.alias("label"),
                             attributes.alias("attributes"), F.col("image"))
    else:
        frame = folder_frame(spark, location)
    count = frame.count()
    if count == 0:
        raise DatasetError(f"--data '{source}' holds no images; check the path")
    if partitions is None:
        partitions = max(spark.sparkContext.defaultParallelism, -(-count // 256))
    return frame.repartition(partitions)


def folder_frame(spark: SparkSession, location: str) -> DataFrame:
    """Images of a folder read by Spark's binaryFile source, joined with the manifest when there is one."""
    from pyspark.sql import functions as F

    glob = "*.{" + ",".join(s.lstrip(".") for s in IMAGE_SUFFIXES) + "}"
    files = (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
             .option("pathGlobFilter", glob).load(location))
    root = qualified_root(spark, location) + "/"
    relative = F.expr(f"substring(path, {len(root) + 1})")
    files = files.select(relative.alias("id"), F.col("content").alias("image"))
    folder_label = F.when(F.instr("id", "/") > 0, F.substring_index("id", "/", 1))
    manifest = manifest_frame(spark, location)
    if manifest is None:
        return files.select("id", folder_label.alias("label"), F.lit("{}").alias("attributes"), "image")
    joined = files.join(F.broadcast(manifest), on="id", how="left")
    return joined.select(
        "id",
        F.coalesce(F.col("manifest_label"), folder_label).alias("label"),
        F.coalesce(F.col("manifest_attributes"), F.lit("{}")).alias("attributes"),
        "image",
    )


def manifest_frame(spark: SparkSession, location: str) -> DataFrame | None:
    """The folder's manifest as (id, manifest_label, manifest_attributes JSON), or None without one."""
    from pyspark.sql import functions as F

    if not is_remote(location):
        if not (Path(location) / MANIFEST).is_file():
            return None
        rows = read_manifest(Path(location))
        return spark.createDataFrame(
            [(k, label, attrs) for k, (label, attrs) in rows.items()],
            "id string, manifest_label string, manifest_attributes string",
        )
    jvm: Any = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    path = jvm.org.apache.hadoop.fs.Path(location.rstrip("/") + "/" + MANIFEST)
    if not path.getFileSystem(conf).exists(path):
        return None
    table = spark.read.json(str(path.toString()))
    attributes = F.to_json("attributes") if "attributes" in table.columns else F.lit("{}")
    label = F.col("label") if "label" in table.columns else F.lit(None).cast("string")
    return table.select(F.col("path").alias("id"), label.alias("manifest_label"), attributes.alias("manifest_attributes"))
