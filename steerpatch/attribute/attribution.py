"""`attribute`: rank the SAE latents behind one image's prediction, with heatmaps and exemplars.

Example:
    >>> result = attribute(loaded, sae, "world/test/circle/000042.png", target="star", against="circle")  # doctest: +SKIP
    >>> [(r.latent, round(r.score, 2)) for r in result.latents[:3]]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from steerpatch.attribute.exemplars import (
    GroupLift,
    exemplar_attributes,
    exemplar_ids,
    exemplar_montage,
    exemplar_source,
    top_groups,
)
from steerpatch.attribute.heatmap import latent_grid, latent_grid_cls, write_overlay
from steerpatch.attribute.scores import ablation_effects, latent_scores, prefix, resolve_target
from steerpatch.errors import DatasetError, SAEError, SteerpatchError
from steerpatch.models.tower import encode_suffix


class LatentAttribution(BaseModel):
    """One latent's share in the prediction."""

    model_config = ConfigDict(extra="forbid")

    latent: int
    score: float  # activation x gradient of the margin, summed over scoped tokens
    activation: float  # largest activation over the scoped tokens
    ablation_effect: float | None = None  # exact margin change when the latent is suppressed
    ablated_prediction: str | None = None  # predicted class with the latent suppressed
    heatmap: str | None = None  # PNG overlay of its activation over the patch tokens
    exemplars: list[str] = Field(default_factory=list)  # top-activating held-out item ids
    exemplar_montage: str | None = None  # PNG of the exemplars side by side
    exemplar_attributes: dict[str, dict[str, int]] = Field(default_factory=dict)
    top_groups: list[GroupLift] = Field(default_factory=list)


class Attribution(BaseModel):
    """The attribution of one image's prediction to SAE latents, strongest first."""

    model_config = ConfigDict(extra="forbid")

    format_version: Literal[1] = 1
    image: str
    model: str
    model_fingerprint: str
    sae_fingerprint: str
    block: int
    tokens: str | list[int]
    target: str
    against: str | None  # None: the margin is over the best other class
    predicted: str
    probabilities: dict[str, float]
    margin: float
    latents: list[LatentAttribution]


def _pixels(loaded, image) -> tuple[torch.Tensor, Any, str]:
    from PIL import Image, UnidentifiedImageError

    from steerpatch.models import preprocess_batch

    name = "<image>"
    if isinstance(image, (str, Path)):
        name = str(image)
        try:
            with Image.open(image) as handle:
                image = handle.convert("RGB")
        except (OSError, UnidentifiedImageError) as error:
            raise DatasetError(f"image '{name}' cannot be read ({error}); pass a PNG or JPEG file") from None
    return preprocess_batch(loaded, [image]), image, name


def _stats_for(sae):
    from steerpatch.sae import load_latent_stats

    if not sae.location:
        return None
    try:
        return load_latent_stats(sae.location, sae=sae)
    except SAEError:
        return None  # no statistics stored: the ranking still works, without exemplars


def attribute(
    loaded,
    sae,
    image,
    *,
    target: str = "predicted",
    against: str | None = None,
    classes: Sequence[str] | None = None,
    top_n: int = 10,
    ablate: bool = True,
    out_dir: str | Path | None = None,
    exemplar_data=None,
    n_exemplars: int = 8,
) -> Attribution:
    """Rank the SAE latents that drive one image's class margin, and check the top ones exactly.

    Args:
        loaded: a `LoadedModel`.
        sae: the SAE; its metadata names the hook block and token scope.
        image: a PIL image or an image file.
        target: a class name, or "predicted" for the model's own prediction.
        against: a competing class (e.g. the true class of a mistake); None compares with the best other class.
        classes: class names for the zero-shot head; None uses the classes in the SAE's latent statistics.
        top_n: how many latents to return (and ablate).
        ablate: re-run the blocks after the hook with each top latent suppressed.
        out_dir: where to write heatmap (and exemplar) PNGs; None writes none.
        exemplar_data: the dataset (or folder) the statistics' item ids refer to, for exemplar images
            and their attributes; None keeps only the ids.
        n_exemplars: exemplars per latent.

    Returns:
        The `Attribution`, latents sorted by score (highest first: they push toward `target`).

    Raises:
        SteerpatchError: unknown classes, or no class list available.
        DatasetError: an unreadable image.
        SAEError: an SAE without a recorded hook.
    """
    from steerpatch.models import build_zero_shot_head
    from steerpatch.sae import check_sae_fits

    hook = sae.require_hook()
    check_sae_fits(sae, loaded)
    stats = _stats_for(sae)
    if classes is None:
        if stats is None or not stats.firing_rate_by_class:
            raise SteerpatchError(
                "no class list: pass classes (--classes a,b,c or --data DIR) or store latent statistics "
                "beside the SAE with `steerpatch sae stats`"
            )
        classes = list(stats.firing_rate_by_class)
    classes = list(classes)
    head = build_zero_shot_head(loaded, classes)
    pixels, picture, name = _pixels(loaded, image)
    model = loaded.model
    hidden = prefix(model, pixels, hook.block)
    with torch.no_grad():
        logits = head.logits(encode_suffix(model, hidden, hook.block))[0]
    t, a = resolve_target(classes, logits[None], target, against)
    scores, activation, value = latent_scores(model, head, sae, hidden, hook.block, hook.tokens, t, a)
    order = [int(i) for i in torch.argsort(scores, descending=True)[:top_n]]
    effects = (
        ablation_effects(model, head, sae, hidden, hook.block, hook.tokens, order, t, a) if ablate else []
    )
    if exemplar_data is not None and isinstance(exemplar_data, (str, Path)):
        from steerpatch.data import load_dataset

        exemplar_data = load_dataset(exemplar_data)
    if exemplar_data is None and stats is not None:
        # no folder given: read the exemplars where the statistics were made (or re-render the world)
        exemplar_data = exemplar_source(stats, getattr(stats, "dataset_root", None))
    out = Path(out_dir) if out_dir is not None else None
    stem = Path(name).stem if name != "<image>" else "image"
    rows = []
    for rank, latent in enumerate(order):
        row = LatentAttribution(latent=latent, score=float(scores[latent]), activation=float(activation[latent]))
        if effects:
            row.ablation_effect, predicted = effects[rank]
            row.ablated_prediction = classes[predicted]
        if out is not None:
            path = out / f"{stem}-latent{latent}.png"
            grid = latent_grid(model, sae, hidden, latent)
            cls_value = float(latent_grid_cls(sae, hidden, latent))
            row.heatmap = str(write_overlay(picture, grid, path, label=f"latent {latent}", cls_value=cls_value))
        if stats is not None:
            row.exemplars = exemplar_ids(stats, latent, n_exemplars)
            row.top_groups = top_groups(stats, latent)
            if exemplar_data is not None:
                row.exemplar_attributes = exemplar_attributes(exemplar_data, row.exemplars)
                if out is not None:
                    montage = exemplar_montage(exemplar_data, row.exemplars, out / f"exemplars-latent{latent}.png")
                    row.exemplar_montage = str(montage) if montage else None
        rows.append(row)
    probs = logits.softmax(-1)
    return Attribution(
        image=name,
        model=loaded.name,
        model_fingerprint=loaded.fingerprint,
        sae_fingerprint=sae.fingerprint,
        block=hook.block,
        tokens=hook.tokens,
        target=classes[t],
        against=None if a is None else classes[a],
        predicted=classes[int(logits.argmax())],
        probabilities={c: float(p) for c, p in zip(classes, probs, strict=True)},
        margin=value,
        latents=rows,
    )
