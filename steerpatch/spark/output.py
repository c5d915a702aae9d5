"""Scoring results on disk: one schema for both engines, written atomically.

The local engine streams one parquet file; Spark writes a parquet folder of part files from the
executors. Either is written under a temporary sibling name and renamed into place, so a reader
never sees half a result.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from steerpatch.errors import OutputError
from steerpatch.spark.sources import is_remote

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame

# name -> (arrow type name, Spark SQL type); probability columns only when the graph has a head
BASE_COLUMNS = [("id", "string", "string"), ("label", "string", "string"), ("attributes", "string", "string")]
HEAD_COLUMNS = [
    ("pred", "string", "string"),
    ("pred_index", "int64", "bigint"),
    ("confidence", "float64", "double"),
    ("probs", "list<float32>", "array<float>"),
]
EMBEDDING_COLUMNS = [("embedding", "list<float32>", "array<float>")]
ERROR_COLUMNS = [("error", "string", "string")]


def result_columns(has_head: bool, embedding: bool) -> list[tuple[str, str, str]]:
    """The result columns, in order, for a graph with or without a zero-shot head."""
    return BASE_COLUMNS + (HEAD_COLUMNS if has_head else []) + (EMBEDDING_COLUMNS if embedding else []) + ERROR_COLUMNS


def spark_schema(columns: list[tuple[str, str, str]]) -> str:
    """A Spark DDL schema string for mapInPandas."""
    return ", ".join(f"{name} {spark_type}" for name, _, spark_type in columns)


def arrow_schema(columns: list[tuple[str, str, str]]) -> Any:
    """A pyarrow schema for the local writer."""
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "list<float32>": pa.list_(pa.float32())}
    return pa.schema([(name, types[arrow_type]) for name, arrow_type, _ in columns])


def refuse_existing(out: str | Path) -> None:
    """Refuse an output that exists already (a local file, or a non-empty folder).

    Raises:
        OutputError: naming the path and the fix.
    """
    if is_remote(out):
        return
    path = Path(out)
    if path.is_file() or (path.is_dir() and any(path.iterdir())):
        raise OutputError(f"--out '{out}' already exists; choose a new path or remove it first")


def write_spark_parquet(frame: DataFrame, out: str | Path) -> str:
    """Write a DataFrame as a parquet folder under a temporary sibling, then rename it to `out`.

    Args:
        frame: the results; computed by this call on the executors.
        out: destination folder, local or on a Hadoop file system.

    Returns:
        The destination as given.

    Raises:
        OutputError: when `out` exists, or the rename fails.
    """
    refuse_existing(out)
    text = str(out).rstrip("/")
    parent, name = text.rsplit("/", 1) if "/" in text else (".", text)
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:12]}.tmp"
    if not is_remote(out):
        Path(parent).mkdir(parents=True, exist_ok=True)
        tmp = str(Path(tmp).resolve())
    try:
        frame.write.mode("errorifexists").parquet(tmp)
        if is_remote(out):
            _hadoop_rename(frame, tmp, text)
        else:
            if Path(text).is_dir():
                Path(text).rmdir()  # an empty folder only, refuse_existing checked
            os.replace(tmp, text)
    except BaseException:
        if not is_remote(out):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    return str(out)


def _hadoop_rename(frame: DataFrame, src: str, dst: str) -> None:
    spark = frame.sparkSession
    jvm: Any = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    source, target = jvm.org.apache.hadoop.fs.Path(src), jvm.org.apache.hadoop.fs.Path(dst)
    fs = source.getFileSystem(conf)
    if fs.exists(target):
        fs.delete(source, True)
        raise OutputError(f"--out '{dst}' already exists; choose a new path or remove it first")
    if not fs.rename(source, target):
        fs.delete(source, True)
        raise OutputError(f"could not rename '{src}' to '{dst}'; check permissions on the output folder")
