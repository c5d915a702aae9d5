"""The search: which latents to suppress, and how far, so that the mistake and its look-alikes are fixed.

1. Propose latents. A latent is a candidate cause when it fires on every misclassified image, pushes
   the look-alikes and the misclassified images towards the wrong class (activation x gradient,
   aggregated), and fires on the look-alikes more often than on the rest of the pool. The last term
   is the label-free twin of `selective_latents`: the neighbourhood stands in for a labelled group.
2. Sweep. Suppress the top-k proposed latents for a grid of k, each at a grid of doses (scale 0.5,
   0.25, 0: only suppression, never inversion, so an image where none of them fires is untouched).
   Each candidate runs only the blocks after the hook over cached activations of a search sample.
3. Score each candidate without labels (`objective`) and re-measure the best on the whole pool.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from steerpatch.validate.metrics import kl_rows

DOSES = (0.5, 0.25, 0.0)  # scale values: halve, quarter, remove
SIZES = (1, 2, 4, 8, 12, 16, 24, 32, 40, 48, 64)
RIPPLE_WEIGHT = 2.0  # a prediction changed outside the failure costs twice what moving a failure earns


@dataclass
class Candidate:
    """One candidate fix and what it did on the pool.

    Attributes:
        latents: the suppressed latents, in proposal order.
        op: the patch op.
        value: the op's value (the dose).
        objective: label-free measurements (see `objective`).
    """

    latents: list[int]
    op: str
    value: float
    objective: dict[str, float] = field(default_factory=dict)

    @property
    def edits(self) -> list[tuple[int, str, float]]:
        return [(latent, self.op, self.value) for latent in self.latents]

    def key(self) -> tuple:
        return (tuple(self.latents), self.op, self.value)


def propose_latents(
    target_share: torch.Tensor, lookalike_share: torch.Tensor, target_codes: torch.Tensor,
    pool_fires: torch.Tensor, lookalikes: np.ndarray, rest: np.ndarray,
) -> tuple[list[int], dict[int, float]]:
    """Latents ranked by how selectively they fire on the look-alikes, among those that cause the mistake.

    Args:
        target_share: (T, d_sae) share of each misclassified image's wrong-vs-right margin per latent.
        lookalike_share: (L, d_sae) share of each look-alike's margin for its (wrong) prediction.
        target_codes: (T, d_sae) image codes of the misclassified images.
        pool_fires: (N, d_sae) booleans, latent fires anywhere on the image.
        lookalikes: pool positions of the look-alikes.
        rest: pool positions of the rest.

    Returns:
        (latent indices best first, {latent: selectivity}).
    """
    fires_l = pool_fires[lookalikes].float().mean(0) if len(lookalikes) else torch.zeros(pool_fires.shape[1])
    fires_r = pool_fires[rest].float().mean(0) if len(rest) else torch.zeros(pool_fires.shape[1])
    selectivity = fires_l - fires_r
    push = target_share.mean(0) + (lookalike_share.mean(0) if len(lookalike_share) else 0.0)
    eligible = (target_codes > 0).all(dim=0) & (push > 0) & (selectivity > 0)
    order = [int(i) for i in torch.argsort(selectivity, descending=True).tolist() if bool(eligible[i])]
    return order, {i: float(selectivity[i]) for i in order}


def objective(
    pred_before: np.ndarray, pred_after: np.ndarray, probs_before: np.ndarray, probs_after: np.ndarray,
    *, wrong: set[int], lookalikes: np.ndarray, target_fixed: float, weights: np.ndarray | None = None,
) -> dict[str, float]:
    """Label-free measurements of one candidate on (a sample of) the pool.

    Args:
        pred_before: predicted class per pool image without the patch.
        pred_after: with the patch.
        probs_before: class probabilities without the patch.
        probs_after: with the patch.
        wrong: the wrong classes of the misclassified images.
        lookalikes: positions of the look-alikes in these arrays.
        target_fixed: share of the misclassified images now given the right class.
        weights: per-image weight making a sample stand for the whole pool (None: all 1).

    Returns:
        {"targets_fixed", "lookalikes_moved", "failure_moved", "ripple", "kl_rest", "score"}: shares of
        the look-alikes and of all images predicted a wrong class that left it, the share of the other
        images whose prediction changed, their mean KL, and score = failure_moved_share -
        RIPPLE_WEIGHT x ripple_share (both over the whole pool).
    """
    w = np.ones(len(pred_before)) if weights is None else np.asarray(weights, dtype=np.float64)
    failing = np.isin(pred_before, sorted(wrong))
    moved = failing & ~np.isin(pred_after, sorted(wrong))
    changed = ~failing & (pred_after != pred_before)
    total = max(w.sum(), 1e-12)
    kl = kl_rows(probs_before[~failing], probs_after[~failing]) if (~failing).any() else np.zeros(1)
    in_l = np.zeros(len(pred_before), dtype=bool)
    in_l[lookalikes] = True
    return {
        "targets_fixed": float(target_fixed),
        "lookalikes_moved": float(moved[in_l].mean()) if in_l.any() else 0.0,
        "failure_moved": float((w * moved).sum() / max((w * failing).sum(), 1e-12)),
        "ripple": float((w * changed).sum() / max((w * ~failing).sum(), 1e-12)),
        "kl_rest": float(np.average(kl, weights=w[~failing]) if (~failing).any() else 0.0),
        "score": float(((w * moved).sum() - RIPPLE_WEIGHT * (w * changed).sum()) / total),
    }


def rank(candidates: list[Candidate], max_ripple: float) -> list[Candidate]:
    """Best first: every misclassified image fixed, ripple within budget, then score, then fewer edits.

    Among candidates that all break the ripple budget, the one that breaks it least comes first: the
    budget is the rule, and the score would otherwise favour the largest edit.
    """

    def key(c: Candidate) -> tuple:
        o = c.objective
        over = o["ripple"] > max_ripple
        return (o["targets_fixed"] < 1.0, over, o["ripple"] if over else 0.0, -o["score"], len(c.latents), -c.value)

    return sorted(candidates, key=key)


def distinct(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates without repeats: the same edits, or the same measured effect (keeping the first)."""
    seen: set = set()
    out = []
    for c in candidates:
        effect = tuple(round(c.objective.get(k, 0.0), 9) for k in sorted(c.objective))
        if c.key() in seen or effect in seen:
            continue
        seen.update({c.key(), effect})
        out.append(c)
    return out


