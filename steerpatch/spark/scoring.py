"""Batch scoring with a compiled graph: on this machine, or on Spark executors through mapInPandas.

Both engines run the same per-batch function (`runner.score_frames`) over the same table of
(id, label, attributes, image), so their outputs agree row for row. On Spark the graph file is
shipped with `SparkContext.addFile`, each partition opens one ONNX Runtime session, and the results
are written to parquet by the executors: nothing but a row count comes back to the driver.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from steerpatch.errors import CompileError, MissingDependencyError, OutputError
from steerpatch.io import atomic_file
from steerpatch.spark import runner
from steerpatch.spark.output import (
    arrow_schema,
    refuse_existing,
    result_columns,
    spark_schema,
    write_spark_parquet,
)
from steerpatch.spark.progress import spark_progress
from steerpatch.spark.session import ship_runner
from steerpatch.spark.sources import count_local, iter_local_batches, spark_frame

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession


@dataclass(frozen=True)
class ScoringGraph:
    """A compiled graph and what scoring needs to know about it.

    Attributes:
        path: the .onnx file.
        classes: class names the probability columns refer to (empty for an embedding-only graph).
        preprocess: how images become the graph's input.
        outputs: the graph's output names.
        info: the steerpatch metadata record written by `steerpatch compile` ({} for other graphs).
    """

    path: Path
    classes: list[str]
    preprocess: runner.Preprocess
    outputs: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def has_head(self) -> bool:
        return "probs" in self.outputs


def load_scoring_graph(path: str | Path, *, image_size: int | None = None) -> ScoringGraph:
    """Open a graph file and read its classes and preprocessing from the compile metadata.

    Args:
        path: an .onnx file written by `steerpatch compile` (or any graph with a `pixels`-like
            image input and `embedding` and/or `probs` outputs).
        image_size: input side for a graph that neither records nor fixes one.

    Returns:
        The graph description.

    Raises:
        CompileError: when the file is missing, not ONNX, or lacks the outputs scoring needs.
        MissingDependencyError: when onnxruntime is not installed.
    """
    path = Path(path)
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "scoring needs ONNX Runtime, which is not installed; pip install 'steerpatch[cpu]' (or 'steerpatch[gpu]')"
        ) from None
    if not path.is_file():
        raise CompileError(f"graph '{path}' does not exist; compile one with `steerpatch compile PATCH --out {path}`")
    try:
        described = runner.graph_info(str(path))
    except Exception as error:  # onnxruntime raises its own untyped errors for bad files
        raise CompileError(f"'{path}' is not a loadable ONNX graph ({str(error).splitlines()[0]})") from None
    outputs = described["outputs"]
    if "probs" not in outputs and "embedding" not in outputs:
        raise CompileError(f"graph '{path}' has outputs {outputs}; scoring needs `probs` and/or `embedding`")
    metadata = described["metadata"]
    info = json.loads(metadata["steerpatch"]) if "steerpatch" in metadata else {}
    classes = list(info.get("classes") or json.loads(metadata.get("classes", "[]")))
    if "preprocessing" in info:
        preprocess = runner.Preprocess.from_dict(info["preprocessing"])
    else:
        size = image_size or described["input_size"]
        if size is None:
            raise CompileError(f"graph '{path}' records no input size; pass the image size it expects")
        preprocess = runner.Preprocess(image_size=int(size))
    return ScoringGraph(path=path, classes=classes, preprocess=preprocess, outputs=outputs, info=info)


@dataclass
class ScoreSummary:
    """What a scoring run did.

    Attributes:
        engine: "local" or "spark".
        out: where the results were written.
        n: images scored (undecodable ones included).
        n_errors: images that could not be decoded.
        seconds: wall time of the scoring pass.
    """

    engine: str
    out: str
    n: int
    n_errors: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.n / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "out": self.out, "n": self.n, "n_errors": self.n_errors,
                "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 2)}


def score_local(
    graph: ScoringGraph,
    source: str | Path,
    out: str | Path,
    *,
    embedding: bool = False,
    batch_size: int = 32,
    threads: int = 0,
    progress: bool = True,
) -> ScoreSummary:
    """Score every image of a source on this machine and stream the results to one parquet file.

    Args:
        graph: the compiled graph (see `load_scoring_graph`).
        source: an image folder or a parquet of image bytes.
        out: the parquet file to write (must not exist).
        embedding: also write each image's embedding.
        batch_size: images per ONNX Runtime call.
        threads: ONNX Runtime intra-op threads; 0 uses every core.
        progress: show a progress bar on stderr.

    Returns:
        The run's summary.

    Raises:
        DatasetError: for a missing or empty source.
        OutputError: when `out` exists.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    refuse_existing(out)
    embedding = embedding or not graph.has_head
    columns = result_columns(graph.has_head, embedding)
    schema = arrow_schema(columns)
    total = count_local(source)
    start = time.perf_counter()
    n = n_errors = 0
    with atomic_file(out) as tmp, pq.ParquetWriter(str(tmp), schema) as writer, \
            tqdm(total=total, desc="scoring (local)", unit="img", disable=not progress) as bar:
        frames = runner.score_frames(
            iter_local_batches(source, batch_size=max(batch_size, 256)),
            graph=str(graph.path), preprocess=graph.preprocess.to_dict(), classes=graph.classes,
            embedding=embedding, batch_size=batch_size, threads=threads,
        )
        for frame in frames:
            writer.write_table(pa.Table.from_pandas(frame[[c[0] for c in columns]], schema=schema, preserve_index=False))
            n += len(frame)
            n_errors += int(frame["error"].notna().sum())
            bar.update(len(frame))
    return ScoreSummary("local", str(out), n, n_errors, time.perf_counter() - start)


