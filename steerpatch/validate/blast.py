"""The blast radius a patch is expected to have, predicted from latent firing statistics before any run.

A latent edit can only change an image on which an edited latent fires (clamp and add ops change every
image). Treating latents as independent, the share of images touched is 1 - prod(1 - rate_i); the same
per class and per group says where the ripple will land. The report sets this prediction beside the
observed share of images whose prediction changed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from steerpatch.patch.ops import get_op
from steerpatch.steer import latent_activations, token_index

# latent ops that change an image whether or not the latent fires on it (direction ops always do)
_ALWAYS = ("clamp",)


def _touched(rates: dict[int, float], edits) -> float:
    untouched = 1.0
    for edit in edits:
        rate = 1.0 if edit.op in _ALWAYS or get_op(edit.op).kind == "direction" else rates.get(edit.latent, 0.0)
        untouched *= 1.0 - min(max(rate, 0.0), 1.0)
    return 1.0 - untouched


def _as_rates(vector, latents: list[int]) -> dict[int, float]:
    values = vector.tolist() if hasattr(vector, "tolist") else list(vector)
    return {i: float(values[i]) for i in latents}


def predict_from_stats(edits, stats) -> dict[str, Any]:
    """Predicted blast radius from an SAE's stored latent statistics.

    Args:
        edits: the patch edits.
        stats: `LatentStats` (firing_rate, firing_rate_by_class, firing_rate_by_group).

    Returns:
        {"fraction", "by_class", "by_group", "latents", "source": "latent_stats"}.
    """
    latents = sorted({e.latent for e in edits})
    rates = _as_rates(stats.firing_rate, latents)
    return {
        "fraction": _touched(rates, edits),
        "by_class": {c: _touched(_as_rates(v, latents), edits) for c, v in stats.firing_rate_by_class.items()},
        "by_group": {g: _touched(_as_rates(v, latents), edits) for g, v in stats.firing_rate_by_group.items()},
        "latents": {str(i): rates[i] for i in latents},
        "source": "latent_stats",
    }


@torch.no_grad()
def predict_from_activations(
    edits, sae, cached, tokens, *, labels, classes, groups=None, group_by: str | None = None
) -> dict[str, Any]:
    """Predicted blast radius from firing rates measured on the cached activations (no patched run).

    Used when the SAE carries no stored statistics.

    Args:
        edits: the patch edits.
        sae: the SAE.
        cached: `CachedActivations` at the hook.
        tokens: the patch's token scope.
        labels: true class index per cached image.
        classes: class names.
        groups: grouping attribute value per image, or None.
        group_by: the grouping attribute's name (group keys read "attr=value", as in the stats).

    Returns:
        The same shape as `predict_from_stats`, with "source": "dataset".
    """
    latents = sorted({e.latent for e in edits})
    if not latents or len(cached.ids) == 0:
        fires = np.zeros((len(cached.ids), len(latents)), dtype=bool)
    else:
        where = token_index(tokens, cached.hidden.shape[1])
        parts = [
            (latent_activations(sae, cached.hidden[s : s + 256][:, where], latents) > 0).any(dim=1)
            for s in range(0, len(cached.ids), 256)
        ]
        fires = torch.cat(parts).numpy()

    def rates(mask: np.ndarray) -> dict[int, float]:
        sub = fires[mask]
        return {latent: float(sub[:, j].mean()) if len(sub) else 0.0 for j, latent in enumerate(latents)}

    labels = np.asarray(labels)
    everything = np.ones(len(labels), dtype=bool)
    out: dict[str, Any] = {
        "fraction": _touched(rates(everything), edits),
        "by_class": {c: _touched(rates(labels == i), edits) for i, c in enumerate(classes) if (labels == i).any()},
        "by_group": {},
        "latents": {str(k): v for k, v in rates(everything).items()},
        "source": "dataset",
    }
    if groups is not None:
        values = np.asarray(groups, dtype=object)
        out["by_group"] = {f"{group_by}={g}": _touched(rates(values == g), edits) for g in sorted(set(groups), key=str)}
    return out


ESTIMATE_METHOD = "stratified-sample/1"
_STRATA = 8  # strata of touched images, by edit size over margin


@torch.no_grad()
def estimate_blast(
    model, head, sae, patch, cached, *, sample: int | None = None, seed: int = 0, batch_size: int = 64
) -> dict[str, Any]:
    """The share of images whose prediction the patch will change, estimated from a small sample.

    Made before the full evaluation, from the cached hook activations. The edit's change at the hook
    (`steering_delta`, cheap) over each image's logit margin ranks the images by how likely they are
    to flip; images the edit does not touch (a delta of exactly 0) cannot flip and count as 0. The
    touched images are cut into strata by that ratio, a pilot sample of each is run exactly through
    the blocks after the hook, and the rest of the budget goes where the pilot saw the most variance
    (Neyman allocation). The estimate is the stratified mean; low/high is its 95% interval.

    Args:
        model: the open_clip CLIP.
        head: the `ZeroShotHead`.
        sae: the patch's SAE.
        patch: the patch.
        cached: `CachedActivations` at the patch's hook.
        sample: images run through the suffix (default: a sixth of the data, at least 64).
        seed: seed of the random draws.
        batch_size: images per pass.

    Returns:
        {"predicted", "low", "high", "sample", "touched", "method"}; shares of all images.
    """
    from steerpatch.models.tower import encode_suffix
    from steerpatch.steer import steer_block_output, steering_delta

    n = len(cached.ids)
    if n == 0 or not patch.edits:
        return {"predicted": 0.0, "low": 0.0, "high": 0.0, "sample": 0, "touched": 0.0, "method": ESTIMATE_METHOD}
    block = patch.hook.block
    logits = head.logits(cached.features)
    top2 = logits.topk(min(2, logits.shape[1]), dim=-1).values
    margins = (top2[:, 0] - top2[:, -1]).clamp_min(1e-6).numpy()
    norms = np.concatenate([
        steering_delta(sae, cached.hidden[s : s + batch_size], patch.edits, patch.tokens).flatten(1).norm(dim=1).numpy()
        for s in range(0, n, batch_size)
    ])
    touched = np.flatnonzero(norms > 0)
    budget = min(len(touched), sample if sample is not None else max(64, n // 6))
    order = touched[np.argsort(-(norms[touched] / margins[touched]), kind="stable")]
    strata = [part for part in np.array_split(order, min(_STRATA, max(len(order), 1))) if len(part)]
    rng = np.random.default_rng(seed)
    shuffled = [rng.permutation(part) for part in strata]
    taken = [min(len(part), max(4, budget // (3 * max(len(strata), 1)))) for part in strata]
    seen: list[list[bool]] = [[] for _ in strata]

    def flips(idx: np.ndarray) -> np.ndarray:
        # rows in index order: spilled activations are then read front to back, each shard about once
        # per call, instead of every shard for every random chunk
        order = np.argsort(idx, kind="stable")
        out = np.zeros(len(idx), dtype=bool)
        for s in range(0, len(idx), batch_size):
            rows = order[s : s + batch_size]
            chunk = torch.as_tensor(idx[rows])
            after = encode_suffix(model, steer_block_output(cached.hidden[chunk], sae, patch), block)
            out[rows] = (head.logits(after).argmax(-1) != logits[chunk].argmax(-1)).numpy()
        return out

    def run(upto: list[int]) -> None:
        """Extend every stratum's draws to `upto[h]`, all strata in one pass over the activations."""
        parts = [shuffled[h][len(seen[h]) : upto[h]] for h in range(len(strata))]
        drawn = flips(np.concatenate(parts)) if parts else np.zeros(0, dtype=bool)
        start = 0
        for h, part in enumerate(parts):
            seen[h].extend(drawn[start : start + len(part)].tolist())
            start += len(part)

    run(taken)
    left = budget - sum(taken)
    if left > 0:  # Neyman: more draws where N_h * sd_h is largest (smoothed so an all-0 pilot still gets some)
        sd = np.asarray([
            len(part) * np.sqrt(((sum(s) + 0.5) / (len(s) + 1)) * (1 - (sum(s) + 0.5) / (len(s) + 1)))
            for part, s in zip(strata, seen, strict=True)
        ])
        share = np.floor(left * sd / sd.sum()).astype(int) if sd.sum() > 0 else np.zeros(len(strata), dtype=int)
        run([min(len(strata[h]), len(seen[h]) + int(extra)) for h, extra in enumerate(share)])
    estimate, variance = 0.0, 0.0
    for part, s in zip(strata, seen, strict=True):
        big, small = len(part), len(s)
        p = float(np.mean(s)) if small else 0.0
        estimate += big * p
        if 1 < small < big:
            variance += big * big * (1 - small / big) * p * (1 - p) / (small - 1)
    half = 1.96 * float(np.sqrt(variance))
    rows = sum(len(s) for s in seen)
    return {
        "predicted": estimate / n,
        "low": max(estimate - half, 0.0) / n,
        "high": min(estimate + half, float(len(touched))) / n,
        "sample": int(rows),
        "touched": len(touched) / n,
        "method": ESTIMATE_METHOD,
    }
