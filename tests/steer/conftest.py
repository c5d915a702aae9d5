"""Fixtures for the steering tests: random SAEs of every registered architecture over ViT-B-32's width."""

from __future__ import annotations

import pytest

from tests.helpers.steer import architectures, random_sae


@pytest.fixture(scope="session")
def saes() -> dict[str, object]:
    """One random SAE per registered architecture, plus a topk SAE that rescales by decoder norm."""
    out = {name: random_sae(name) for name in architectures()}
    out["topk-rescaled"] = random_sae("topk", rescale_acts_by_decoder_norm=True, seed=1)
    return out
