"""A progress bar for Spark work: finished tasks of one job group, polled from the driver's status tracker.

Spark's own console bar is switched off in local sessions (it fights with tqdm over stderr); this
bar counts the tasks of every stage the work started, so it also moves on a cluster.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession


def _task_counts(spark: SparkSession, group: str) -> tuple[int, int]:
    tracker = spark.sparkContext.statusTracker()
    done = total = 0
    for job_id in tracker.getJobIdsForGroup(group):
        job = tracker.getJobInfo(job_id)
        if job is None:
            continue
        for stage_id in job.stageIds:
            stage = tracker.getStageInfo(stage_id)
            if stage is not None:
                done += stage.numCompletedTasks
                total += stage.numTasks
    return done, total


@contextlib.contextmanager
def spark_progress(spark: SparkSession, desc: str, *, enabled: bool = True, interval: float = 0.5) -> Iterator[str]:
    """Show finished/total Spark tasks on stderr while the body runs its Spark jobs.

    Args:
        spark: the session the jobs run on.
        desc: the bar's label.
        enabled: False runs the body with no bar.
        interval: seconds between polls.

    Yields:
        The job group id the body's jobs are tagged with.
    """
    group = f"steerpatch-{uuid.uuid4().hex[:12]}"
    context = spark.sparkContext
    context.setJobGroup(group, desc)
    if not enabled:
        try:
            yield group
        finally:
            context.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]  # None clears it
        return
    bar = tqdm(desc=desc, unit="task", total=0)
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(interval):
            done, total = _task_counts(spark, group)
            bar.total = total
            bar.n = done
            bar.refresh()

    watcher = threading.Thread(target=poll, name="spark-progress", daemon=True)
    watcher.start()
    try:
        yield group
    finally:
        stop.set()
        watcher.join()
        done, total = _task_counts(spark, group)
        bar.total, bar.n = total, done
        bar.refresh()
        bar.close()
        context.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]  # None clears it
