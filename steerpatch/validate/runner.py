"""The validation engine: resolve the inputs, check them, score the patch, build the report.

The per-image work is a scorer's (`scorer.py`): the local one runs the model twice at most per
dataset, once up to the hook (cached) and once after it per candidate and dose point. Everything
the report needs beyond that is counting, in `report.py`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steerpatch.errors import DatasetError, SAEError, SteerpatchError
from steerpatch.validate.cache import ActivationCache, CachedActivations
from steerpatch.validate.policy import Policy, load_policy
from steerpatch.validate.report import ValidationReport, build_report
from steerpatch.validate.scorer import LocalScorer, Scorer, group_values


def _as_dataset(data):
    from steerpatch.data import load_dataset

    return load_dataset(data) if isinstance(data, (str, Path)) else data


def check_classes(dataset, classes: Sequence[str] | None) -> list[str]:
    """The class prompts to classify with, checked against the dataset's labels.

    Args:
        dataset: the labelled dataset.
        classes: class names for the zero-shot head, or None for the dataset's own classes.

    Returns:
        The class list.

    Raises:
        DatasetError: when a label of the dataset has no class prompt, or `classes` repeats a name.
    """
    if classes is None:
        return list(dataset.classes)
    classes = list(classes)
    if len(set(classes)) != len(classes):
        raise DatasetError(f"class prompts {classes} repeat a name; list each class once")
    missing = sorted({item.label for item in dataset.items} - set(classes))
    if missing:
        raise DatasetError(
            f"dataset labels {missing} have no class prompt among {classes}; "
            f"pass classes that cover every label of '{dataset.root}' (its labels: {sorted(dataset.classes)})"
        )
    return classes


def _subset_ids(dataset, spec, what: str) -> list[str]:
    """Item ids of `dataset` named by a list of ids or an attribute filter {attr: value}."""
    if isinstance(spec, Mapping):
        chosen = [item.id for item in dataset.items if all(
            str(item.attributes.get(k)) == str(v) for k, v in spec.items()
        )]
        if not chosen:
            wanted = ", ".join(f"{k}={v}" for k, v in spec.items())
            raise DatasetError(f"{what} filter {wanted} matches no image of '{dataset.root}'; check the attribute")
        return chosen
    ids = list(spec)
    known = {item.id for item in dataset.items}
    unknown = [i for i in ids if i not in known]
    if unknown:
        raise DatasetError(
            f"{what} id(s) {unknown[:5]} are not in '{dataset.root}'; use ids relative to its root, "
            "like 'star/000123.png'"
        )
    return ids


def _predict_blast(patch, sae, cached: CachedActivations, labels, classes, groups, group_by) -> dict[str, Any]:
    from steerpatch.sae import load_latent_stats
    from steerpatch.validate.blast import predict_from_activations, predict_from_stats

    if sae.location:
        try:
            return predict_from_stats(patch.edits, load_latent_stats(sae.location, sae=sae))
        except SAEError:
            pass  # no (or stale) statistics: measure firing rates on this data instead
    return predict_from_activations(
        patch.edits, sae, cached, patch.tokens, labels=labels, classes=classes, groups=groups, group_by=group_by
    )


class Validator:
    """Validate several candidate patches against the same data, sharing the hook-activation cache.

    The per-image work is the `scorer`'s (default `LocalScorer`; `steerpatch.spark.SparkScorer` runs
    it on Spark executors); resolving inputs, baselines, the report and its verdict are the same for all.

    Example:
        >>> validator = Validator(loaded, sae, "world/test", group_by="shortcut")  # doctest: +SKIP
        >>> reports = [validator.validate(p) for p in candidates]
    """

    def __init__(
        self,
        model,
        sae,
        dataset,
        *,
        classes: Sequence[str] | None = None,
        group_by: str | None = None,
        policy: Policy | str | Path | None = None,
        cache: ActivationCache | None = None,
        batch_size: int = 64,
        progress: bool = True,
        rehash: bool = False,
        workers: int | None = None,
        scorer: Scorer | None = None,
        fast_decode: bool = False,
    ) -> None:
        from steerpatch.models import build_zero_shot_head

        self.model = model
        self.sae = sae
        self.dataset = _as_dataset(dataset)
        if len(self.dataset) == 0:
            raise DatasetError(f"dataset '{self.dataset.root}' has no images; point --data at a labelled folder")
        self.policy = policy if isinstance(policy, Policy) else load_policy(policy)
        self.classes = check_classes(self.dataset, classes)
        self.group_by = group_by
        group_values(self.dataset, [], group_by)  # fail on an unknown attribute before any model work
        self.head = build_zero_shot_head(model, self.classes)
        # id(dataset) -> (dataset, fingerprint); holding the dataset keeps its id from being reused
        self._fingerprints: dict[int, tuple[Any, str]] = {}
        self.cache = cache if cache is not None else ActivationCache()
        self.batch_size = batch_size
        self.progress = progress
        self.rehash = rehash  # read every file for the fingerprint, ignoring the memo beside the cache
        self.workers = workers
        self.scorer = scorer if scorer is not None else LocalScorer()
        if fast_decode and not isinstance(self.scorer, LocalScorer):
            raise SteerpatchError(
                f"fast decoding is for images read on this machine; the {self.scorer.engine!r} engine decodes its "
                "own exactly: drop fast_decode (--fast-decode) or use the local engine"
            )
        # opt-in: JPEGs decoded at reduced scale (steerpatch.pixels.draft), pixels approximate; recorded in the report
        self.fast_decode = fast_decode
        self._baselines: dict = {}  # floor and ceiling per (dataset, edit signature); see validate/baselines.py

    def fingerprint(self, dataset) -> str:
        """The dataset's fingerprint, computed once per dataset object (file hashes memoised beside the cache)."""
        if id(dataset) not in self._fingerprints:
            hashes = self.cache.file_hashes(rehash=self.rehash)
            self._fingerprints[id(dataset)] = (dataset, dataset.fingerprint(hashes=hashes))
        return self._fingerprints[id(dataset)][1]

    def activations(self, dataset, block: int):
        """What the scorer scores a dataset from (hook activations, for the local scorer), policy-checked.

        Raises:
            DatasetError: undecodable images beyond the policy, or none decodable.
        """
        return self.scorer.activations(self, dataset, block)

    def _score(self, patch, dataset, cached, *, strength: float = 1.0, grouped: bool = False):
        return self.scorer.score(self, patch, dataset, cached, strength=strength, grouped=grouped)

    def _resolve_set(self, spec, what: str):
        """A target or same-failure spec as a dataset of its own, or as ids into the main data; checked now."""
        from steerpatch.data import ImageDataset

        if spec is None:
            return None
        if isinstance(spec, (str, Path, ImageDataset)):
            dataset = _as_dataset(spec)
            if len(dataset) == 0:
                raise DatasetError(f"{what} dataset '{dataset.root}' has no images")
            check_classes(dataset, self.classes)
            return dataset
        return _subset_ids(self.dataset, spec, what)

    def _set_results(self, patch, resolved, main):
        """Results on a resolved target or same-failure set (undecodable ids left out)."""
        if resolved is None:
            return None
        if isinstance(resolved, list):
            decoded = set(main.ids)
            return main.take(main.positions([i for i in resolved if i in decoded]))
        return self._score(patch, resolved, self.activations(resolved, patch.hook.block))

    def validate(
        self,
        patch,
        *,
        targets=None,
        same_failure=None,
        dose: bool = True,
        allow_fingerprint_mismatch: bool = False,
        engine: str | None = None,
    ) -> ValidationReport:
        """Validate one patch.

        Args:
            patch: a `Patch` (or a path to one).
            targets: the failing instances it was made for: item ids in the dataset, or a dataset (folder).
            same_failure: other instances of the failure: ids, an attribute filter such as
                {"shortcut": "conflicting"}, or a dataset (folder); target ids are excluded.
            dose: measure the dose-response curve at the policy's strengths.
            allow_fingerprint_mismatch: validate even if the patch was made for other weights (recorded).
            engine: the engine name recorded in the report; None records the scorer's.

        Returns:
            The report, verdict included.

        Raises:
            PatchError: the patch does not fit the model or SAE.
            DatasetError: empty data, unknown ids or attributes, labels without class prompts, unreadable images.
        """
        from steerpatch.patch import load_patch

        started = time.perf_counter()
        if isinstance(patch, (str, Path)):
            patch = load_patch(patch)
        strengths = self.policy.dose_response.strengths if dose and patch.edits else []
        with self.scorer.session(self, patch, strengths):
            return self._validate(
                patch, targets, same_failure, strengths, allow_fingerprint_mismatch,
                engine if engine is not None else self.scorer.engine, started,
            )

    def _validate(self, patch, targets, same_failure, strengths, allow_fingerprint_mismatch, engine, started):
        from steerpatch.models.tower import num_blocks, residual_width
        from steerpatch.pixels import FAST_DECODING
        from steerpatch.steer import check_binding

        overrides = check_binding(
            patch, model_fingerprint=self.model.fingerprint, sae=self.sae, n_blocks=num_blocks(self.model),
            width=residual_width(self.model), allow_fingerprint_mismatch=allow_fingerprint_mismatch,
        )
        target_set = self._resolve_set(targets, "target")
        same_set = self._resolve_set(same_failure, "same-failure")
        cached = self.activations(self.dataset, patch.hook.block)
        from steerpatch.validate.blast import estimate_blast  # made before the full evaluation below

        # the estimate ranks every image by the edit's size at the hook, so it needs the hook activations here;
        # an engine that scores elsewhere (Spark) has none on the driver, and already has every image's outcome
        local = isinstance(cached, CachedActivations)
        estimate = (
            estimate_blast(self.model.model, self.head, self.sae, patch, cached, batch_size=self.batch_size)
            if local else None
        )
        results = self._score(patch, self.dataset, cached, grouped=True)
        groups = results.groups
        blast = _predict_blast(patch, self.sae, cached, results.labels, self.classes, groups, self.group_by)
        dose_results = {
            s: (results if s == 1.0 else self._score(patch, self.dataset, cached, strength=s, grouped=True))
            for s in strengths
        }
        report = build_report(
            results,
            patch_ref=patch.ref,
            hashes={
                "patch": patch.content_hash, "model": self.model.fingerprint,
                "sae": self.sae.fingerprint, "dataset": self.fingerprint(self.dataset),
            },
            policy=self.policy,
            targets=self._set_results(patch, target_set, results),
            same_failure=self._set_results(patch, same_set, results),
            group_by=self.group_by,
            blast_predicted=blast,
            dose=dose_results,
            undecodable=[item_id for item_id, _ in cached.undecodable],
            engine=engine,
            decoding=FAST_DECODING if self.fast_decode else "exact",
            overrides=[o.to_dict() for o in overrides],
            duration_s=time.perf_counter() - started,
        )
        return self._with_baselines(report, patch, cached, results, estimate)

    def _with_baselines(self, report, patch, cached, results, estimate):
        """The report with the floor, the ceiling, gap_closed and the blast-radius estimate added.

        The floor's random patches are scored by the scorer (on Spark, on the executors); the ceiling
        re-fits on the embeddings the scorer returned with its results (`cached.features`).
        """
        from steerpatch.validate.baselines import compute_baselines, with_baselines

        floor, ceiling = compute_baselines(
            self._baselines, self.fingerprint(self.dataset), self.head, self.sae, patch, results,
            score=lambda patches: self.scorer.score_patches(self, patches, self.dataset, cached),
            features=cached.features,
        )
        return with_baselines(report, floor=floor, ceiling=ceiling, blast=estimate)


