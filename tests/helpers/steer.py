"""Builders for the steering tests: random SAEs of every registered architecture over ViT-B-32's width, patches."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from steerpatch.patch import Patch, new_patch

FAKE_MODEL = SimpleNamespace(name="tensor-only", fingerprint="ab" * 32)
D_IN = 768
D_SAE = 256


def random_sae(
    architecture: str, *, d_in: int = D_IN, d_sae: int = D_SAE, block: int = 8, seed: int = 0, **cfg
):
    """A real `steerpatch.sae.SAE` with seeded random weights, hooked at `block`."""
    import torch

    from steerpatch.sae import SAEConfig
    from steerpatch.sae.config import hook_metadata
    from steerpatch.sae.module import SAE

    gen = torch.Generator().manual_seed(seed)
    from steerpatch.sae import get_architecture

    spec = get_architecture(architecture)
    if "k" in spec.required_cfg:
        cfg.setdefault("k", 16)
    config = SAEConfig(
        d_in=d_in, d_sae=d_sae, architecture=architecture, metadata=hook_metadata(block, "all"), **cfg
    )
    tensors = {
        "W_enc": torch.randn(d_in, d_sae, generator=gen) / d_in**0.5,
        "b_enc": torch.randn(d_sae, generator=gen) * 0.05,
        "W_dec": torch.randn(d_sae, d_in, generator=gen) / d_sae**0.5,
        "b_dec": torch.randn(d_in, generator=gen) * 0.1,
    }
    if architecture == "jumprelu":
        tensors["threshold"] = torch.rand(d_sae, generator=gen) * 0.2
    for name in spec.extra_tensors:  # gated: b_gate, r_mag, b_mag
        tensors.setdefault(name, torch.randn(d_sae, generator=gen) * 0.1)
    return SAE(config, tensors, location=f"random-{architecture}-{seed}")


def architectures() -> list[str]:
    from steerpatch.sae import SAE_REGISTRY

    return sorted(SAE_REGISTRY)


def make_patch(
    sae: Any, edits: list[Any], *, tokens: Any = "all", model: Any = FAKE_MODEL, name: str = "p"
) -> Patch:
    """A patch bound to `sae` (and by default to a stand-in model for tensor-level tests)."""
    return new_patch(name, model, sae, edits, rationale="test", author="tests", tokens=tokens)
