"""Fixtures of the attribution tests: a hand-built SAE on the default model, saved with a location."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def attr_sae(tmp_path_factory, concept_model):
    """A standard SAE at block 2 of the default model whose encoder reads its own decoder directions."""
    import torch

    from steerpatch.sae import SAE, SAEConfig, load_sae, save_sae
    from steerpatch.sae.config import hook_metadata

    width = int(concept_model.model.visual.transformer.width)
    gen = torch.Generator().manual_seed(0)
    w_dec = torch.randn(512, width, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    tensors = {"W_enc": w_dec.T.contiguous(), "b_enc": torch.full((512,), -0.2), "W_dec": w_dec,
               "b_dec": torch.zeros(width)}
    sae = SAE(SAEConfig(d_in=width, d_sae=512, metadata=hook_metadata(2, "all")), tensors)
    path = tmp_path_factory.mktemp("attr") / "sae"
    save_sae(sae, path)
    return load_sae(path)


@pytest.fixture(scope="session")
def stats_sae(tmp_path_factory, concept_model, attr_sae, test_world):
    """The same SAE in a folder of its own, with latent statistics measured on the held-out world."""
    from steerpatch.data import load_dataset
    from steerpatch.sae import compute_latent_stats, load_sae, save_latent_stats, save_sae

    path = tmp_path_factory.mktemp("stats") / "sae"
    save_sae(attr_sae, path)
    stats = compute_latent_stats(concept_model, attr_sae, load_dataset(test_world), top_k=8, progress=False)
    save_latent_stats(stats, path, dataset_root=str(test_world))
    return load_sae(path)
