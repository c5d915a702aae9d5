"""The steering engine: error-preserving SAE edits on the residual stream of open_clip vision blocks."""

from steerpatch.models.tower import vision_tower
from steerpatch.patch.ops import OPS
from steerpatch.steer.binding import Override, check_binding
from steerpatch.steer.delta import (
    ELEMENTWISE_ARCHITECTURES,
    apply_edits,
    decoder_directions,
    edits_delta,
    latent_activations,
    steer_block_output,
    steering_delta,
    token_index,
)
from steerpatch.steer.engine import SteeringSession, load_patch_sae, steer

__all__ = [
    "ELEMENTWISE_ARCHITECTURES",
    "OPS",
    "Override",
    "SteeringSession",
    "apply_edits",
    "check_binding",
    "decoder_directions",
    "edits_delta",
    "latent_activations",
    "load_patch_sae",
    "steer",
    "steer_block_output",
    "steering_delta",
    "token_index",
    "vision_tower",
]
