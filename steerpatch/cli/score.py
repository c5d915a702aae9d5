"""`steerpatch score`: batch-score a dataset with a compiled graph, on this machine or on Spark."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import click

ENGINES = ("local", "spark")


def _graph_file(source: str, tracking_uri: str | None, workdir: Path) -> tuple[Path, str]:
    """A local .onnx path for SOURCE (a file, or a registry ref whose graph is downloaded) and how it was found."""
    path = Path(source)
    if path.exists():
        return path, str(path)
    from steerpatch.compile import download_graph, resolve_graph

    graph = resolve_graph(source, tracking_uri=tracking_uri)
    return download_graph(graph, workdir, tracking_uri=tracking_uri), f"{source} -> {graph.name}@{graph.version}"


@click.command()
@click.argument("source", metavar="NAME@ALIAS|FILE.onnx")
@click.option("--data", required=True, help="Image folder (class subfolders, optional manifest.jsonl) or a parquet "
              "with `id` and `image` (bytes) columns; on Spark also hdfs://, s3a://, ... URIs.")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="Run on this machine, or on Spark executors.")
@click.option("--spark-master", default=None, metavar="URL",
              help="Spark master for --engine spark: local[N], spark://host:7077, yarn, k8s://... (default local[2]).")
@click.option("--embedding", is_flag=True, help="Also write each image's embedding.")
@click.option("--out", required=True, help="Parquet to write: one file (local) or a folder of parts (spark).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Images per graph call.")
@click.option("--partitions", type=click.IntRange(min=1), default=None,
              help="Spark partitions (default: one per 256 images, at least the cores).")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI for NAME@ALIAS (default: the local store).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def score(source, data, engine, spark_master, embedding, out, batch_size, partitions, tracking_uri, as_json) -> None:
    """Score every image of --data with a compiled graph: predicted class, probabilities, optional embedding.

    SOURCE is a graph from `steerpatch compile`, or a registered patch or compiled model
    (NAME@ALIAS, NAME@VERSION) whose newest compiled graph is used.
    """
    from steerpatch.errors import SteerpatchError
    from steerpatch.spark.output import refuse_existing
    from steerpatch.spark.scoring import load_scoring_graph

    if spark_master and engine != "spark":
        raise SteerpatchError(f"--spark-master {spark_master} needs --engine spark")
    refuse_existing(out)
    if engine == "spark":
        from steerpatch.spark.session import find_java, require_pyspark

        # before any download or graph loading: a missing extra should cost nothing
        require_pyspark()
        find_java()
    with tempfile.TemporaryDirectory(prefix="steerpatch-score-") as workdir:
        path, found = _graph_file(source, tracking_uri, Path(workdir))
        graph = load_scoring_graph(path)
        click.echo(f"graph {found} ({', '.join(graph.outputs)}; {len(graph.classes)} classes)", err=True)
        if engine == "local":
            from steerpatch.spark.scoring import score_local

            summary = score_local(graph, data, out, embedding=embedding, batch_size=batch_size)
        else:
            from steerpatch.spark.scoring import score_spark
            from steerpatch.spark.session import spark_session

            spark = spark_session(spark_master)
            summary = score_spark(spark, graph, data, out, embedding=embedding, batch_size=batch_size,
                                  partitions=partitions)
    result = {**summary.to_dict(), "graph": found}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(
        f"scored {summary.n} images ({summary.n_errors} undecodable) with {engine} in {summary.seconds:.1f}s "
        f"({summary.images_per_second:.1f} img/s) -> {summary.out}"
    )
