"""The steering math at its edges: dtypes, mixed latent and direction edits, scopes of steering_delta,
empty patches in a stack, and exact refusals."""

from __future__ import annotations

import pytest
import torch

from steerpatch.errors import PatchError
from steerpatch.patch import Edit
from steerpatch.steer import decoder_directions, latent_activations, steer_block_output, steering_delta
from steerpatch.steer.delta import edits_delta, token_index
from tests.helpers.steer import make_patch, random_sae

SCOPES = ["all", "cls", "patches", [0, 7, 49]]


@pytest.fixture(scope="module")
def hidden() -> torch.Tensor:
    return torch.randn(2, 50, 768, generator=torch.Generator().manual_seed(5))


def _tokens(scope) -> list[int]:
    return scope if isinstance(scope, list) else {"all": list(range(50)), "cls": [0], "patches": list(range(1, 50))}[scope]


@pytest.mark.parametrize("scope", SCOPES, ids=str)
def test_a_low_precision_stream_keeps_its_dtype(saes, hidden, scope):
    sae = saes["standard"]
    x = hidden.to(torch.bfloat16)
    out = steer_block_output(x, sae, make_patch(sae, ["3:scale:0", "5:add:1.0"], tokens=scope))
    assert out.dtype == torch.bfloat16 and out.shape == x.shape
    # the change, computed in the SAE's float32 and cast once, lands on the scoped tokens only
    expected = steering_delta(sae, x, [Edit(latent=3, op="scale", value=0.0), Edit(latent=5, op="add", value=1.0)],
                              scope)
    assert expected.dtype == torch.bfloat16
    assert torch.equal(out, x + expected)
    outside = sorted(set(range(50)) - set(_tokens(scope)))
    assert torch.equal(out[:, outside], x[:, outside])


def test_a_float64_sae_steers_in_float64(hidden):
    sae = random_sae("standard", seed=4)
    sae64 = random_sae("standard", seed=4).double()
    x = hidden.double()
    edits = [Edit(latent=3, op="scale", value=0.0), Edit(latent=5, op="add", value=1.5)]
    delta64 = edits_delta(sae64, x, edits)
    assert delta64.dtype == torch.float64
    torch.testing.assert_close(delta64.float(), edits_delta(sae, hidden, edits), rtol=1e-4, atol=1e-5)


def test_latent_and_direction_edits_add_up(saes, hidden):
    sae = saes["standard"]
    latent = [Edit(latent=3, op="scale", value=0.0), Edit(latent=9, op="clamp", value=2.0)]
    direction = [Edit(latent=5, op="add", value=1.5), Edit(latent=11, op="add", value=-0.5)]
    both = edits_delta(sae, hidden, latent + direction)
    only_latent = edits_delta(sae, hidden, latent)
    only_direction = edits_delta(sae, hidden, direction)
    torch.testing.assert_close(only_direction, 1.5 * sae.W_dec[5] - 0.5 * sae.W_dec[11])
    torch.testing.assert_close(both, only_latent + only_direction)
    assert edits_delta(sae, hidden, []) is None


@pytest.mark.parametrize("scope", SCOPES, ids=str)
def test_steering_delta_is_zero_outside_its_scope(saes, hidden, scope):
    sae = saes["standard"]
    edits = [Edit(latent=3, op="clamp", value=2.0), Edit(latent=5, op="add", value=1.0)]
    got = steering_delta(sae, hidden, edits, scope)
    tokens = _tokens(scope)
    outside = sorted(set(range(50)) - set(tokens))
    assert got.shape == hidden.shape
    assert torch.count_nonzero(got[:, outside]) == 0
    torch.testing.assert_close(got[:, tokens], edits_delta(sae, hidden[:, tokens], edits).expand(2, len(tokens), 768))
    torch.testing.assert_close(hidden + got, steer_block_output(hidden, sae, make_patch(sae, edits, tokens=scope)))


def test_steering_delta_checks_token_indices_against_the_token_axis(saes, hidden):
    with pytest.raises(PatchError, match=r"token indices \[50\] are past the last token \(49\)"):
        steering_delta(saes["standard"], hidden, [Edit(latent=3, op="scale", value=0.0)], [0, 50])


def test_an_empty_patch_in_a_stack_does_not_stop_the_stack(saes, hidden):
    sae = saes["standard"]
    empty = make_patch(sae, [], name="empty")
    real = make_patch(sae, ["3:clamp:2.0"], name="real")
    torch.testing.assert_close(steer_block_output(hidden, sae, [empty, real]), steer_block_output(hidden, sae, real))
    assert not torch.equal(steer_block_output(hidden, sae, real), hidden)


def test_the_last_latent_is_allowed_and_d_sae_is_refused(saes, hidden):
    # patches made for a wider SAE, applied to this one
    sae, wider = saes["standard"], random_sae("standard", d_sae=saes["standard"].d_sae + 1)
    steer_block_output(hidden, sae, make_patch(wider, [f"{sae.d_sae - 1}:scale:0"]))
    with pytest.raises(PatchError) as info:
        steer_block_output(hidden, sae, make_patch(wider, [f"{sae.d_sae}:scale:0"]))
    assert str(info.value) == (
        f"patch p@1.0.0 edits latent(s) [{sae.d_sae}] but the SAE has d_sae={sae.d_sae}; "
        f"use indices 0..{sae.d_sae - 1} or the SAE the patch was made for"
    )


