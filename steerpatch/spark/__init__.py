"""The Spark engine: batch scoring and validation of compiled graphs on Spark executors.

pyspark is an optional extra (`pip install 'steerpatch[spark]'`); it is imported only inside the
functions that start or use a session, so the local scoring engine here works without it.

    spark = spark_session("local[2]")                      # or "spark://host:7077", "yarn", ...
    graph = load_scoring_graph("steered.onnx")
    score_spark(spark, graph, "world/test", "scores.parquet")
    report = validate_on_spark("patch.json", "world/test", spark=spark, group_by="shortcut")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from steerpatch.spark.scoring import ScoreSummary, ScoringGraph, load_scoring_graph, score_local, score_spark
from steerpatch.spark.session import DEFAULT_MASTER, find_java, require_pyspark, spark_session
from steerpatch.spark.sources import iter_local_batches, spark_frame

# validation builds on the torch engine, so it loads only when asked for
_LAZY = {"SparkValidator": "steerpatch.spark.validation", "validate_on_spark": "steerpatch.spark.validation"}

__all__ = [
    "DEFAULT_MASTER",
    "ScoreSummary",
    "ScoringGraph",
    "SparkValidator",
    "find_java",
    "iter_local_batches",
    "load_scoring_graph",
    "require_pyspark",
    "score_local",
    "score_spark",
    "spark_frame",
    "spark_session",
    "validate_on_spark",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'steerpatch.spark' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from steerpatch.spark.validation import SparkValidator, validate_on_spark