def resolve_patch_inputs(patch, model=None, sae=None):
    """The patch (loaded if given as a path), and the model and SAE it records where none are given.

    Returns:
        `(patch, model, sae)`.
    """
    from steerpatch.patch import load_patch

    if isinstance(patch, (str, Path)):
        patch = load_patch(patch)
    if model is None:
        from steerpatch.models import load_model

        model = load_model(patch.model.id)
    if sae is None:
        from steerpatch.steer import load_patch_sae

        sae = load_patch_sae(patch)
    return patch, model, sae


def validate_patch(
    patch,
    dataset,
    *,
    model=None,
    sae=None,
    targets=None,
    same_failure=None,
    group_by: str | None = None,
    policy: Policy | str | Path | None = None,
    classes: Sequence[str] | None = None,
    progress: bool = True,
    cache: ActivationCache | None = None,
    dose: bool = True,
    allow_fingerprint_mismatch: bool = False,
    rehash: bool = False,
    workers: int | None = None,
    fast_decode: bool = False,
) -> ValidationReport:
    """Validate a patch on a labelled held-out dataset and judge it against the policy's gates.

    Args:
        patch: a `Patch` or the path of a patch file.
        dataset: an `ImageDataset` or its folder.
        model: the `LoadedModel`; None loads `patch.model.id`.
        sae: the `SAE`; None loads `patch.sae.location`.
        targets: failing instances the patch was made for (ids in `dataset`, or a dataset/folder).
        same_failure: other instances of the same failure (ids, an attribute filter dict, or a dataset/folder).
        group_by: a manifest attribute to report accuracy per value of (e.g. "shortcut").
        policy: a `Policy`, a policy file, or None for the default `registry/policy.toml`.
        classes: class prompts for the zero-shot head; None uses the dataset's class folders.
        progress: show progress bars on stderr.
        cache: an `ActivationCache` to share between calls; None makes a fresh one.
        dose: measure the dose-response curve.
        allow_fingerprint_mismatch: validate a patch made for other weights anyway (recorded).
        rehash: read every image file for the dataset fingerprint, ignoring the memo beside the cache.
        workers: image decoding threads (None: one per core, at most four).
        fast_decode: decode JPEGs at reduced scale (`steerpatch.pixels.draft`): several times faster on
            large photos, pixels approximate; recorded as the report's `decoding`. Off by default.

    Returns:
        The `ValidationReport`; `report.verdict` is "pass" or "fail".

    Raises:
        PatchError: a malformed patch, or one bound to another model or SAE.
        DatasetError: empty data, labels without prompts, unknown ids/attributes, unreadable images.

    Example:
        >>> report = validate_patch("registry/patches/water.json", "world/test", group_by="shortcut")  # doctest: +SKIP
        >>> report.verdict, report.groups["conflicting"].after  # doctest: +SKIP
        ('pass', 0.81)
    """
    patch, model, sae = resolve_patch_inputs(patch, model, sae)
    validator = Validator(
        model, sae, dataset, classes=classes, group_by=group_by, policy=policy, cache=cache, progress=progress,
        rehash=rehash, workers=workers, fast_decode=fast_decode,
    )
    return validator.validate(
        patch, targets=targets, same_failure=same_failure, dose=dose,
        allow_fingerprint_mismatch=allow_fingerprint_mismatch,
    )
