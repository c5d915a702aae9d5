"""The op registry on real tensors: each op's exact rewrite, its identity, and refusals."""

from __future__ import annotations

import pytest
import torch

from steerpatch.errors import PatchError
from steerpatch.patch.ops import OP_NAMES, OPS, Op, get_op, register_op

Z = torch.tensor([[-1.5, 0.0, 2.0], [0.5, -0.25, 3.0]])


def test_the_registered_ops_in_order():
    assert OP_NAMES == ("scale", "clamp", "clamp_if_active", "add")
    assert {name: (op.kind, op.identity) for name, op in OPS.items()} == {
        "scale": ("latent", 1.0), "clamp": ("latent", None), "clamp_if_active": ("latent", None),
        "add": ("direction", 0.0),
    }


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("scale", 0.0, [[-0.0, 0.0, 0.0], [0.0, -0.0, 0.0]]),
        ("scale", 2.5, [[-3.75, 0.0, 5.0], [1.25, -0.625, 7.5]]),
        ("clamp", 4.0, [[4.0, 4.0, 4.0], [4.0, 4.0, 4.0]]),
        # only strictly positive activations are active: 0.0 and negatives stay as they were
        ("clamp_if_active", 4.0, [[-1.5, 0.0, 4.0], [4.0, -0.25, 4.0]]),
    ],
)
def test_latent_ops_rewrite_exactly(name, value, expected):
    out = get_op(name).rewrite(Z, value)
    assert torch.equal(out, torch.tensor(expected))
    assert out.dtype == Z.dtype and out.shape == Z.shape
    assert torch.equal(Z, torch.tensor([[-1.5, 0.0, 2.0], [0.5, -0.25, 3.0]]))  # the input is left alone


def test_identity_values_change_nothing():
    assert torch.equal(get_op("scale").rewrite(Z, get_op("scale").identity), Z)


def test_a_direction_op_does_not_rewrite_latents():
    with pytest.raises(TypeError, match="op 'add' adds a direction; it does not rewrite latent activations"):
        get_op("add").rewrite(Z, 1.0)


def test_unknown_op_lists_the_known_ones():
    with pytest.raises(PatchError) as info:
        get_op("sclae")
    assert str(info.value) == "unknown patch op 'sclae'; use one of: scale, clamp, clamp_if_active, add"
    assert info.value.exit_code == 2


def test_register_refuses_a_duplicate_and_adds_a_new_op():
    with pytest.raises(ValueError, match="patch op 'scale' is already registered"):
        register_op(Op("scale", "latent", lambda z, v: z, "again", None))
    assert OPS["scale"].summary.startswith("z_i <- value * z_i")
    negate = Op("test-negate", "latent", lambda z, v: -z, "z_i <- -z_i", None)
    try:
        assert register_op(negate) is negate
        assert get_op("test-negate") is negate
    finally:
        del OPS["test-negate"]
