"""What a patch records must be the SAE and model it meets: d_sae, architecture, token indices, fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest

from steerpatch.errors import PatchError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shipped():
    from steerpatch.patch import load_patch

    return load_patch(ROOT / "registry" / "patches" / "water-shortcut.json")


def test_d_sae_and_architecture_must_be_the_saes(shipped, default_sae):
    from steerpatch.steer import check_binding

    check_binding(shipped, model_fingerprint=None, sae=default_sae)  # as shipped: fits
    for changes, fragment in [
        ({"d_sae": 2048}, "d_sae: the patch records 2048 latents but this SAE has 1024"),
        ({"sae": {**shipped.sae.model_dump(), "architecture": "topk"}},
         "sae.architecture: the patch records 'topk' but this SAE is 'standard'"),
    ]:  # fmt: skip
        with pytest.raises(PatchError, match="cannot be applied") as info:
            check_binding(shipped.with_changes(**changes), model_fingerprint=None, sae=default_sae)
        assert fragment in str(info.value)


def test_compile_refuses_token_indices_past_the_last_token_like_steering(shipped, concept_model, default_sae):
    from steerpatch.compile.compiler import build_graph
    from steerpatch.steer import steer as steered

    n_tokens = int(concept_model.model.visual.positional_embedding.shape[0])
    patch = shipped.with_changes(tokens=[0, n_tokens, n_tokens + 5])
    expected = f"patch token indices [{n_tokens}, {n_tokens + 5}] are past the last token ({n_tokens - 1})"
    with pytest.raises(PatchError) as compiled:
        build_graph(concept_model, patch, default_sae)
    assert expected in str(compiled.value)
    import torch

    with pytest.raises(PatchError) as eager, steered(concept_model, patch, default_sae):
        concept_model.model.encode_image(
            torch.zeros(1, 3, concept_model.image_size, concept_model.image_size)
        )
    assert str(eager.value) == str(compiled.value)


def test_an_sae_fingerprint_mismatch_is_not_reported_as_a_missing_file(shipped, tmp_path, monkeypatch):
    from steerpatch.steer.engine import load_patch_sae

    monkeypatch.chdir(tmp_path)  # the recorded relative location does not exist from here
    other = shipped.with_changes(sae={**shipped.sae.model_dump(), "fingerprint": "ab" * 32})
    with pytest.raises(PatchError) as info:
        load_patch_sae(other)
    message = str(info.value)
    assert "SAE fingerprint mismatch" in message and "ab" * 32 in message and "does not exist" not in message
    assert load_patch_sae(shipped).fingerprint == shipped.sae.fingerprint  # the matching one is found
