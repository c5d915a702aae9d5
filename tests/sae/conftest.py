"""Fixtures for the SAE tests: small seeded SAEs of every registered architecture."""

from __future__ import annotations

import pytest
import torch


def random_sae(architecture: str, *, d_in: int = 6, d_sae: int = 10, seed: int = 0, block: int | None = 1):
    """A seeded SAE of `architecture` with every tensor non-trivial."""
    from steerpatch.sae import SAE, SAEConfig, get_architecture

    generator = torch.Generator().manual_seed(seed)
    spec = get_architecture(architecture)
    fields = {"d_in": d_in, "d_sae": d_sae, "architecture": architecture}
    if "k" in spec.cfg_keys:
        fields["k"] = 3
    if block is not None:
        fields["metadata"] = {
            "hook_name": f"visual.transformer.resblocks.{block}",
            "block": block,
            "token_scope": "all",
            "model_name": "tiny",
        }
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=generator),
        "b_enc": torch.randn(d_sae, generator=generator) * 0.1,
        "W_dec": torch.randn(d_sae, d_in, generator=generator),
        "b_dec": torch.randn(d_in, generator=generator) * 0.1,
    }
    for name in spec.extra_tensors:
        tensors[name] = torch.rand(d_sae, generator=generator) * 0.5
    return SAE(SAEConfig(**fields), tensors)


@pytest.fixture()
def make_sae():
    return random_sae