def ship_graph(spark: SparkSession, path: str | Path) -> str:
    """Make a graph file available to every executor; returns the name `runner.resolve_graph` takes.

    The file is registered under a name derived from its content, because Spark refuses a second
    file with the same name but another path, and two different graphs are often both `model.onnx`.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    name = f"steerpatch-graph-{digest.hexdigest()[:20]}.onnx"
    staged = Path(tempfile.gettempdir()) / "steerpatch-spark-graphs" / name
    if not staged.exists():
        staged.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(staged) as tmp:
            try:
                os.unlink(tmp)
                os.link(path, tmp)  # no copy when the temp folder shares the file system
            except OSError:
                shutil.copyfile(path, tmp)
    spark.sparkContext.addFile(str(staged))
    return runner.SPARK_FILE_PREFIX + name


def task_threads(spark: SparkSession) -> int:
    """ONNX Runtime threads per Spark task: the cores Spark reserves for one task."""
    return int(spark.conf.get("spark.task.cpus", "1") or 1)


def score_spark(
    spark: SparkSession,
    graph: ScoringGraph,
    source: str | Path,
    out: str | Path,
    *,
    embedding: bool = False,
    batch_size: int = 32,
    partitions: int | None = None,
    progress: bool = True,
) -> ScoreSummary:
    """Score every image of a source on Spark executors and write the results there as parquet.

    Args:
        spark: the session (see `spark_session`).
        graph: the compiled graph (see `load_scoring_graph`).
        source: an image folder or a parquet of image bytes, local or on a Hadoop file system.
        out: the parquet folder to write (must not exist).
        embedding: also write each image's embedding.
        batch_size: images per ONNX Runtime call inside a task.
        partitions: Spark partitions to spread the images over (default: see `spark_frame`).
        progress: show finished tasks on stderr.

    Returns:
        The run's summary.

    Raises:
        DatasetError: for a missing or empty source.
        OutputError: when `out` exists.
    """
    from pyspark.sql import functions as F

    refuse_existing(out)
    ship_runner()
    embedding = embedding or not graph.has_head
    columns = result_columns(graph.has_head, embedding)
    start = time.perf_counter()
    with spark_progress(spark, "scoring (spark)", enabled=progress):
        frame = spark_frame(spark, source, partitions=partitions)
        body = runner.partition_function(
            runner.score_frames, graph=ship_graph(spark, graph.path), preprocess=graph.preprocess.to_dict(),
            classes=graph.classes, embedding=embedding, batch_size=batch_size, threads=task_threads(spark),
        )
        scored = frame.mapInPandas(body, spark_schema(columns))
        write_spark_parquet(scored, out)
    seconds = time.perf_counter() - start
    counts = spark.read.parquet(str(out)).agg(F.count("*").alias("n"), F.count("error").alias("errors")).first()
    if counts is None:
        raise OutputError(f"--out '{out}' was written but cannot be read back")
    return ScoreSummary("spark", str(out), int(counts["n"]), int(counts["errors"]), seconds)
