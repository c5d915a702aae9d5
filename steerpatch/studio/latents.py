"""Latents of one instance: attribution scores, exact ablations, heatmaps and exemplar images.

The scores come from `steerpatch.attribute` (activation x gradient of the class margin, then exact
ablation of the top latents) run on the instance's cached hook activations, so clicking through
target classes does not re-run the blocks before the hook.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from steerpatch.attribute.exemplars import exemplar_ids, top_groups
from steerpatch.attribute.heatmap import latent_grid, overlay
from steerpatch.attribute.scores import ablation_effects, latent_scores, resolve_target
from steerpatch.steer import latent_activations
from steerpatch.studio.imaging import StudioInputError
from steerpatch.studio.workbench import Workbench


def attribution(bench: Workbench, key: str, *, target: str | None = None, n: int = 8) -> dict[str, Any]:
    """Rank the latents that push the instance's prediction toward its predicted class and away from `target`.

    Args:
        bench: the workbench.
        key: the instance.
        target: the class to compare with (e.g. the true class of a mistake); None or the predicted
            class compares with the best other class.
        n: how many latents to return; each is also ablated exactly.

    Returns:
        `{"predicted", "against", "margin", "latents": [{latent, score, activation, ablation_effect,
        ablated_prediction, exemplars, top_groups}]}`.

    Raises:
        StudioInputError: an unknown class (422) or instance (404).
    """
    inst = bench.instance(key)
    predicted = bench.prediction(inst.probs)["predicted"]
    if target is not None and target not in bench.classes:
        raise StudioInputError(f"class {target!r} is unknown; use one of: {', '.join(bench.classes)}", 422)
    against = target if target and target != predicted else None
    hook = bench.sae.require_hook()
    with bench.lock:
        t, a = resolve_target(bench.classes, inst.probs[None], predicted, against)
        scores, activation, margin_value = latent_scores(
            bench.loaded.model, bench.head, bench.sae, inst.hidden, bench.block, hook.tokens, t, a
        )
        order = [int(i) for i in torch.argsort(scores, descending=True)[:n]]
        effects = ablation_effects(
            bench.loaded.model, bench.head, bench.sae, inst.hidden, bench.block, hook.tokens, order, t, a
        )
    rows = []
    for latent, (effect, ablated) in zip(order, effects, strict=True):
        rows.append({
            "latent": latent,
            "score": round(float(scores[latent]), 5),
            "activation": round(float(activation[latent]), 5),
            "ablation_effect": round(effect, 5),
            "ablated_prediction": bench.classes[ablated],
            "exemplars": exemplars(bench, latent),
            "top_groups": [g.model_dump() for g in top_groups(bench.stats, latent)] if bench.stats else [],
        })
    return {
        "key": key,
        "predicted": predicted,
        "against": against,
        "margin": round(margin_value, 5),
        "tokens": hook.tokens,
        "latents": rows,
    }


def heatmap_png(bench: Workbench, key: str, latent: int) -> bytes:
    """PNG of the latent's activation over the instance's patch tokens, blended over the image."""
    bench.check_latent(latent)
    inst = bench.instance(key)
    with bench.lock:
        grid = latent_grid(bench.loaded.model, bench.sae, inst.hidden, latent)
    buffer = io.BytesIO()
    overlay(inst.image, grid).save(buffer, format="PNG")
    return buffer.getvalue()


def _dataset_exemplars(bench: Workbench, latent: int, n: int) -> list[int]:
    # top-activating browsed images: the latent's largest activation over each image's tokens
    cached = bench.exemplar_cache.get(latent)
    if cached is None:
        with bench.lock, torch.inference_mode():
            values = torch.cat([
                latent_activations(bench.sae, chunk, [latent])[..., 0].amax(dim=1)
                for chunk in bench.index.prefixes.split(256)
            ])
        top = torch.argsort(values, descending=True)[:32]
        cached = [int(i) for i in top if float(values[i]) > 0]
        bench.exemplar_cache[latent] = cached
    return cached[:n]


def exemplars(bench: Workbench, latent: int, *, n: int = 6) -> list[dict[str, Any]]:
    """Top-activating held-out images of a latent, as browsable dataset items.

    From the SAE's latent statistics when they name images of the browsed dataset; otherwise the
    latent's top-activating images in the browsed dataset, computed from the cached activations.
    """
    bench.check_latent(latent)
    indices: list[int] = []
    if bench.stats is not None:
        position = bench.id_positions()
        indices = [position[i] for i in exemplar_ids(bench.stats, latent, 4 * n) if i in position][:n]
    if not indices:
        indices = _dataset_exemplars(bench, latent, n)
    return [bench.index.describe(i, bench.classes) for i in indices]
