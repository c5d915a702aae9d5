"""Fixtures of the validation tests: hand-built SAEs on the real models, patches on them."""

from __future__ import annotations

import pytest


def make_sae(loaded, block: int, d_sae: int = 256, *, architecture: str = "standard", tokens: str = "all", seed: int = 0):
    """A deterministic SAE whose encoder reads the decoder directions, biased so about a third of latents fire."""
    import torch

    from steerpatch.sae import SAE, SAEConfig
    from steerpatch.sae.config import hook_metadata

    width = int(loaded.model.visual.transformer.width)
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, width, generator=gen)
    w_dec = w_dec / w_dec.norm(dim=-1, keepdim=True)
    tensors = {"W_enc": w_dec.T.contiguous(), "b_enc": torch.full((d_sae,), -0.2), "W_dec": w_dec, "b_dec": torch.zeros(width)}
    extra = {}
    if architecture == "jumprelu":
        tensors["threshold"] = torch.full((d_sae,), 0.1)
    if architecture == "topk":
        extra["k"] = 16
    cfg = SAEConfig(d_in=width, d_sae=d_sae, architecture=architecture, metadata=hook_metadata(block, tokens), **extra)
    return SAE(cfg, tensors)


@pytest.fixture(scope="session")
def sae_factory():
    """`make_sae(loaded, block, d_sae=256, architecture=..., tokens=..., seed=...)` for tests that need variants."""
    return make_sae


@pytest.fixture(scope="session")
def concept_sae(concept_model):
    """A hand-built standard SAE at block 2 of the default model."""
    return make_sae(concept_model, 2)


@pytest.fixture(scope="session")
def suppress_patch(concept_model, concept_sae):
    """A patch suppressing eight latents of the hand-built SAE."""
    from steerpatch.patch import new_patch

    edits = [(i, "scale", 0.0) for i in range(8)]
    return new_patch("suppress-eight", concept_model, concept_sae, edits, rationale="test", author="tests")


@pytest.fixture(scope="session")
def saved_sae(tmp_path_factory, concept_sae):
    """The hand-built SAE written as a SAELens folder and loaded back (so it records its location)."""
    from steerpatch.sae import load_sae, save_sae

    path = tmp_path_factory.mktemp("sae") / "sae"
    save_sae(concept_sae, path)
    return load_sae(path)


@pytest.fixture(scope="session")
def patch_file(tmp_path_factory, concept_model, saved_sae) -> str:
    """A suppression patch bound to the saved SAE, written to disk."""
    from steerpatch.patch import new_patch, save_patch

    patch = new_patch(
        "suppress-eight", concept_model, saved_sae, [(i, "scale", 0.0) for i in range(8)],
        rationale="test", author="tests",
    )
    path = tmp_path_factory.mktemp("patch") / "suppress-eight.json"
    save_patch(patch, path)
    return str(path)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """A 40-image held-out world for the bad-input tests (copied and damaged per test)."""
    from steerpatch.world import write_world

    root = tmp_path_factory.mktemp("small") / "test"
    write_world(root, split="test", n=40, seed=1)
    return root
