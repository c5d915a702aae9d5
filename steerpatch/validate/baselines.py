"""What a patch's numbers mean: a floor (random latents) and a ceiling (re-fitting the last layer).

- The *floor* applies the patch's own ops and values to the same number of randomly drawn latents, a
  few draws, averaged: what an edit of that size does by chance.
- The *ceiling* is DFR-style (Kirichenko et al., "Last Layer Re-Training is Sufficient for Robustness
  to Spurious Correlations"): the classifier on the unpatched image embeddings is re-fitted on a
  group-balanced half of the held-out data, with its group labels, and scored on the other half.
  It uses labels no patch search may see; it is a reference only and never feeds `suggest`.

`gap_closed` = (worst group after - worst group before) / (ceiling worst group - worst group before).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

FLOOR_DRAWS = 3


def _worst(right: np.ndarray, groups: np.ndarray) -> float | None:
    values = [float(right[groups == g].mean()) for g in sorted(set(groups.tolist())) if (groups == g).any()]
    return min(values) if values else None


def floor_patches(patch, sae, *, draws: int = FLOOR_DRAWS, seed: int = 0) -> list:
    """The floor's random patches: the patch's edits moved onto randomly drawn latents, one patch per draw.

    The draws depend on the seed and the number of edits only, so two patches with the same ops and
    values share their floor (see `floor_key`), and every engine scores the same random patches.

    Args:
        patch: the patch.
        sae: the patch's SAE (latents are drawn from its `d_sae`).
        draws: how many random draws.
        seed: seed of the draws.

    Returns:
        `draws` patches (none for a patch without edits).
    """
    if not patch.edits:
        return []
    # drawn from every latent (the patch's own included, by chance): the floor then depends only on the
    # edits' ops and values, so a validator scores it once per edit signature
    rng = np.random.default_rng(seed)
    pool = np.arange(sae.d_sae)
    out = []
    for _ in range(draws):
        chosen = rng.choice(pool, size=min(len(patch.edits), len(pool)), replace=False)
        edits = [e.model_copy(update={"latent": int(i)}) for e, i in zip(patch.edits, chosen, strict=False)]
        out.append(patch.model_copy(update={"edits": edits}))
    return out


def floor_baseline(score: Callable[[list], list], patch, sae, *, groups, draws: int = FLOOR_DRAWS,
                   seed: int = 0) -> dict[str, Any] | None:
    """The patch's ops on as many random latents (`floor_patches`), averaged over `draws` draws.

    Args:
        score: scores patches at strength 1 on the validated data, returning one `ImageResults` per
            patch, rows in the order of `groups`; a validator's scorer provides it
            (`Scorer.score_patches`), so the local engine and Spark score the same random patches.
        patch: the patch.
        sae: the patch's SAE.
        groups: group value per image.
        draws: how many random draws.
        seed: seed of the draws.

    Returns:
        {"worst_group", "accuracy", "draws", "worst_group_draws"}, or None for a patch without edits.

    Example:
        >>> floor_baseline(lambda ps: [score_patch(model, head, sae, p, cached, labels=labels) for p in ps],
        ...                patch, sae, groups=groups)  # doctest: +SKIP
    """
    patches = floor_patches(patch, sae, draws=draws, seed=seed)
    if not patches:
        return None
    group_arr = np.asarray([str(g) for g in groups], dtype=object)
    worst, acc = [], []
    for results in score(patches):
        worst.append(_worst(results.right_after, group_arr))
        acc.append(float(results.right_after.mean()))
    scored = [w for w in worst if w is not None]
    return {
        "worst_group": float(np.mean(scored)) if scored else None,
        "accuracy": float(np.mean(acc)),
        "draws": draws,
        "worst_group_draws": worst,
    }


def floor_key(patch) -> tuple:
    """What the floor of a patch depends on: block, token scope and the ops and values of its edits, in order."""
    return (patch.hook.block, str(patch.tokens), tuple((e.op, float(e.value)) for e in patch.edits))


def ceiling_baseline(features: torch.Tensor, labels: np.ndarray, groups, head, *, seed: int = 0,
                     l2: float = 1e-3, steps: int = 200) -> dict[str, Any] | None:
    """DFR: re-fit the zero-shot head on a group-balanced half of the embeddings; score the other half.

    Cells are (group, class) pairs; the fit half takes the same number of images from every cell it
    has (the smallest cell's count). The head starts from the zero-shot weights and is fitted by
    L-BFGS on cross-entropy with a small L2 pull towards them.

    Args:
        features: unpatched image embeddings, (N, E).
        labels: true class index per image.
        groups: group value per image.
        head: the `ZeroShotHead` to start from.
        seed: seed of the split and the balancing draw.
        l2: strength of the pull towards the zero-shot weights.
        steps: L-BFGS iterations.

    Returns:
        {"worst_group", "accuracy", "before_worst_group", "n_fit", "n_eval", "method"} on the
        evaluation half, or None when there are fewer than two groups or too few images.
    """
    group_arr = np.asarray([str(g) for g in groups], dtype=object)
    labels = np.asarray(labels)
    if len(set(group_arr.tolist())) < 2 or len(labels) < 8:
        return None
    rng = np.random.default_rng(seed)
    fit_half = np.zeros(len(labels), dtype=bool)
    cells: dict[tuple[str, int], list[int]] = {}
    for i, key in enumerate(zip(group_arr.tolist(), labels.tolist(), strict=True)):
        cells.setdefault(key, []).append(i)
    for rows in cells.values():  # split every cell in half, so both halves hold every cell
        shuffled = rng.permutation(rows)
        fit_half[shuffled[: len(shuffled) // 2]] = True
    eval_rows = np.flatnonzero(~fit_half)
    per_cell = min((int(fit_half[rows].sum()) for rows in cells.values() if fit_half[rows].any()), default=0)
    if per_cell == 0:
        return None
    fit_rows = np.concatenate([
        rng.choice(np.asarray(rows)[fit_half[rows]], size=per_cell, replace=False) for rows in cells.values()
        if fit_half[rows].any()
    ])
    x = torch.nn.functional.normalize(features.double(), dim=-1)
    start = head.weights.double() * head.logit_scale
    weight = start.clone().requires_grad_(True)
    bias = torch.zeros(len(head.classes), dtype=torch.float64, requires_grad=True)
    target = torch.as_tensor(labels[fit_rows], dtype=torch.long)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x[fit_rows] @ weight.T + bias, target)
        loss = loss + l2 * ((weight - start) ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    with torch.no_grad():
        pred = (x[eval_rows] @ weight.T + bias).argmax(-1).numpy()
        before = (x[eval_rows] @ start.T).argmax(-1).numpy()
    right = pred == labels[eval_rows]
    return {
        "worst_group": _worst(right, group_arr[eval_rows]),
        "accuracy": float(right.mean()),
        "before_worst_group": _worst(before == labels[eval_rows], group_arr[eval_rows]),
        "n_fit": int(len(fit_rows)),
        "n_eval": int(len(eval_rows)),
        "method": "dfr-balanced-refit/1",
    }


def compute_baselines(memo: dict, dataset_key: str, head, sae, patch, results, *, score: Callable[[list], list],
                      features) -> tuple[dict | None, dict | None]:
    """The floor and ceiling for a patch's report, reusing `memo` across patches validated on the same data.

    Both depend on the data, and the floor on the edits' ops and values, not on which latents a patch
    edits; validating many candidates therefore pays for them once.

    Args:
        memo: a dict the caller keeps between calls.
        dataset_key: the dataset's fingerprint.
        head: the `ZeroShotHead`.
        sae: the SAE.
        patch: the patch.
        results: the patch's `ImageResults` (labels and groups); no baselines when ungrouped.
        score: scores the floor's random patches on the data (see `floor_baseline`); called only
            when the floor is not in `memo`.
        features: unpatched image embeddings, (N, E), rows as in `results` (a tensor or an array).

    Returns:
        (floor, ceiling), each None when not measurable.
    """
    if results.groups is None:
        return None, None
    key = (dataset_key, floor_key(patch))
    if key not in memo:
        memo[key] = floor_baseline(score, patch, sae, groups=results.groups)
    ceiling_key = (dataset_key, "ceiling")
    if ceiling_key not in memo:
        memo[ceiling_key] = ceiling_baseline(torch.as_tensor(features), results.labels, results.groups, head)
    return memo[key], memo[ceiling_key]


def gap_closed(before: float | None, after: float | None, ceiling: float | None) -> float | None:
    """(after - before) / (ceiling - before); None when any is missing or the ceiling is not above before."""
    if before is None or after is None or ceiling is None or ceiling - before <= 1e-9:
        return None
    return (after - before) / (ceiling - before)


def with_baselines(report, *, floor: dict | None, ceiling: dict | None, blast: dict | None):
    """The report with `baselines`, `gap_closed` and `blast_radius` filled in (a copy).

    Args:
        report: a built `ValidationReport`.
        floor: what `floor_baseline` returned, or None.
        ceiling: what `ceiling_baseline` returned, or None.
        blast: what `steerpatch.validate.blast.estimate_blast` returned (made before the full run), or None.

    Returns:
        The updated copy (verdict and gates unchanged: baselines inform, they do not gate).
    """
    from steerpatch.validate.report import Baselines, BlastRadiusEstimate

    worst_before = min((g.before for g in report.groups.values() if g.before is not None), default=None)
    worst_after = report.worst_group.after if report.worst_group is not None else None
    update: dict[str, Any] = {}
    if floor is not None or ceiling is not None:
        update["baselines"] = Baselines.model_validate({"floor": floor, "ceiling": ceiling})
        update["gap_closed"] = gap_closed(worst_before, worst_after, (ceiling or {}).get("worst_group"))
    if blast is not None:
        update["blast_radius"] = BlastRadiusEstimate(observed=report.blast_radius_observed, **blast)
    return report.model_copy(update=update)
