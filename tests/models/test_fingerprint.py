"""Weight fingerprints: stable under key order, device and float width; sensitive to every value."""

from __future__ import annotations

from collections import OrderedDict

import torch

from steerpatch.models import fingerprint_model, fingerprint_state_dict


def _state():
    g = torch.Generator().manual_seed(0)
    return OrderedDict(
        [
            ("a.weight", torch.randn(4, 3, generator=g)),
            ("b.bias", torch.randn(3, generator=g)),
            ("c.index", torch.arange(5)),
            ("d.flag", torch.tensor([True, False])),
        ]
    )


def test_independent_of_key_order():
    state = _state()
    reversed_state = OrderedDict(reversed(list(state.items())))
    assert fingerprint_state_dict(state) == fingerprint_state_dict(reversed_state)


def test_independent_of_float_width_and_layout():
    state = _state()
    wide = {k: (v.double() if v.is_floating_point() else v) for k, v in state.items()}
    strided = dict(state, **{"a.weight": state["a.weight"].t().contiguous().t()})
    assert not strided["a.weight"].is_contiguous()
    assert fingerprint_state_dict(state) == fingerprint_state_dict(wide) == fingerprint_state_dict(strided)


def test_sensitive_to_values_names_and_shapes():
    base = fingerprint_state_dict(_state())
    nudged = _state()
    nudged["a.weight"][0, 0] += 1e-6
    renamed = _state()
    renamed["z.weight"] = renamed.pop("a.weight")
    reshaped = _state()
    reshaped["a.weight"] = reshaped["a.weight"].reshape(3, 4)
    digests = {
        base,
        fingerprint_state_dict(nudged),
        fingerprint_state_dict(renamed),
        fingerprint_state_dict(reshaped),
    }
    assert len(digests) == 4
    assert len(base) == 64 and int(base, 16) >= 0


def test_model_fingerprint_matches_loaded_and_survives_a_round_trip(concept_model):
    model = concept_model.model
    assert fingerprint_model(model) == concept_model.fingerprint
    shuffled = OrderedDict(sorted(model.state_dict().items(), key=lambda kv: kv[0][::-1]))
    assert fingerprint_state_dict(shuffled) == concept_model.fingerprint
