"""The training loop on synthetic sparse data: every architecture learns, and the result is in raw units."""

from __future__ import annotations

import pytest
import torch

from steerpatch.errors import SAEError
from steerpatch.sae import FitSettings, fit_sae, reconstruction_metrics
from steerpatch.sae.architectures import trainable_architectures


def _sparse_data(n: int = 6000, d: int = 16, m: int = 48, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=-1)
    codes = (torch.rand(n, m, generator=g) < 0.06) * torch.rand(n, m, generator=g) * 4
    # an offset and a non-unit scale, so the training-time normalisation has something to fold back
    return 7.0 * (codes @ directions + 0.3)


SETTINGS = {
    "standard": {"l1_coefficient": 0.1},
    "topk": {"k": 6},
    "jumprelu": {"l0_coefficient": 0.02},
}


@pytest.mark.parametrize("architecture", trainable_architectures())
def test_fit_reaches_low_fvu(architecture):
    data = _sparse_data()
    settings = FitSettings(
        architecture=architecture,
        d_sae=96,
        steps=300,
        batch_size=256,
        lr=3e-3,
        resample_every=100,
        **SETTINGS[architecture],
    )
    sae, log = fit_sae(data[:5000], settings, metadata={"block": 0}, progress=False)
    metrics = reconstruction_metrics(sae, data[5000:])
    assert metrics["fvu"] < 0.2, metrics
    assert metrics["mean_l0"] < 40, metrics
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(96), atol=1e-4)
    assert sae.hook.block == 0 and log.scale != 1.0
    if architecture == "topk":
        assert metrics["mean_l0"] <= 6


def test_fit_is_deterministic():
    data = _sparse_data(n=1000)
    settings = FitSettings(d_sae=32, steps=20, batch_size=128)
    a, _ = fit_sae(data, settings, progress=False)
    b, _ = fit_sae(data, settings, progress=False)
    assert a.fingerprint == b.fingerprint


def test_fit_bad_input():
    with pytest.raises(SAEError, match="unknown SAE architecture 'sparsemax'"):
        fit_sae(torch.randn(10, 4), FitSettings(architecture="sparsemax"), progress=False)
    with pytest.raises(SAEError, match="'gated' can be loaded but not trained here; train one of jumprelu"):
        fit_sae(torch.randn(10, 4), FitSettings(architecture="gated"), progress=False)
    with pytest.raises(SAEError, match="k=40 must be between 1"):
        fit_sae(torch.randn(10, 4), FitSettings(architecture="topk", k=40, d_sae=8), progress=False)
    with pytest.raises(SAEError, match="at least 2 rows"):
        fit_sae(torch.randn(1, 4), FitSettings(), progress=False)
