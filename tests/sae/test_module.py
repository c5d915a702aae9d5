"""SAE math: golden values computed by hand from the SAELens formulas, and fingerprint behaviour."""

from __future__ import annotations

import pytest
import torch

from steerpatch.sae import SAE, SAE_REGISTRY, SAEConfig

# d_in = 2, d_sae = 3, written out so the expected values below can be checked on paper
W_ENC = [[1.0, -1.0, 0.5], [2.0, 0.0, -1.0]]
B_ENC = [0.1, 0.2, -0.3]
W_DEC = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
B_DEC = [0.5, -0.5]
THRESHOLD = [1.0, 0.5, 0.05]
X = [[1.0, 2.0], [-1.0, 0.5]]


def _tensors(with_threshold: bool = False) -> dict[str, torch.Tensor]:
    out = {
        "W_enc": torch.tensor(W_ENC),
        "b_enc": torch.tensor(B_ENC),
        "W_dec": torch.tensor(W_DEC),
        "b_dec": torch.tensor(B_DEC),
    }
    if with_threshold:
        out["threshold"] = torch.tensor(THRESHOLD)
    return out


def _pre(x: list[float], apply_b_dec: bool) -> list[float]:
    xin = [x[i] - B_DEC[i] if apply_b_dec else x[i] for i in range(2)]
    return [sum(xin[i] * W_ENC[i][j] for i in range(2)) + B_ENC[j] for j in range(3)]


def _decode(z: list[float]) -> list[float]:
    return [sum(z[j] * W_DEC[j][i] for j in range(3)) + B_DEC[i] for i in range(2)]


def test_pre_activation_by_hand():
    # x=[1,2], x-b_dec=[0.5,2.5]: pre = [0.5+5+0.1, -0.5+0.2, 0.25-2.5-0.3]
    assert _pre(X[0], True) == pytest.approx([5.6, -0.3, -2.55])
    sae = SAE(SAEConfig(d_in=2, d_sae=3, architecture="standard"), _tensors())
    assert sae.pre_acts(torch.tensor(X)).tolist()[0] == pytest.approx([5.6, -0.3, -2.55], abs=1e-6)


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_standard_golden(apply_b_dec):
    sae = SAE(
        SAEConfig(d_in=2, d_sae=3, architecture="standard", apply_b_dec_to_input=apply_b_dec), _tensors()
    )
    for x, z, x_hat in zip(
        X, sae.encode(torch.tensor(X)).tolist(), sae(torch.tensor(X)).tolist(), strict=True
    ):
        expected_z = [max(p, 0.0) for p in _pre(x, apply_b_dec)]
        assert z == pytest.approx(expected_z, abs=1e-6)
        assert x_hat == pytest.approx(_decode(expected_z), abs=1e-6)


def test_topk_golden_keeps_k_largest_of_relu():
    sae = SAE(SAEConfig(d_in=2, d_sae=3, architecture="topk", k=1), _tensors())
    x = [0.0, 0.0]
    pre = _pre(x, True)
    best = max(range(3), key=lambda j: pre[j])
    expected = [max(pre[j], 0.0) if j == best else 0.0 for j in range(3)]
    assert sae.encode(torch.tensor([x])).tolist()[0] == pytest.approx(expected, abs=1e-6)
    # with every pre-activation negative the kept one is still zeroed by the ReLU
    tensors = _tensors()
    tensors["b_enc"] = torch.full((3,), -100.0)
    sae2 = SAE(SAEConfig(d_in=2, d_sae=3, architecture="topk", k=2), tensors)
    assert sae2.encode(torch.tensor(X)).abs().sum() == 0


def test_topk_rescale_by_decoder_norm():
    sae = SAE(
        SAEConfig(d_in=2, d_sae=3, architecture="topk", k=3, rescale_acts_by_decoder_norm=True), _tensors()
    )
    norms = [1.0, 1.0, 2**0.5]
    pre = _pre(X[0], True)
    z = [max(pre[j] * norms[j], 0.0) for j in range(3)]
    assert sae.encode(torch.tensor(X[:1])).tolist()[0] == pytest.approx(z, abs=1e-5)
    x_hat = _decode([z[j] / norms[j] for j in range(3)])
    assert sae(torch.tensor(X[:1])).tolist()[0] == pytest.approx(x_hat, abs=1e-5)


def test_jumprelu_golden():
    sae = SAE(SAEConfig(d_in=2, d_sae=3, architecture="jumprelu"), _tensors(with_threshold=True))
    for x, z in zip(X, sae.encode(torch.tensor(X)).tolist(), strict=True):
        pre = _pre(x, True)
        expected = [max(pre[j], 0.0) * (1.0 if pre[j] > THRESHOLD[j] else 0.0) for j in range(3)]
        assert z == pytest.approx(expected, abs=1e-6)


def test_encode_works_on_token_batches():
    sae = SAE(SAEConfig(d_in=2, d_sae=3, architecture="standard"), _tensors())
    x = torch.tensor(X).reshape(1, 2, 2).repeat(3, 1, 1)
    assert sae.encode(x).shape == (3, 2, 3)
    assert torch.allclose(sae.encode(x)[2], sae.encode(torch.tensor(X)))


@pytest.mark.parametrize("architecture", sorted(SAE_REGISTRY))
def test_fingerprint_tracks_weights_and_math(architecture, make_sae):
    a, b = make_sae(architecture), make_sae(architecture)
    assert a.fingerprint == b.fingerprint and len(a.fingerprint) == 64
    with torch.no_grad():
        b.b_dec[0] += 1e-3
    assert a.fingerprint != b.fingerprint
    c = make_sae(architecture)
    c.cfg = c.cfg.model_copy(update={"apply_b_dec_to_input": False})
    assert c.fingerprint != a.fingerprint


def test_fingerprint_depends_on_k(make_sae):
    a = make_sae("topk")
    b = make_sae("topk")
    b.cfg = b.cfg.model_copy(update={"k": 4})
    assert a.fingerprint != b.fingerprint
