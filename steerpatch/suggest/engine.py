"""`suggest`: from one or a few misclassified images and an unlabelled pool, candidate patches, best first.

The pool's hook activations are computed once (the validation prefix cache); every candidate then
costs the blocks after the hook over a search sample, a fraction of a forward pass. See `search.py`
for the method and the README section "Suggest a fix" for why it generalises.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steerpatch.errors import SteerpatchError
from steerpatch.suggest.search import Candidate, distinct, rank

METHOD = "lookalike-selective-suppression/1"


@dataclass
class Suggestion:
    """What `suggest` found.

    Attributes:
        candidates: the re-measured candidates, best first (objective values on the whole pool).
        trace: every candidate evaluated during the search (objective values on the search sample).
        inputs: what the search was given (images, label, pool size, neighbourhood, budget).
        timings: wall seconds per stage, and evaluations per second.
        patches: the patch of each of `candidates`, same order.
        name: the name every candidate patch carries (they are alternatives for one fix); None names
            them `suggest-<label>-c<rank>`.
    """

    candidates: list[Candidate]
    trace: list[Candidate]
    inputs: dict[str, Any]
    timings: dict[str, float]
    patches: list[Any] = field(default_factory=list)
    name: str | None = None

    def file_stem(self, rank: int) -> str:
        """The file name (without `.json`) of the rank-th candidate's patch (1 = best)."""
        return f"{self.name}-c{rank}" if self.name else self.patches[rank - 1].name


def _say(progress: Callable[[str], Any] | None, text: str) -> None:
    if progress is not None:
        progress(text)


@torch.no_grad()
def _prefix(loaded, images, block: int) -> torch.Tensor:
    from steerpatch.models import preprocess_batch
    from steerpatch.models.tower import encode_prefix

    return encode_prefix(loaded.model, preprocess_batch(loaded, images), block)


def _subset(cached, rows: np.ndarray):
    from steerpatch.validate.cache import CachedActivations

    index = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    return CachedActivations(
        ids=[cached.ids[i] for i in index.tolist()], hidden=cached.hidden[index], features=cached.features[index],
        undecodable=[],
    )


def _acceptable(candidate: Candidate, max_ripple: float) -> bool:
    return candidate.objective["targets_fixed"] >= 1.0 and candidate.objective["ripple"] <= max_ripple


def _within_budget_on_pool(trace, max_ripple, on_pool, measured, progress) -> list[Candidate]:
    """Candidates re-measured on the whole pool under tighter sample thresholds, until one keeps the budget.

    The search sample estimates ripple, and picking the best of many candidates on it favours those it
    under-estimates: when every re-measured top candidate breaks the budget on the whole pool, the
    ripple budget is still the rule, so the best candidate under 3/4, 1/2 and 1/4 of the budget on
    the sample is re-measured in turn (each a gentler edit) until one keeps it.
    """
    found = []
    for factor in (0.75, 0.5, 0.25):
        ranked = [c for c in distinct(rank(trace, max_ripple * factor)) if c.key() not in measured]
        if not ranked or not _acceptable(ranked[0], max_ripple * factor):
            continue
        again = on_pool(ranked[0])
        measured.add(again.key())
        found.append(again)
        _say(progress, f"  top candidates break the ripple budget on the whole pool; {len(again.latents)} latents "
                       f"x {again.value:g} (within {factor:g} of it on the sample): ripple {again.objective['ripple']:.1%}")
        if _acceptable(again, max_ripple):
            break
    return found


