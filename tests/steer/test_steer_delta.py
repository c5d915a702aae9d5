"""The steering math on plain tensors: exact identities, exact suppression, scope, ops, stacks."""

from __future__ import annotations

import pytest
import torch

from steerpatch.errors import PatchError
from steerpatch.patch import Edit
from steerpatch.steer import (
    apply_edits,
    decoder_directions,
    latent_activations,
    steer_block_output,
    steering_delta,
)
from tests.helpers.steer import architectures, make_patch, random_sae

SAE_KINDS = [*architectures(), "topk-rescaled"]
SCOPES = ["all", "cls", "patches", [0, 7, 49]]


@pytest.fixture(scope="module")
def hidden() -> torch.Tensor:
    """A residual stream shaped like ViT-B-32's: batch 3, 50 tokens, width 768."""
    return torch.randn(3, 50, 768, generator=torch.Generator().manual_seed(3))


def _scoped(scope) -> list[int]:
    if isinstance(scope, list):
        return scope
    return {"all": list(range(50)), "cls": [0], "patches": list(range(1, 50))}[scope]


def _active_latent(sae, x: torch.Tensor, tokens: list[int]) -> int:
    return int(sae.encode(x[:, tokens]).gt(0).sum(dim=(0, 1)).argmax())


@pytest.mark.parametrize("kind", SAE_KINDS)
@pytest.mark.parametrize("scope", SCOPES, ids=str)
def test_identity_patches_are_exact(saes, hidden, kind, scope):
    sae = saes[kind]
    latent = _active_latent(sae, hidden, _scoped(scope))
    a, b = [i for i in (3, 5, 6) if i != latent][:2]
    for edits in ([], [f"{latent}:scale:1"], [f"{latent}:scale:1", f"{a}:scale:1", f"{b}:add:0"]):
        out = steer_block_output(hidden, sae, make_patch(sae, edits, tokens=scope))
        assert torch.equal(out, hidden), edits


@pytest.mark.parametrize("kind", SAE_KINDS)
@pytest.mark.parametrize("scope", SCOPES, ids=str)
def test_suppression_moves_scoped_tokens_by_minus_z_times_direction(saes, hidden, kind, scope):
    sae = saes[kind]
    tokens = _scoped(scope)
    latent = _active_latent(sae, hidden, tokens)
    out = steer_block_output(hidden, sae, make_patch(sae, [f"{latent}:scale:0"], tokens=scope))
    z = sae.encode(hidden)[..., latent]  # full encoder
    direction = decoder_directions(sae, [latent])[0]
    expected = -z[:, tokens, None] * direction
    assert expected.abs().max() > 0  # the latent fires somewhere in scope
    torch.testing.assert_close(out[:, tokens] - hidden[:, tokens], expected, atol=1e-5, rtol=0)
    others = [t for t in range(50) if t not in tokens]
    assert torch.equal(out[:, others], hidden[:, others])


@pytest.mark.parametrize("kind", SAE_KINDS)
def test_delta_equals_the_change_in_reconstruction(saes, hidden, kind):
    sae = saes[kind]
    edits = [
        Edit(latent=i, op=op, value=v)
        for i, op, v in [(1, "scale", 2.5), (2, "clamp", 0.7), (3, "clamp_if_active", 3.0), (4, "scale", 0.0)]
    ]
    z = sae.encode(hidden)
    expected = sae.decode(apply_edits(z, edits)) - sae.decode(z)
    got = steering_delta(sae, hidden, edits, "all")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_add_is_value_times_decoder_row(saes, hidden):
    sae = saes["standard"]
    out = steer_block_output(hidden, sae, make_patch(sae, ["9:add:2.0", "11:add:-0.5"], tokens="cls"))
    expected = 2.0 * sae.W_dec[9] - 0.5 * sae.W_dec[11]
    torch.testing.assert_close(out[:, 0] - hidden[:, 0], expected.expand(3, -1), atol=1e-5, rtol=0)
    assert torch.equal(out[:, 1:], hidden[:, 1:])


def test_ops_rewrite_latents_as_documented():
    z = torch.tensor([[0.0, 2.0, 0.0, 1.5]])
    edits = [Edit(latent=0, op="clamp", value=4.0), Edit(latent=1, op="scale", value=0.5),
             Edit(latent=2, op="clamp_if_active", value=9.0), Edit(latent=3, op="clamp_if_active", value=-1.0)]  # fmt: skip
    assert apply_edits(z, edits).tolist() == [[4.0, 1.0, 0.0, -1.0]]
    assert z.tolist() == [[0.0, 2.0, 0.0, 1.5]]  # not modified in place


@pytest.mark.parametrize("kind", ["standard", "jumprelu"])
def test_reading_only_edited_columns_matches_the_full_encoder(saes, hidden, kind):
    sae = saes[kind]
    latents = [0, 17, 100, 255]
    torch.testing.assert_close(
        latent_activations(sae, hidden, latents), sae.encode(hidden)[..., latents], atol=1e-5, rtol=0
    )


def test_topk_uses_the_full_encoder(saes, hidden):
    # a topk latent that is among the k largest only in the full code must be read as zero elsewhere
    sae = saes["topk"]
    z = sae.encode(hidden)
    assert int(z.gt(0).sum(-1).max()) <= sae.cfg.k
    torch.testing.assert_close(latent_activations(sae, hidden, [5, 6]), z[..., [5, 6]])


def test_stack_applies_patches_in_order(saes, hidden):
    sae = saes["standard"]
    first = make_patch(sae, ["4:scale:0"], name="first")
    second = make_patch(sae, ["4:clamp:1.0", "8:scale:3"], tokens="patches", name="second")
    stacked = steer_block_output(hidden, sae, [first, second])
    by_hand = steer_block_output(steer_block_output(hidden, sae, first), sae, second)
    assert torch.equal(stacked, by_hand)


def test_token_index_past_the_end_is_refused(saes, hidden):
    sae = saes["standard"]
    with pytest.raises(PatchError, match=r"token indices \[50\] are past the last token \(49\)"):
        steer_block_output(hidden, sae, make_patch(sae, ["1:scale:0"], tokens=[0, 50]))


def test_latent_beyond_the_sae_is_refused(saes, hidden):
    big = random_sae("standard", d_sae=512)
    patch = make_patch(big, ["400:scale:0"])
    with pytest.raises(PatchError, match=r"edits latent\(s\) \[400\] but the SAE has d_sae=256"):
        steer_block_output(hidden, saes["standard"], patch)


def test_gradients_flow_through_the_edit(saes, hidden):
    sae = saes["standard"]
    x = hidden.clone().requires_grad_(True)
    steer_block_output(x, sae, make_patch(sae, ["3:scale:2"])).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
