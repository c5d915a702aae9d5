"""Running a graph, alone or with dynamic batching: concurrent requests gathered into one ONNX Runtime call.

`Batcher` owns one thread. A request hands it its (B, 3, S, S) pixels, the graph it was routed to
and, for multi-patch graphs, one `patch_index` per row; the thread waits up to `max_wait_ms` for
more requests (or until `max_rows` rows), concatenates the rows of each graph, runs each graph once,
and hands every request back its own rows. A request keeps the graph it was routed to even when its
alias moves meanwhile (the batch holds the old `LoadedGraph` until it has run).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_WAIT_MS = 2.0
DEFAULT_MAX_ROWS = 32


def run_graph(graph: Any, pixels: np.ndarray, patch_index: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One ONNX Runtime call: name -> output array (B, ...).

    Args:
        graph: a `LoadedGraph`.
        pixels: (B, 3, S, S) float32.
        patch_index: (B,) int64 for a multi-patch graph (zeros when None); ignored for other graphs.
    """
    feeds: dict[str, np.ndarray] = {"pixels": pixels}
    if graph.info.patch_count:
        feeds["patch_index"] = patch_index if patch_index is not None else np.zeros(len(pixels), dtype=np.int64)
    names = graph.output_names
    return dict(zip(names, graph.session.run(names, feeds), strict=True))


@dataclass
class _Job:
    graph: Any
    pixels: np.ndarray
    patch_index: np.ndarray | None
    future: Future = field(default_factory=Future)


class Batcher:
    """Gathers concurrent requests into one ONNX Runtime call per graph.

    Args:
        max_wait_ms: how long the first request of a batch waits for others.
        max_rows: a batch runs as soon as it holds this many rows.
        observe: called with each batch's row count (the metrics' batch-size histogram).

    Example:
        >>> batcher = Batcher(max_wait_ms=2).start()  # doctest: +SKIP
        >>> outputs = batcher.submit(graph, pixels).result()  # doctest: +SKIP
    """

    def __init__(self, max_wait_ms: float = DEFAULT_WAIT_MS, max_rows: int = DEFAULT_MAX_ROWS,
                 observe: Callable[[int], None] | None = None) -> None:
        if not max_wait_ms >= 0:
            raise ValueError(f"max_wait_ms {max_wait_ms} must be >= 0")
        self.max_wait = max_wait_ms / 1000.0
        self.max_rows = max(1, int(max_rows))
        self.observe = observe or (lambda _rows: None)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> Batcher:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="steerpatch-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Finish the queued requests, then stop the thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, graph: Any, pixels: np.ndarray, patch_index: np.ndarray | None = None) -> Future:
        """Queue rows for `graph`; the future's result is `run_graph`'s dict for these rows only."""
        job = _Job(graph, pixels, patch_index)
        self._queue.put(job)
        return job.future

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, rows = [first], len(first.pixels)
        deadline = time.monotonic() + self.max_wait
        while rows < self.max_rows:
            left = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
            rows += len(job.pixels)
        return jobs, False

    def _loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stopping = self._gather(first)
            groups: dict[int, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(id(job.graph), []).append(job)
            for group in groups.values():
                self._run(group)
            if stopping:
                return

    def _run(self, jobs: list[_Job]) -> None:
        graph = jobs[0].graph
        try:
            pixels = np.concatenate([job.pixels for job in jobs]) if len(jobs) > 1 else jobs[0].pixels
            index = None
            if graph.info.patch_count:
                index = np.concatenate([
                    job.patch_index if job.patch_index is not None else np.zeros(len(job.pixels), dtype=np.int64)
                    for job in jobs
                ])
            self.observe(len(pixels))
            outputs = run_graph(graph, pixels, index)
        except Exception as error:  # noqa: BLE001 - every waiting request gets the failure, none hangs
            for job in jobs:
                job.future.set_exception(error)
            return
        start = 0
        for job in jobs:
            end = start + len(job.pixels)
            job.future.set_result({name: value[start:end] for name, value in outputs.items()})
            start = end
