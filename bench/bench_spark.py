"""Batch-scoring throughput: the local engine versus Spark local[2], on the same images and the same graph.

Setup: a generated held-out world (PNG files in class folders) and the model's encoder compiled to
ONNX with the zero-shot head baked in (concept-clip by default; `--model ViT-B-32` for a heavier
per-image cost). Both engines decode, preprocess and score every image and write parquet:

  local  one process, ONNX Runtime using every core (intra-op threads);
  spark  `local[2]`: two executor tasks at a time, one ONNX Runtime thread each, the graph shipped with
         addFile, one session per partition, results written by the executors.

Each engine runs once untimed (Python workers, ORT sessions and caches warm up) and then `--repeats`
timed times; the median is reported. Session start-up is reported apart and not counted.

Run:
    .venv/bin/python bench/bench_spark.py [--n 2000] [--model concept-clip] [--repeats 3]

How it scales: images are independent, so Spark's work splits into partitions with no shuffle beyond
spreading the image bytes; throughput grows with executor cores until storage or the driver's per-job
overhead (a few seconds per job: planning, task launch, Python worker start) dominates. On one
machine local[2] has the same two cores the local engine already uses through ONNX Runtime threads,
so a ratio near or below 1 is expected here; the gain comes from adding executors, roughly
(executor cores / local cores) x this ratio for sets large enough to amortise the per-job overhead.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def build_graph_file(model_spec: str, classes: list[str], out: Path) -> Path:
    """The model's unsteered encoder with a zero-shot head, as an ONNX file with compile's metadata."""
    import json

    from steerpatch.compile import build_graph
    from steerpatch.compile.compiler import preprocessing_of
    from steerpatch.compile.export import export_graph, serialize, set_metadata
    from steerpatch.models import build_zero_shot_head, load_model

    loaded = load_model(model_spec)
    head = build_zero_shot_head(loaded, classes)
    module, _, _, _ = build_graph(loaded, None, None, head)
    proto = export_graph(module, loaded.image_size, module.output_names)
    record = {"classes": classes, "preprocessing": preprocessing_of(loaded).model_dump()}
    out.write_bytes(serialize(set_metadata(proto, {"steerpatch": json.dumps(record)})))
    return out


def timed(run, repeats: int) -> list[float]:
    run(warm=True)
    return [run(warm=False) for _ in range(repeats)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="images in the generated set")
    parser.add_argument("--model", default="concept-clip", help="model spec (concept-clip, ViT-B-32, ...)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine (median reported)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--partitions", type=int, default=None, help="Spark partitions (default: engine's choice)")
    parser.add_argument("--data", default=None, help="use this image folder or parquet instead of generating one")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

    from steerpatch.spark import load_scoring_graph, score_local, score_spark, spark_session
    from steerpatch.spark.sources import count_local

    work = Path(tempfile.mkdtemp(prefix="bench-spark-"))
    try:
        if args.data:
            data = Path(args.data)
        else:
            from steerpatch.world import write_world

            data = work / "world"
            write_world(data, split="test", n=args.n, seed=0)
        n = count_local(data)
        classes = sorted(p.name for p in Path(data).iterdir() if p.is_dir()) if Path(data).is_dir() else []
        graph = load_scoring_graph(build_graph_file(args.model, classes, work / "graph.onnx"))

        counter = iter(range(10_000))

        def local(warm: bool) -> float:
            summary = score_local(graph, data, work / f"local-{next(counter)}.parquet",
                                  batch_size=args.batch_size, progress=False)
            return summary.seconds

        started = time.perf_counter()
        spark = spark_session("local[2]", app_name="bench-spark")
        spark.range(1).count()
        startup = time.perf_counter() - started

        def remote(warm: bool) -> float:
            summary = score_spark(spark, graph, data, work / f"spark-{next(counter)}.parquet",
                                  batch_size=args.batch_size, partitions=args.partitions, progress=False)
            return summary.seconds

        local_s = statistics.median(timed(local, args.repeats))
        spark_s = statistics.median(timed(remote, args.repeats))
        spark.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    local_rate, spark_rate = n / local_s, n / spark_s
    print(f"images: {n}  model: {args.model}  cores: {os.cpu_count()}")
    print(f"local engine     : {local_s:7.2f} s  {local_rate:8.1f} img/s")
    print(f"spark local[2]   : {spark_s:7.2f} s  {spark_rate:8.1f} img/s  (session start-up {startup:.1f} s, not counted)")
    print(f"throughput ratio spark/local: {spark_rate / local_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