def suggest(
    loaded,
    sae,
    images: Sequence[str | Path],
    label: str,
    pool: str | Path,
    *,
    classes: Sequence[str] | None = None,
    budget: int = 49,
    refine_budget: int = 16,
    keep: int = 5,
    neighbours: int | None = None,
    sample: int = 600,
    max_ripple: float = 0.02,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: Callable[[str], Any] | None = None,
    name: str | None = None,
) -> Suggestion:
    """Search for patches that fix `images` (truly `label`), fix their look-alikes in `pool`, and change little else.

    Args:
        loaded: the `LoadedModel`.
        sae: the SAE whose latents the patches edit (its hook block and token scope are used).
        images: paths of misclassified images.
        label: their correct class.
        pool: a folder of unlabelled images (labels and manifest are never read).
        classes: class names for the zero-shot head; None reads them from the SAE's statistics.
        budget: candidate evaluations in all (the grid sweep, then `refine_budget` greedy moves).
        refine_budget: evaluations of the greedy refinement around the sweep's best (when the budget
            leaves the sweep at least as many).
        keep: candidates re-measured on the whole pool and returned.
        neighbours: look-alike neighbourhood size; None = 5% of the pool (at least 8).
        sample: images of the rest of the pool in the search sample (all images a wrong class is given are in it).
        max_ripple: largest share of other images whose prediction may change for a candidate to rank first.
        seed: seed of the search sample.
        cache_dir: keep the pool's hook activations here between runs.
        progress: called with one line per stage and per candidate.
        name: the patch name of every candidate (a slug, checked before any work); None names them
            `suggest-<label>-c<rank>`.

    Returns:
        The `Suggestion` (patches built, not written; see `write_suggestion`).

    Raises:
        SteerpatchError: a label that is not a class, an image the model already gets right, an
            empty or foreign pool, a budget below 1.

    Example:
        >>> found = suggest(loaded, sae, ["w/circle/test-00012.png"], "circle", "pool/")  # doctest: +SKIP
        >>> found.candidates[0].objective["failure_moved"]  # doctest: +SKIP
    """
    from steerpatch.models import build_zero_shot_head
    from steerpatch.models.tower import encode_suffix
    from steerpatch.suggest.neighbours import find_lookalikes, image_codes, relative_attribution
    from steerpatch.suggest.pool import check_label, load_pool, load_targets, resolve_classes
    from steerpatch.suggest.search import objective, propose_latents, refine, sweep
    from steerpatch.validate.cache import ActivationCache
    from steerpatch.validate.candidate import score_patch

    if name is not None:
        from steerpatch.patch.format import check_name

        try:
            check_name(name)
        except ValueError as error:
            raise SteerpatchError(f"--name {error}") from None
    if budget < 1 or keep < 1 or refine_budget < 0:
        raise SteerpatchError(
            f"--budget {budget}, --keep {keep} and --refine {refine_budget} must be at least 1, 1 and 0"
        )
    started = time.perf_counter()
    hook = sae.require_hook()
    block, tokens = hook.block, hook.tokens
    classes = resolve_classes(sae, classes)
    right = check_label(label, classes)
    pictures = load_targets(images)
    dataset = load_pool(pool, classes)
    head = build_zero_shot_head(loaded, classes)

    target_hidden = _prefix(loaded, pictures, block)
    with torch.no_grad():
        target_features = encode_suffix(loaded.model, target_hidden, block)
    target_logits = head.logits(target_features)
    target_pred = target_logits.argmax(-1).numpy()
    already = [str(p) for p, q in zip(images, target_pred, strict=True) if q == right]
    if already:
        raise SteerpatchError(
            f"image(s) {already} are already classified as {label!r}; pass images the model gets wrong"
        )
    wrong = {int(q) for q in target_pred}

    _say(progress, f"caching the pool at block {block}: {len(dataset)} images")
    cached = ActivationCache(cache_dir).get(loaded, dataset, block, progress=False, dataset_fingerprint=None)
    if not cached.ids:
        raise SteerpatchError(f"no image of pool '{pool}' could be decoded; pass a folder of readable images")
    t_cache = time.perf_counter()
    probs0 = head.logits(cached.features).softmax(-1).double().numpy()
    pred0 = probs0.argmax(-1)

    pool_codes = image_codes(sae, cached.hidden, tokens)
    target_codes = image_codes(sae, target_hidden, tokens)
    n = len(cached.ids)
    k = neighbours if neighbours is not None else max(8, round(0.05 * n))
    hood = find_lookalikes(pool_codes, target_codes, pred0, wrong, k)
    if not len(hood.lookalikes):
        raise SteerpatchError(
            f"no image of pool '{pool}' is given {', '.join(classes[w] for w in sorted(wrong))} like the image(s); "
            "pass a pool where this mistake recurs (a larger or more varied one)"
        )
    _say(progress, f"look-alikes: {len(hood.lookalikes)} pool images given {', '.join(classes[w] for w in sorted(wrong))} "
         f"and nearest in SAE-code space ({int(np.isin(pred0, sorted(wrong)).sum())} given it in all)")

    target_share = relative_attribution(
        loaded.model, head, sae, target_hidden, block, tokens,
        push=target_pred, against=np.full(len(target_pred), right),
    )
    look_share = relative_attribution(
        loaded.model, head, sae, cached.hidden[torch.as_tensor(hood.lookalikes, dtype=torch.long)], block, tokens,
        push=pred0[hood.lookalikes],
    )
    order, selectivity = propose_latents(target_share, look_share, target_codes, pool_codes > 0, hood.lookalikes, hood.rest)
    if not order:
        raise SteerpatchError(
            "no SAE latent both fires on the image(s) and pushes them and their look-alikes to the wrong class; "
            "this mistake is not carried by a concept this SAE separates"
        )
    _say(progress, f"proposed {len(order)} latents (top: {', '.join(map(str, order[:8]))})")
    t_propose = time.perf_counter()

    # the search sample: every image given a wrong class, plus a seeded sample of the others, reweighted
    failing = np.flatnonzero(np.isin(pred0, sorted(wrong)))
    others = np.setdiff1d(np.arange(n), failing)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(others, size=min(sample, len(others)), replace=False)) if len(others) else others
    rows = np.concatenate([failing, picked])
    weights = np.concatenate([np.ones(len(failing)), np.full(len(picked), len(others) / max(len(picked), 1))])
    search_set = _subset(cached, rows)
    in_sample_l = np.flatnonzero(np.isin(rows, hood.lookalikes))
    from steerpatch.validate.cache import CachedActivations

    target_set = CachedActivations(
        ids=[str(p) for p in images], hidden=target_hidden, features=target_features,
        undecodable=[],
    )
    target_labels = np.full(len(pictures), right)

    def measure(candidate: Candidate, on, labels_, weights_, lookalike_rows) -> dict[str, float]:
        patch = build_patch(loaded, sae, candidate, label=label, tokens=tokens)
        fixed = score_patch(loaded.model, head, sae, patch, target_set, labels=target_labels)
        result = score_patch(loaded.model, head, sae, patch, on, labels=labels_)
        return objective(
            result.pred_before, result.pred_after, result.probs_before, result.probs_after, wrong=wrong,
            lookalikes=lookalike_rows, target_fixed=float(fixed.right_after.mean()), weights=weights_,
        )

    zeros = np.zeros(len(rows), dtype=np.int64)
    step = [0]

    def report(candidate: Candidate) -> None:
        step[0] += 1
        o = candidate.objective
        _say(progress, f"[{step[0]}/{budget}] {len(candidate.latents):3d} latents x {candidate.value:<4g} "
             f"fixed {o['targets_fixed']:.0%}  failure moved {o['failure_moved']:.1%}  ripple {o['ripple']:.1%}")

    def on_sample(c: Candidate) -> dict[str, float]:
        return measure(c, search_set, zeros, weights, in_sample_l)

    sweep_budget = budget - refine_budget if budget > 2 * refine_budget else budget
    trace = sweep(order, on_sample, budget=sweep_budget, on_step=report)
    if budget > sweep_budget:
        trace += refine(rank(trace, max_ripple)[0], order, on_sample, budget=budget - sweep_budget,
                        max_ripple=max_ripple, on_step=report)
    t_sweep = time.perf_counter()
    best = distinct(rank(trace, max_ripple))[:keep]
    _say(progress, f"re-measuring the best {len(best)} on all {n} pool images")

    def on_pool(c: Candidate) -> Candidate:
        again = Candidate(latents=list(c.latents), op=c.op, value=c.value)
        again.objective = measure(again, cached, np.zeros(n, dtype=np.int64), None, hood.lookalikes)
        return again

    final = [on_pool(c) for c in best]
    if not any(_acceptable(c, max_ripple) for c in final):
        final += _within_budget_on_pool(trace, max_ripple, on_pool, {c.key() for c in final}, progress)
    final = rank(final, max_ripple)[:keep]
    t_final = time.perf_counter()
    inputs = {
        "images": [str(p) for p in images], "label": label, "wrong": [classes[w] for w in sorted(wrong)],
        "pool": str(pool), "pool_images": n, "neighbours": len(hood.lookalikes), "budget": budget,
        "search_sample": len(rows), "max_ripple": max_ripple, "seed": seed, "classes": classes,
        "proposed": order[:64], "selectivity": {str(i): round(selectivity[i], 4) for i in order[:64]},
        "target_share": {str(i): round(float(target_share[:, i].mean()), 4) for i in order[:64]},
    }
    timings = {
        "cache_s": t_cache - started, "propose_s": t_propose - t_cache, "sweep_s": t_sweep - t_propose,
        "final_s": t_final - t_sweep, "total_s": t_final - started,
        "evaluations": float(len(trace) + len(final)),
        "evaluations_per_s": len(trace) / max(t_sweep - t_propose, 1e-9),
    }
    found = Suggestion(candidates=final, trace=trace, inputs=inputs, timings=timings, name=name)
    found.patches = [
        build_patch(loaded, sae, c, label=label, tokens=tokens, rank_=i + 1, inputs=inputs, images=images,
                    target_pred=[classes[q] for q in target_pred], target_share=target_share, name=name)
        for i, c in enumerate(final)
    ]
    return found