def sweep(
    order: list[int], evaluate: Callable[[Candidate], dict[str, float]], *, budget: int,
    sizes=SIZES, doses=DOSES, on_step: Callable[[Candidate], Any] | None = None,
) -> list[Candidate]:
    """Evaluate the top-k suppressions of `order` over a grid of k and doses, within `budget` evaluations.

    Sizes beyond the proposal are dropped; when the grid exceeds the budget, sizes are thinned evenly
    (the smallest and largest kept).

    Returns:
        The evaluated candidates, in evaluation order.
    """
    ks = sorted({k for k in sizes if k <= len(order)} | ({len(order)} if order and len(order) < max(sizes) else set()))
    per_k = len(doses)
    if ks and len(ks) * per_k > budget:
        keep = max(1, budget // per_k)
        ks = sorted({ks[round(i * (len(ks) - 1) / max(keep - 1, 1))] for i in range(keep)})
    out: list[Any] = []
    for k in ks:
        for dose in doses:
            if len(out) >= budget:
                return out
            candidate = Candidate(latents=order[:k], op="scale", value=float(dose))
            candidate.objective = evaluate(candidate)
            out.append(candidate)
            if on_step is not None:
                on_step(candidate)
    return out


def refine(
    best: Candidate, order: list[int], evaluate: Callable[[Candidate], dict[str, float]], *, budget: int,
    max_ripple: float, on_step: Callable[[Candidate], Any] | None = None,
) -> list[Candidate]:
    """Greedy local search around the best sweep candidate: add the next proposed latents, drop weak ones.

    A move is kept when the candidate still fixes every misclassified image, stays within the ripple
    budget, and scores higher. Additions are tried in proposal order just past the sweep's cut;
    removals from the end of the included list (the least selective latents first).

    Returns:
        Every candidate evaluated, in order (the improved ones among them).
    """
    out: list[Candidate] = []
    current = best

    def better(c: Candidate) -> bool:
        o, p = c.objective, current.objective
        return o["targets_fixed"] >= 1.0 and o["ripple"] <= max_ripple and o["score"] > p["score"]

    moves = []
    for latent in order[len(best.latents):]:
        moves.append(("add", latent))
    for latent in reversed(best.latents):
        moves.append(("drop", latent))
    adds = [m for m in moves if m[0] == "add"][: budget // 2]
    drops = [m for m in moves if m[0] == "drop"]
    for kind, latent in adds + drops:
        if len(out) >= budget:
            break
        if kind == "add":
            latents = [*current.latents, latent]
        elif latent in current.latents and len(current.latents) > 1:
            latents = [i for i in current.latents if i != latent]
        else:
            continue
        trial = Candidate(latents=latents, op=current.op, value=current.value)
        trial.objective = evaluate(trial)
        out.append(trial)
        if on_step is not None:
            on_step(trial)
        if better(trial):
            current = trial
    return out
