"""Sparse autoencoders over a CLIP vision tower: SAELens-compatible formats, training, latent statistics.

Example:
    >>> from steerpatch.sae import default_sae_path, load_sae  # doctest: +SKIP
    >>> sae = load_sae(default_sae_path())  # doctest: +SKIP
    >>> z = sae.encode(x)  # doctest: +SKIP
"""

from steerpatch.sae.activations import cache_activations, check_sae_fits, run_to_block, token_slice
from steerpatch.sae.architectures import (
    ARCHITECTURES,
    SAE_REGISTRY,
    Architecture,
    Training,
    get_architecture,
    register_architecture,
)
from steerpatch.sae.config import TOKEN_SCOPES, HookSpec, SAEConfig
from steerpatch.sae.fit import FitSettings, fit_sae
from steerpatch.sae.formats import default_sae_path, load_sae, save_sae
from steerpatch.sae.module import SAE, fingerprint_tensors
from steerpatch.sae.quality import SAEQuality, load_quality, reconstruction_metrics, splice, spliced_accuracy
from steerpatch.sae.stats import LatentStats, compute_latent_stats, load_latent_stats, save_latent_stats
from steerpatch.sae.train import TrainResult, train_sae

__all__ = [
    "ARCHITECTURES",
    "SAE",
    "SAE_REGISTRY",
    "TOKEN_SCOPES",
    "Architecture",
    "FitSettings",
    "HookSpec",
    "LatentStats",
    "SAEConfig",
    "SAEQuality",
    "TrainResult",
    "Training",
    "cache_activations",
    "check_sae_fits",
    "compute_latent_stats",
    "default_sae_path",
    "fingerprint_tensors",
    "fit_sae",
    "get_architecture",
    "load_latent_stats",
    "load_quality",
    "load_sae",
    "reconstruction_metrics",
    "register_architecture",
    "run_to_block",
    "save_latent_stats",
    "save_sae",
    "splice",
    "spliced_accuracy",
    "token_slice",
    "train_sae",
]
