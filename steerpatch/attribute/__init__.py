"""Attribution: which SAE latents drive one prediction, where they fire, and what they stand for.

Example:
    >>> from steerpatch.attribute import attribute  # doctest: +SKIP
    >>> result = attribute(loaded, sae, "star_on_water.png", target="star", against="circle")  # doctest: +SKIP
"""

from steerpatch.attribute.attribution import Attribution, LatentAttribution, attribute
from steerpatch.attribute.exemplars import (
    GroupLift,
    exemplar_attributes,
    exemplar_ids,
    selective_latents,
    top_groups,
)
from steerpatch.attribute.heatmap import latent_grid, overlay, write_overlay
from steerpatch.attribute.scores import ablation_effects, latent_scores, margin
from steerpatch.models.tower import encode_prefix, encode_suffix, num_blocks

__all__ = [
    "Attribution",
    "GroupLift",
    "LatentAttribution",
    "ablation_effects",
    "attribute",
    "encode_prefix",
    "encode_suffix",
    "exemplar_attributes",
    "exemplar_ids",
    "latent_grid",
    "latent_scores",
    "margin",
    "num_blocks",
    "overlay",
    "selective_latents",
    "top_groups",
    "write_overlay",
]