def build_patch(loaded, sae, candidate: Candidate, *, label: str, tokens, rank_: int = 0, inputs=None, images=(),
                target_pred=(), target_share=None, name: str | None = None):
    """The patch of a candidate; with `inputs`, its provenance records the method, inputs and objective.

    Its name is `name`, else `suggest-<label>-c<rank>` (`suggest-<label>` without a rank).
    """
    import json

    from steerpatch.io import sha256_file
    from steerpatch.patch import Instance, Provenance, new_patch

    provenance = None
    if inputs is not None:
        instances = [
            Instance(
                id=str(path), image_sha256=sha256_file(path), label=label, predicted=predicted,
                scores={str(i): float(target_share[j, i]) for i in candidate.latents},
            )
            for j, (path, predicted) in enumerate(zip(images, target_pred, strict=True))
        ]
        record = {
            "method": METHOD, "rank": rank_,
            "inputs": {key: inputs[key] for key in ("images", "label", "wrong", "pool", "pool_images", "neighbours",
                                                     "budget", "search_sample", "max_ripple", "seed")},
            "objective": {key: round(value, 6) for key, value in candidate.objective.items()},
        }
        provenance = Provenance(instances=instances, note="steerpatch suggest " + json.dumps(record, sort_keys=True))
    slug = "".join(ch if ch.isalnum() else "-" for ch in label.lower()).strip("-") or "class"
    return new_patch(
        name or (f"suggest-{slug}-c{rank_}" if rank_ else f"suggest-{slug}"), loaded, sae, candidate.edits,
        rationale=(f"Suppress {len(candidate.latents)} latents (scale {candidate.value:g}) that fire selectively on "
                   f"look-alikes of images wrongly given {', '.join(target_pred) or 'another class'} instead of {label!r}."),
        author="steerpatch suggest", tokens=tokens, provenance=provenance,
    )
