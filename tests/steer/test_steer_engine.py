"""The hooks on real open_clip models: random-init ViT-B-32 and the embedded concept-clip."""

from __future__ import annotations

import pytest
import torch

from steerpatch.errors import ModelError, PatchError
from steerpatch.steer import decoder_directions, steer
from tests.helpers.steer import make_patch, random_sae

BLOCK = 8


@pytest.fixture(scope="module")
def pixels(vitb32) -> torch.Tensor:
    return torch.randn(2, 3, vitb32.image_size, vitb32.image_size, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def sae_b32():
    return random_sae("topk", block=BLOCK, d_sae=512, k=24)


def _capture_block_output(loaded, block: int, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The output of `block` and the image embedding.

    The capture hook is registered last, so it sees the output after any steering hook already there.
    """
    seen: list[torch.Tensor] = []
    target = loaded.model.visual.transformer.resblocks[block]
    handle = target.register_forward_hook(lambda module, args, output: seen.append(output.detach().clone()))
    try:
        with torch.no_grad():
            features = loaded.model.encode_image(pixels)
    finally:
        handle.remove()
    return seen[0], features


def test_empty_and_scale_one_patches_are_exact_identities(vitb32, sae_b32, pixels):
    with torch.no_grad():
        clean = vitb32.model.encode_image(pixels)
    identity = ["3:scale:1", "40:scale:1", "41:add:0"]
    for edits, tokens in (([], "all"), (identity, "all"), (identity, "cls")):
        with (
            steer(vitb32, make_patch(sae_b32, edits, tokens=tokens, model=vitb32), sae_b32),
            torch.no_grad(),
        ):
            steered = vitb32.model.encode_image(pixels)
        assert torch.equal(steered, clean), (edits, tokens)


@pytest.mark.parametrize("tokens", ["patches", "cls", [0, 5, 33]], ids=str)
def test_suppression_moves_block_output_by_minus_z_w_dec_on_scoped_tokens(vitb32, sae_b32, pixels, tokens):
    x, clean = _capture_block_output(vitb32, BLOCK, pixels)
    scoped = (
        {"patches": list(range(1, x.shape[1])), "cls": [0]}.get(tokens, tokens)
        if isinstance(tokens, str)
        else tokens
    )
    z = sae_b32.encode(x)
    latent = int(z[:, scoped].gt(0).sum(dim=(0, 1)).argmax())
    patch = make_patch(sae_b32, [f"{latent}:scale:0"], tokens=tokens, model=vitb32)
    with steer(vitb32, patch, sae_b32) as session:
        x_steered, steered = _capture_block_output(vitb32, BLOCK, pixels)
    assert session.blocks == [BLOCK] and session.overrides == []
    expected = -z[:, scoped, latent, None] * decoder_directions(sae_b32, [latent])[0]
    assert expected.abs().max() > 0
    torch.testing.assert_close(x_steered[:, scoped] - x[:, scoped], expected, atol=1e-5, rtol=0)
    others = [t for t in range(x.shape[1]) if t not in scoped]
    assert torch.equal(x_steered[:, others], x[:, others])
    assert not torch.equal(steered, clean)


def test_hooks_are_removed_on_exit_and_on_error(vitb32, sae_b32, pixels):
    blocks = vitb32.model.visual.transformer.resblocks
    patch = make_patch(sae_b32, ["1:scale:0"], model=vitb32)
    with steer(vitb32, patch, sae_b32):
        assert len(blocks[BLOCK]._forward_hooks) == 1
    assert len(blocks[BLOCK]._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="boom"), steer(vitb32, patch, sae_b32):
        raise RuntimeError("boom")
    assert len(blocks[BLOCK]._forward_hooks) == 0


def test_patches_on_two_blocks_and_a_raw_clip_model(vitb32, pixels):
    early, late = random_sae("standard", block=2, seed=4), random_sae("standard", block=10, seed=5)
    patches = [make_patch(early, ["7:scale:0"], model=vitb32), make_patch(late, ["9:clamp:2"], model=vitb32)]
    with steer(vitb32.model, patches, [early, late]) as session, torch.no_grad():
        both = vitb32.model.encode_image(pixels)
    assert session.blocks == [2, 10]
    with torch.no_grad():
        assert not torch.equal(both, vitb32.model.encode_image(pixels))


def test_model_fingerprint_mismatch_names_both(vitb32, sae_b32, pixels):
    other = "cd" * 32
    patch = make_patch(sae_b32, ["1:scale:0"])  # made for a different model
    with pytest.raises(PatchError) as info, steer(vitb32, patch, sae_b32):
        pass
    message = str(info.value)
    assert "model fingerprint mismatch" in message and other not in message
    assert patch.model.fingerprint in message and vitb32.fingerprint in message
    assert "--allow-fingerprint-mismatch" in message
    assert len(vitb32.model.visual.transformer.resblocks[BLOCK]._forward_hooks) == 0


def test_sae_fingerprint_mismatch_names_both_and_override_is_recorded(vitb32, sae_b32, pixels):
    look_alike = random_sae("topk", block=BLOCK, d_sae=512, k=24, seed=9)
    patch = make_patch(sae_b32, ["1:scale:0"], model=vitb32)
    with (
        pytest.raises(PatchError, match="sae fingerprint mismatch") as info,
        steer(vitb32, patch, look_alike),
    ):
        pass
    assert sae_b32.fingerprint in str(info.value) and look_alike.fingerprint in str(info.value)
    with steer(vitb32, patch, look_alike, allow_fingerprint_mismatch=True) as session:
        pass
    [override] = session.overrides
    assert (override.kind, override.expected, override.actual) == (
        "sae",
        sae_b32.fingerprint,
        look_alike.fingerprint,
    )
    assert override.patch == patch.ref and override.at.endswith("Z")


def test_binding_problems_are_listed_together(vitb32):
    narrow = random_sae("standard", d_in=512, block=BLOCK)
    patch = make_patch(narrow, ["1:scale:0"])
    with pytest.raises(PatchError) as info, steer(vitb32, patch, narrow):
        pass
    assert len(info.value.problems) == 2
    assert "d_in=512 but block 8 of this model has width 768" in str(info.value)
    outside = random_sae("standard", block=12)
    beyond = make_patch(outside, ["1:scale:0"], model=vitb32)
    with (
        pytest.raises(PatchError, match=r"hook block 12 does not exist: the model has 12 vision blocks"),
        steer(vitb32, beyond, outside),
    ):
        pass


def test_latent_beyond_d_sae_is_refused_before_any_forward(vitb32, sae_b32):
    bigger = random_sae("topk", block=BLOCK, d_sae=1024, k=24)
    patch = make_patch(bigger, ["900:scale:0"], model=vitb32)
    refused = pytest.raises(
        PatchError, match=r"latent\(s\) \[900\] are out of range for this SAE \(d_sae=512\)"
    )
    with refused, steer(vitb32, patch, sae_b32, allow_fingerprint_mismatch=True):
        pass


def test_sae_is_loaded_from_the_patch_location(vitb32, sae_b32, pixels, tmp_path):
    from steerpatch.patch import new_patch
    from steerpatch.sae import load_sae, save_sae

    folder = save_sae(sae_b32, tmp_path / "sae")
    reloaded = load_sae(folder)
    patch = new_patch("from-disk", vitb32, reloaded, ["2:scale:0"], rationale="r", author="a")
    assert patch.sae.location == str(folder)
    with steer(vitb32, patch) as session:
        pass
    assert session.saes[0].fingerprint == sae_b32.fingerprint


def test_non_vit_models_are_refused(sae_b32):
    patch = make_patch(sae_b32, [])
    with (
        pytest.raises(ModelError, match="visual.transformer.resblocks"),
        steer(torch.nn.Linear(2, 2), patch, sae_b32),
    ):
        pass


def test_concept_clip_with_its_shipped_sae(concept_model, default_sae, test_world):
    from steerpatch.data import load_dataset
    from steerpatch.models import preprocess_batch

    data = load_dataset(test_world)
    pixels = preprocess_batch(concept_model, [data.load_image(i) for i in range(4)])
    block = default_sae.require_hook().block
    x, clean = _capture_block_output(concept_model, block, pixels)
    identity = make_patch(default_sae, [], model=concept_model)
    scale_one = make_patch(default_sae, ["0:scale:1", "1:scale:1"], model=concept_model)
    for patch in (identity, scale_one):
        with steer(concept_model, patch, default_sae), torch.no_grad():
            assert torch.equal(concept_model.model.encode_image(pixels), clean)
    z = default_sae.encode(x)
    latent = int(z.gt(0).sum(dim=(0, 1)).argmax())
    suppress = make_patch(default_sae, [f"{latent}:scale:0"], model=concept_model)
    with steer(concept_model, suppress, default_sae):
        x_steered, steered = _capture_block_output(concept_model, block, pixels)
    expected = -z[..., latent, None] * decoder_directions(default_sae, [latent])[0]
    torch.testing.assert_close(x_steered - x, expected, atol=1e-5, rtol=0)
    assert not torch.equal(steered, clean)


def test_a_missing_sae_location_is_refused_with_the_fix(vitb32, sae_b32, tmp_path):
    patch = make_patch(sae_b32, ["2:scale:0"], model=vitb32).with_changes(
        sae={"location": str(tmp_path / "gone"), "fingerprint": sae_b32.fingerprint, "architecture": "topk"}
    )
    refused = pytest.raises(PatchError, match=r"its SAE '.*gone' does not exist; pass the SAE explicitly")
    with refused, steer(vitb32, patch):
        pass
