"""Validation on Spark: the local engine's report, with the images scored on Spark executors.

The patch is compiled to ONNX graphs on the driver (the unsteered encoder, and the steered encoder
at every dose-response strength), the graphs are shipped to the executors, and one pass over the
dataset runs them all on each image. Only per-image probabilities and embedding cosines come back;
the report is then built by the same code as the local engine's, so the two agree in every count
and, within float tolerance, in every metric.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from steerpatch.errors import DatasetError, PatchError
from steerpatch.spark import runner
from steerpatch.spark.progress import spark_progress
from steerpatch.spark.scoring import ship_graph, task_threads
from steerpatch.spark.session import ship_runner, spark_session
from steerpatch.spark.sources import folder_frame
from steerpatch.validate import ImageResults, Validator
from steerpatch.validate.scorer import _labels, check_decoded, group_values

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession


@dataclass
class SparkRun:
    """Per-image outputs of one dataset, computed on Spark; stands where the local engine keeps activations.

    Attributes:
        ids: ids of the images that decoded, in dataset order.
        undecodable: (id, reason) for every image that could not be read.
        probs_before: unsteered class probabilities, (N, C).
        probs_after: strength -> steered class probabilities, (N, C).
        cos: strength -> cosine between unsteered and steered embeddings, (N,).
        features: unsteered image embeddings, (N, E) float32, for the ceiling baseline (as the local
            engine's `CachedActivations.features`).
    """

    ids: list[str]
    undecodable: list[tuple[str, str]]
    probs_before: np.ndarray
    probs_after: dict[float, np.ndarray]
    cos: dict[float, np.ndarray]
    features: np.ndarray
    _local: Any = field(default=None, repr=False)

    @property
    def hidden(self) -> Any:
        """Hook activations, computed locally only when a blast-radius prediction needs them.

        The SAE's stored latent statistics normally answer that prediction; without them the
        firing rates are measured on this machine, as the local engine does.
        """
        if self._local is None:
            raise AttributeError("hook activations are not available for this Spark run")
        return self._local().hidden


@dataclass
class CompiledSet:
    """The graphs of one validation: the unsteered encoder and the steered one per strength."""

    before: Path
    after: dict[float, Path]
    preprocess: dict[str, Any]
    folder: Any = field(repr=False)


class SparkScorer:
    """A scorer (`steerpatch.validate.scorer.Scorer`) that runs compiled ONNX graphs on Spark executors.

    For each patch it compiles the unsteered graph and the steered one per strength, and scores each
    dataset once with all of them; `score` then only picks a strength's rows. The floor baseline's
    random patches (`score_patches`) take one more pass, and the unsteered embeddings the ceiling
    re-fits on come back with a dataset's first pass (kept per dataset: they do not depend on the patch).

    Args:
        spark: a running SparkSession.
        partitions: Spark partitions per dataset pass (default: see `spark_frame`).
    """

    engine = "spark"

    def __init__(self, spark: SparkSession, partitions: int | None = None) -> None:
        self.spark = spark
        self.partitions = partitions
        self.compiled: CompiledSet | None = None
        self._runs: dict[str, SparkRun] = {}
        self._features: dict[str, tuple[list[str], np.ndarray]] = {}  # model:dataset fingerprint -> (ids, embeddings)

    @contextmanager
    def session(self, validator: Validator, patch: Any, strengths: Sequence[float]) -> Iterator[CompiledSet]:
        """Compile the patch at 1.0 and every strength for the validation inside; clean up after it."""
        self.compiled = self.compile(validator, patch, sorted({1.0, *strengths}))
        self._runs.clear()
        try:
            yield self.compiled
        finally:
            self.compiled.folder.cleanup()
            self.compiled = None

    def compile(self, validator: Validator, patch: Any, strengths: list[float]) -> CompiledSet:
        """Compile the unsteered graph and the patch at each strength into a temporary folder.

        Raises:
            PatchError / SAEError: the patch does not fit the model or SAE.
            CompileError: a graph fails its parity check.
        """
        from steerpatch.compile import build_graph
        from steerpatch.compile.export import export_graph, serialize
        from steerpatch.validate import at_strength

        folder = tempfile.TemporaryDirectory(prefix="steerpatch-spark-")
        root = Path(folder.name)
        after: dict[float, Path] = {}
        info = None
        for i, strength in enumerate(strengths):
            edits = at_strength(patch.edits, strength) if strength != 1.0 else list(patch.edits)
            after[strength] = root / f"steered-{i}.onnx"
            info = self._compile_one(validator, patch.model_copy(update={"edits": edits}), after[strength])
        module, _, _, _ = build_graph(validator.model, None, None, validator.head)
        before = root / "unsteered.onnx"
        before.write_bytes(serialize(export_graph(module, validator.model.image_size, module.output_names)))
        if info is None:  # pragma: no cover - strengths always holds 1.0
            raise PatchError(f"patch {patch.ref} compiled to no graph")
        preprocess = runner.Preprocess.from_dict(info.preprocessing.model_dump()).to_dict()
        return CompiledSet(before, after, preprocess, folder)

    @staticmethod
    def _compile_one(validator: Validator, patch: Any, out: Path) -> Any:
        """Compile one patch (parity-gated) to `out`; returns the graph's compile record."""
        from steerpatch.compile import compile_patch

        return compile_patch(patch, model=validator.model, sae=validator.sae, classes=validator.classes, out=out,
                             progress=validator.progress).info

    def activations(self, validator: Validator, dataset: Any, block: int) -> SparkRun:
        """Score a dataset on Spark with every compiled graph (once per dataset), then apply the data policy.

        Raises:
            DatasetError: undecodable images beyond the policy, or none decodable.
        """
        key = str(dataset.root)
        if key not in self._runs:
            self._runs[key] = self._run(validator, dataset, block)
        run = self._runs[key]
        if run.undecodable and validator.policy.data.on_undecodable == "fail":
            raise DatasetError(run.undecodable[0][1])
        check_decoded(dataset, run.ids, run.undecodable, validator.policy.data)
        return run

    def _compiled(self) -> CompiledSet:
        if self.compiled is None:
            raise PatchError("SparkScorer needs a compiled patch; call Validator.validate(patch)")
        return self.compiled

    def _pass(self, validator: Validator, dataset: Any, after: list[Path], *, embedding: bool, desc: str) -> Any:
        """One Spark pass over a dataset: the unsteered graph and every `after` graph on each image.

        Returns:
            The rows of `runner.compare_frames`, as a pandas frame.
        """
        from pyspark.sql import functions as F

        compiled = self._compiled()
        ship_runner()
        spark = self.spark
        with spark_progress(spark, desc, enabled=validator.progress):
            items = spark.createDataFrame([(item.id,) for item in dataset.items], "id string")
            frame = folder_frame(spark, str(Path(dataset.root).resolve()))
            frame = frame.join(F.broadcast(items), on="id", how="inner")
            partitions = self.partitions or max(spark.sparkContext.defaultParallelism, -(-len(dataset) // 256))
            body = runner.partition_function(
                runner.compare_frames,
                before=ship_graph(spark, compiled.before),
                after=[ship_graph(spark, path) for path in after],
                preprocess=compiled.preprocess, batch_size=validator.batch_size, threads=task_threads(spark),
                embedding=embedding,
            )
            return frame.repartition(partitions).mapInPandas(body, runner.compare_schema(embedding)).toPandas()

    def _run(self, validator: Validator, dataset: Any, block: int) -> SparkRun:
        strengths = list(self._compiled().after)
        key = f"{validator.model.fingerprint}:{validator.fingerprint(dataset)}"  # embeddings depend on both
        known = self._features.get(key)
        rows = self._pass(validator, dataset, [self._compiled().after[s] for s in strengths], embedding=known is None,
                          desc=f"validating on spark ({len(dataset)} images)")
        by_id = {row.id: row for row in rows.itertuples(index=False)}
        ids, undecodable = [], []
        for item in dataset.items:
            row = by_id.get(item.id)
            if row is None:
                undecodable.append((item.id, f"cannot read image '{item.id}': the file is missing"))
            elif isinstance(row.error, str):  # pandas reads a null string as None or NaN
                undecodable.append((item.id, f"cannot read image '{item.id}': {row.error}"))
            else:
                ids.append(item.id)
        decoded = [by_id[i] for i in ids]
        n_classes = len(validator.classes)
        probs_before = _matrix([r.probs_before for r in decoded], n_classes)
        probs_after = {s: _matrix([r.probs_after[j] for r in decoded], n_classes) for j, s in enumerate(strengths)}
        cos = {s: np.asarray([r.cos[j] for r in decoded], dtype=np.float64) for j, s in enumerate(strengths)}
        if known is None:
            features = np.asarray([np.asarray(r.embedding, dtype=np.float32) for r in decoded], dtype=np.float32)
            known = self._features[key] = (ids, features.reshape(len(ids), -1) if ids else features.reshape(0, 0))
        features = _reorder(known, ids, dataset)

        def local() -> Any:
            return validator.cache.get(validator.model, dataset, block, batch_size=validator.batch_size,
                                       on_undecodable=validator.policy.data.on_undecodable,
                                       progress=validator.progress)

        return SparkRun(ids, undecodable, probs_before, probs_after, cos, features, _local=local)

    def score_patches(self, validator: Validator, patches: Sequence[Any], dataset: Any,
                      cached: SparkRun) -> list[ImageResults]:
        """Compile each patch (strength 1) and score them all in one more Spark pass (the floor's random patches).

        Raises:
            DatasetError: an image scored in the dataset's first pass is missing or unreadable in this one.
        """
        if not patches:
            return []
        root = Path(self._compiled().folder.name)
        first = len(list(root.glob("extra-*.onnx")))
        paths = [root / f"extra-{first + i}.onnx" for i in range(len(patches))]
        for patch, path in zip(patches, paths, strict=True):
            self._compile_one(validator, patch, path)
        rows = self._pass(validator, dataset, paths, embedding=False,
                          desc=f"scoring {len(patches)} baseline patches on spark ({len(dataset)} images)")
        by_id = {row.id: row for row in rows.itertuples(index=False)}
        lost = [i for i in cached.ids if i not in by_id or isinstance(by_id[i].error, str)]
        if lost:
            raise DatasetError(
                f"image '{lost[0]}' of '{dataset.root}' scored in the first pass but not in the baseline pass; "
                "the data changed during validation, run it again"
            )
        decoded = [by_id[i] for i in cached.ids]
        n_classes = len(validator.classes)
        return [
            _results(validator, dataset, cached, _matrix([r.probs_after[j] for r in decoded], n_classes),
                     np.asarray([r.cos[j] for r in decoded], dtype=np.float64), grouped=False)
            for j in range(len(patches))
        ]

    def score(self, validator: Validator, patch: Any, dataset: Any, cached: SparkRun, *, strength: float = 1.0,
              grouped: bool = False) -> ImageResults:
        """The rows of one compiled strength as `ImageResults`."""
        if strength not in cached.probs_after:
            raise PatchError(f"strength {strength} was not compiled for this run; compiled: {sorted(cached.probs_after)}")
        return _results(validator, dataset, cached, cached.probs_after[strength], cached.cos[strength], grouped=grouped)


def _matrix(values: list[Any], width: int) -> np.ndarray:
    return np.asarray([np.asarray(v, dtype=np.float64) for v in values]).reshape(len(values), width)


def _reorder(known: tuple[list[str], np.ndarray], ids: list[str], dataset: Any) -> np.ndarray:
    """The kept embeddings of a dataset, in the rows of `ids`."""
    index = {item_id: row for row, item_id in enumerate(known[0])}
    missing = [i for i in ids if i not in index]
    if missing:  # the same fingerprint (file hashes) decodes the same images, so this means a changed folder
        raise DatasetError(f"image '{missing[0]}' of '{dataset.root}' has no embedding from an earlier pass; "
                           "the data changed during validation, run it again")
    return known[1][[index[i] for i in ids]]


def _results(validator: Validator, dataset: Any, run: SparkRun, probs_after: np.ndarray, cos: np.ndarray, *,
             grouped: bool) -> ImageResults:
    """`ImageResults` from a run's unsteered probabilities and one steered graph's rows."""
    return ImageResults(
        ids=list(run.ids),
        labels=_labels(dataset, run.ids, validator.classes),
        pred_before=run.probs_before.argmax(-1),
        pred_after=probs_after.argmax(-1),
        probs_before=run.probs_before,
        probs_after=probs_after,
        cos=cos,
        classes=list(validator.classes),
        groups=group_values(dataset, run.ids, validator.group_by) if grouped else None,
    )


class SparkValidator(Validator):
    """A `Validator` whose scorer is a `SparkScorer`: per-image work on Spark executors over compiled graphs.

    Args:
        model, sae, dataset: as for `Validator`.
        spark: a running SparkSession; default `spark_session(master)`.
        master: Spark master URL when no session is given (default local[2]).
        partitions: Spark partitions per dataset pass (default: see `spark_frame`).
        **kwargs: the other `Validator` arguments (classes, group_by, policy, batch_size, progress).

    Example:
        >>> validator = SparkValidator(loaded, sae, "world/test", master="local[2]", group_by="shortcut")  # doctest: +SKIP
        >>> report = validator.validate(patch)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        sae: Any,
        dataset: Any,
        *,
        spark: SparkSession | None = None,
        master: str | None = None,
        partitions: int | None = None,
        **kwargs: Any,
    ) -> None:
        scorer = SparkScorer(spark if spark is not None else spark_session(master), partitions)
        super().__init__(model, sae, dataset, scorer=scorer, **kwargs)


def validate_on_spark(
    patch: Any,
    dataset: Any,
    *,
    model: Any = None,
    sae: Any = None,
    targets: Any = None,
    same_failure: Any = None,
    group_by: str | None = None,
    policy: Any = None,
    classes: list[str] | None = None,
    progress: bool = True,
    dose: bool = True,
    allow_fingerprint_mismatch: bool = False,
    master: str | None = None,
    spark: SparkSession | None = None,
    partitions: int | None = None,
) -> Any:
    """`steerpatch.validate.validate_patch` with the images scored on Spark executors.

    Takes the same arguments, plus where to run: `master` (a Spark master URL, default local[2])
    or an existing `spark` session, and the number of `partitions` per dataset pass.

    Returns:
        The `ValidationReport`, with `engine` "spark".

    Raises:
        MissingDependencyError: pyspark or Java is missing.
        PatchError, DatasetError, CompileError: as the local engine, plus a graph failing parity.

    Example:
        >>> report = validate_on_spark("patch.json", "world/test", group_by="shortcut")  # doctest: +SKIP
        >>> report.engine, report.verdict  # doctest: +SKIP
        ('spark', 'pass')
    """
    from steerpatch.validate.runner import resolve_patch_inputs

    started = time.perf_counter()
    patch, model, sae = resolve_patch_inputs(patch, model, sae)
    validator = SparkValidator(
        model, sae, dataset, spark=spark, master=master, partitions=partitions,
        classes=classes, group_by=group_by, policy=policy, progress=progress,
    )
    report = validator.validate(
        patch, targets=targets, same_failure=same_failure, dose=dose,
        allow_fingerprint_mismatch=allow_fingerprint_mismatch,
    )
    # the compile step ran before the validator's own clock started
    return report.model_copy(update={"duration_s": time.perf_counter() - started})