def test_an_unknown_scope_name_is_refused_by_name():
    with pytest.raises(PatchError) as info:
        token_index("first", 50)
    assert str(info.value) == "token scope 'first' is not one of cls, patches, all or a list of token indices"
    assert token_index([3, 49], 50) == [3, 49]


def test_plain_sae_directions_are_the_decoder_rows(saes):
    sae = saes["standard"]
    assert torch.equal(decoder_directions(sae, [4, 2]), sae.W_dec[[4, 2]])
    rescaled = saes["topk-rescaled"]
    rows = rescaled.W_dec[[4, 2]]
    torch.testing.assert_close(decoder_directions(rescaled, [4, 2]), rows / rows.norm(dim=-1, keepdim=True))


def test_edited_columns_of_a_bfloat16_stream(saes, hidden):
    sae = saes["jumprelu"]
    x = hidden.to(torch.bfloat16)
    z = latent_activations(sae, x, [3, 7])
    assert z.dtype == sae.W_enc.dtype
    torch.testing.assert_close(z, sae.encode(x.float())[..., [3, 7]])


def test_edited_columns_of_a_bfloat16_stream_without_b_dec_subtraction(hidden):
    # without the b_dec subtraction nothing else promotes x: the cast to the SAE's dtype must
    sae = random_sae("standard", apply_b_dec_to_input=False, seed=2)
    x = hidden.to(torch.bfloat16)
    z = latent_activations(sae, x, [3, 7])
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, sae.encode(x.float())[..., [3, 7]])


@pytest.mark.parametrize("kind", ["standard", "jumprelu", "gated", "topk", "topk-rescaled"])
def test_index_and_value_tensors_live_on_the_saes_device_not_the_default_one(saes, hidden, kind):
    # a caller may have changed torch's default device (to a GPU, say) while the SAE stays where it was
    # loaded; every index and value tensor the math builds must follow the SAE. A "meta" default device
    # makes a tensor built on the default device hold no data, so the results would differ.
    sae = saes[kind]
    edits = [Edit(latent=3, op="scale", value=0.0), Edit(latent=5, op="add", value=1.5),
             Edit(latent=9, op="clamp", value=0.5)]
    patch = make_patch(sae, ["3:scale:0", "5:add:1.5", "9:clamp:0.5"], tokens=[0, 7])
    x = hidden[:, :8]

    def compute():
        return (steer_block_output(x, sae, patch), steering_delta(sae, x, edits, [0, 7]),
                edits_delta(sae, x, edits), latent_activations(sae, x, [3, 9, 5]), decoder_directions(sae, [3, 9]))

    expected = compute()
    with torch.device("meta"):
        got = compute()
    for want, have in zip(expected, got, strict=True):
        assert have.device == want.device and torch.equal(have, want)


@pytest.mark.parametrize("kind", ["standard", "topk", "topk-rescaled"])
def test_no_latents_read_nothing(saes, hidden, kind):
    sae = saes[kind]
    assert latent_activations(sae, hidden, []).shape == (2, 50, 0)
    assert decoder_directions(sae, []).shape == (0, 768)


def test_token_indices_past_the_end_are_all_named_with_the_fix():
    with pytest.raises(PatchError) as info:
        token_index([0, 60, 99], 50)
    assert str(info.value) == (
        "patch token indices [60, 99] are past the last token (49) of this model; fix 'tokens'"
    )
    assert token_index([0, 49], 50) == [0, 49]


def test_an_sae_that_does_not_subtract_b_dec_is_edited_on_its_own_codes(hidden):
    sae = random_sae("standard", apply_b_dec_to_input=False, seed=2)
    z = sae.encode(hidden)[..., 3:4]
    assert z.abs().sum() > 0  # the edit has something to remove
    delta = edits_delta(sae, hidden, [Edit(latent=3, op="scale", value=0.0)])
    torch.testing.assert_close(delta, -z * sae.W_dec[3], rtol=1e-5, atol=1e-6)


def test_edit_values_keep_the_saes_float64_precision(hidden):
    """0.1 is not 0.1 in float32: a float64 SAE must apply the value it was given, not its float32 rounding."""
    import numpy as np

    sae64 = random_sae("standard", seed=4).double()
    x = hidden.double()
    a, b, c = (edits_delta(sae64, x, [Edit(latent=3, op="scale", value=v)])
               for v in (0.1, float(np.float32(0.1)), 0.2))
    assert (a - c).abs().max() > 1e-3  # latent 3 is active, so its value shows
    k = (0.1 - float(np.float32(0.1))) / (0.1 - 0.2)
    torch.testing.assert_close(a - b, (a - c) * k, rtol=1e-4, atol=1e-15)
