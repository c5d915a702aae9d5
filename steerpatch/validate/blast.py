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
