"""One inference, whichever route asked for it: run the routed graph (batched or not), and the shadow.

`/predict` and the Open Inference Protocol's `/v2/models/{name}/infer` both come here after they
have read their pixels, so routing, patch selection, batching and shadow comparison behave the same
on both.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from steerpatch.serve.batching import Batcher, run_graph
from steerpatch.serve.payload import BadPayload

log = logging.getLogger("steerpatch.serve")


@dataclass(frozen=True)
class Answer:
    """What answered a request and what it said.

    Attributes:
        alias: the label of the alias that answered.
        graph: the `LoadedGraph` that ran (its version and patch hash name the answer).
        outputs: name -> (B, ...) arrays.
        patch_index: (B,) per-row patch selection for multi-patch graphs, else None.
    """

    alias: str
    graph: Any
    outputs: dict[str, np.ndarray]
    patch_index: np.ndarray | None

    @property
    def model_version(self) -> str | None:
        return self.graph.registry.version if self.graph.registry else None

    def patch_hashes(self) -> list[str | None]:
        """The hash of the patch that steered each row (None for an unpatched row)."""
        info = self.graph.info
        if self.patch_index is None:
            return [info.patch_hash] * len(self.outputs["embedding"])
        return [info.patch_hash_at(int(k)) for k in self.patch_index]

    def patch_hash(self) -> str | None:
        """The one patch hash of the answer when every row shares it, else None."""
        hashes = set(self.patch_hashes())
        return hashes.pop() if len(hashes) == 1 else None


def check_patch_index(graph: Any, value: Any, rows: int) -> np.ndarray | None:
    """A request's `patch_index` (one int, or one per row) -> (rows,) int64, checked against the graph.

    Raises:
        BadPayload: 422 for a non-integer, a count other than 1 or `rows`, or an index outside 0..N.
    """
    if value is None:
        return None
    count = graph.info.patch_count
    try:
        array = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise BadPayload(f"patch_index {value!r} is not an integer; give 0 (unpatched) to {count}", 422) from None
    if array.size not in (1, rows) or not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
        raise BadPayload(f"patch_index must be one integer or one per row ({rows}); got {value!r}", 422)
    index = array.astype(np.int64)
    if count == 0 and np.any(index != 0):
        raise BadPayload(f"patch_index {value!r}: this graph holds one patch and takes no patch_index "
                         "(compile several patches into one graph to select them per row)", 422)
    bad = index[(index < 0) | (index > count)]
    if bad.size:
        raise BadPayload(f"patch_index {int(bad[0])} is out of range; this graph holds {count} patches: "
                         f"give 0 (unpatched) to {count}", 422)
    return np.broadcast_to(index, (rows,)).copy() if count else None


class Inference:
    """Runs requests on the fleet's graphs, through the batcher when there is one.

    Args:
        fleet: the `Fleet`.
        pool: the worker pool for unbatched runs.
        metrics: the `ServeMetrics`.
        batcher: a started `Batcher`, or None to run each request on its own.
    """

    def __init__(self, fleet: Any, pool: Executor, metrics: Any, batcher: Batcher | None = None) -> None:
        self.fleet = fleet
        self.pool = pool
        self.metrics = metrics
        self.batcher = batcher

    async def run(self, graph: Any, pixels: np.ndarray, patch_index: np.ndarray | None) -> dict[str, np.ndarray]:
        """One graph on these rows: batched with concurrent requests, or alone in the pool."""
        if self.batcher is not None:
            return await asyncio.wrap_future(self.batcher.submit(graph, pixels, patch_index))
        self.metrics.batch_rows.observe(len(pixels))
        return await asyncio.get_running_loop().run_in_executor(self.pool, run_graph, graph, pixels, patch_index)

    async def answer(self, alias: str, graph: Any, pixels: np.ndarray, patch_index: np.ndarray | None) -> Answer:
        """Run the routed graph; on the default alias, run the shadow beside it and compare (never answering)."""
        shadow = None
        if self.fleet.shadow is not None and alias == self.fleet.default:
            shadow_graph = self.fleet.sources[self.fleet.shadow].current
            if _comparable(graph, shadow_graph):
                index = patch_index if shadow_graph.info.patch_count >= graph.info.patch_count else None
                shadow = asyncio.ensure_future(self.run(shadow_graph, pixels, index))
            else:
                self.metrics.shadow_errors.labels(self.fleet.shadow).inc()
        outputs = await self.run(graph, pixels, patch_index)
        if shadow is not None:
            await self._compare(outputs, shadow)
        return Answer(alias, graph, outputs, patch_index)

    async def _compare(self, outputs: dict[str, np.ndarray], shadow: asyncio.Future) -> None:
        label = self.fleet.shadow
        try:
            theirs = await shadow
        except Exception as error:  # noqa: BLE001 - a failing shadow is counted, the answer stands
            log.warning("shadow %s failed: %s", label, error)
            self.metrics.shadow_errors.labels(label).inc()
            return
        ours_p, theirs_p = outputs["probs"], theirs["probs"]
        drift = np.abs(ours_p.astype(np.float64) - theirs_p).max(axis=1)
        differ = int((ours_p.argmax(axis=1) != theirs_p.argmax(axis=1)).sum())
        self.metrics.shadow_requests.labels(label).inc(len(ours_p))
        self.metrics.shadow_disagreements.labels(label).inc(differ)
        for value in drift:
            self.metrics.shadow_drift.labels(label).observe(float(value))


def _comparable(graph: Any, shadow: Any) -> bool:
    # the shadow must read the same pixels and answer over the same classes to be compared
    a, b = graph.info, shadow.info
    return a.preprocessing == b.preprocessing and a.classes == b.classes and "probs" in a.outputs and "probs" in b.outputs


def predictions(answer: Answer) -> dict[str, Any]:
    """The `/predict` response: per-image label, probabilities and embedding, and who answered."""
    outputs = answer.outputs
    classes = answer.graph.info.classes
    hashes = answer.patch_hashes()
    items = []
    for i in range(len(outputs["embedding"])):
        item: dict[str, Any] = {"embedding": outputs["embedding"][i].tolist()}
        if "probs" in outputs:
            probs = outputs["probs"][i]
            item["label"] = classes[int(np.argmax(probs))]
            item["probs"] = dict(zip(classes, (float(p) for p in probs), strict=True))
        if answer.patch_index is not None:
            item["patch_index"] = int(answer.patch_index[i])
            item["patch_hash"] = hashes[i]
        items.append(item)
    return {
        "classes": classes,
        "predictions": items,
        "alias": answer.alias,
        "patch_hash": answer.patch_hash(),
        "model_version": answer.model_version,
    }
