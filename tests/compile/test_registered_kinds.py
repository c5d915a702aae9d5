"""An op or an SAE architecture registered in a test alone steers in torch, compiles and matches ONNX Runtime.

Nothing here is known to the package: if the torch steering, the training loop or the ONNX steering
module kept their own table of ops or architectures, these kinds would fail there.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from steerpatch.compile import compile_patch, create_session
from steerpatch.compile.parity import onnx_outputs, torch_reference
from steerpatch.models import build_zero_shot_head, encode_images
from steerpatch.patch.ops import OPS, Op, register_op
from steerpatch.sae import ARCHITECTURES, Architecture, FitSettings, Training, fit_sae, register_architecture
from steerpatch.steer import steering_delta
from tests.helpers.tiny import CLASSES, D_SAE, make_patch, random_sae

PIXELS = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(11))


def _shift(z, value):
    return z + value


def _test_relu(t, pre):
    # an elementwise architecture with its own per-latent tensor: z = relu(pre - offset)
    return (pre - t.offset).relu()


def _train_test_relu(p, pre, s):
    z = (pre - p["offset"]).relu()
    return z, z.sum(dim=-1).mean()


@pytest.fixture(scope="module")
def shift_op():
    op = register_op(Op("test-shift", "latent", _shift, "z_i <- z_i + value", 0.0))
    try:
        yield op
    finally:
        del OPS[op.name]


@pytest.fixture(scope="module")
def toy_architecture():
    arch = register_architecture(
        Architecture(
            "test-offset-relu",
            _test_relu,
            extra_tensors=("offset",),
            description="z = relu(pre - offset)",
            training=Training(
                _train_test_relu,
                lambda s: s.l1_coefficient,
                extra_params=lambda s: {"offset": torch.full((s.d_sae,), 0.25)},
                fold=lambda p, scale: {"offset": p["offset"].detach() / scale},
            ),
        )
    )
    try:
        yield arch
    finally:
        del ARCHITECTURES[arch.name]


def _outputs_match_the_torch_hooks(tiny, patch, sae) -> dict:
    result = compile_patch(patch, model=tiny, sae=sae, classes=CLASSES, progress=False)
    got = onnx_outputs(create_session(result.data), PIXELS)
    want = torch_reference(tiny, patch, sae, build_zero_shot_head(tiny, CLASSES), PIXELS)
    for name in ("embedding", "logits", "probs"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=0)
    return {"result": result, "embedding": got["embedding"]}


def test_an_op_registered_in_a_test_steers_in_torch_and_compiles(shift_op, tiny, saes):
    sae = saes["standard"]
    # torch: shifting z_i by v adds exactly v * W_dec[i] on every scoped token
    patch = make_patch(tiny, sae, edits=["3:test-shift:0.5"], tokens="cls")
    x = torch.randn(2, 17, sae.d_in, generator=torch.Generator().manual_seed(3))
    delta = steering_delta(sae, x, patch.edits, patch.tokens)
    torch.testing.assert_close(delta[:, 0], (0.5 * sae.W_dec[3]).expand(2, -1), atol=1e-5, rtol=0)
    assert torch.equal(delta[:, 1:], torch.zeros_like(delta[:, 1:]))

    # ONNX: the registered op, mixed with built-in ones, gives what the torch hooks give
    mixed = make_patch(tiny, sae, edits=["3:test-shift:0.5", "7:scale:2", "9:test-shift:-1.5", "13:add:1"])
    without = make_patch(tiny, sae, edits=["7:scale:2", "13:add:1"])
    steered = _outputs_match_the_torch_hooks(tiny, mixed, sae)
    plain = _outputs_match_the_torch_hooks(tiny, without, sae)
    assert steered["result"].info.mode == "sparse"
    assert np.abs(steered["embedding"] - plain["embedding"]).max() > 1e-2  # the shift edits act in the graph


def test_an_architecture_registered_in_a_test_trains_steers_and_compiles_sparse(toy_architecture, tiny, workdir):
    sae = random_sae(toy_architecture.name, tiny.model.visual.transformer.width, workdir)
    assert sae.spec is toy_architecture and sae.offset.abs().sum() > 0
    patch = make_patch(tiny, sae, edits=["3:scale:0", "7:clamp:2.0", "13:add:1.5"])
    compiled = _outputs_match_the_torch_hooks(tiny, patch, sae)
    assert compiled["result"].info.mode == "sparse"
    initializers = onnx.load_from_string(compiled["result"].data).graph.initializer
    assert D_SAE not in {d for t in initializers for d in t.dims}  # only the edited latents' columns
    plain = encode_images(tiny, PIXELS).detach().numpy()
    assert np.abs(compiled["embedding"] - plain).max() > 1e-2

    # its training hooks drive fit_sae: the extra tensor starts at 0.25, learns at the fast rate
    # (Adam moves it by about lr * threshold_lr_multiplier per step) and is folded to raw units
    acts = torch.randn(256, 8, generator=torch.Generator().manual_seed(5)) * 3
    settings = FitSettings(architecture=toy_architecture.name, d_sae=16, steps=5, batch_size=64, resample_every=0)
    fitted, log = fit_sae(acts, settings, progress=False)
    assert fitted.architecture == toy_architecture.name and log.scale != 1.0
    moved = (fitted.offset * log.scale - 0.25).abs().max()
    fast = settings.lr * settings.threshold_lr_multiplier
    assert settings.steps * settings.lr < moved <= settings.steps * fast * 1.1
