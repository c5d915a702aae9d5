"""`--optimize` (ONNX Runtime's transformer fusions, parity-gated) and `--int8` (behind its agreement gate)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
import torch

from steerpatch.compile import compile_patch
from steerpatch.compile.optimize import MIN_INT8_AGREEMENT
from steerpatch.compile.parity import onnx_outputs, parity_inputs
from steerpatch.compile.runtime import create_session
from tests.helpers.tiny import CLASSES, make_patch


@pytest.fixture(scope="module")
def optimized(tiny, saes, workdir):
    patch = make_patch(tiny, saes["standard"])
    return compile_patch(patch, model=tiny, sae=saes["standard"], classes=CLASSES, out=workdir / "opt.onnx",
                         optimize=True, progress=False)


def test_the_optimised_graph_is_fused_and_still_passes_parity(optimized, compiled):
    info = optimized.info
    assert info.fusions and info.fusions.get("BiasGelu", 0) > 0  # what the optimiser finds in open_clip's trace
    assert info.parity_max_abs_diff <= info.parity_tolerance
    ops = Counter(node.op_type for node in onnx.load(optimized.path).graph.node)
    assert ops["BiasGelu"] == info.fusions["BiasGelu"]
    # the steering module is intact: same answers as the unoptimised steered graph, which differ from the plain model
    pixels, _ = parity_inputs(_loaded(compiled), None, 64)
    ours = onnx_outputs(create_session(optimized.path), pixels)
    theirs = onnx_outputs(create_session(compiled[1].path), pixels)
    np.testing.assert_allclose(ours["probs"], theirs["probs"], atol=1e-5)
    assert compiled[1].info.fusions is None and compiled[1].info.int8_top1_agreement is None  # never on by default


def _loaded(compiled):
    from types import SimpleNamespace

    return SimpleNamespace(image_size=compiled[1].info.preprocessing.image_size)


def test_int8_is_gated_on_top1_agreement_and_writes_nothing_below_it(tiny, saes, workdir, compiled):
    """The random tiny model's near-uniform classes are fragile under int8: the gate measures and refuses."""
    from steerpatch.compile.optimize import quantize_graph
    from steerpatch.errors import GateFailed

    patch = make_patch(tiny, saes["standard"])
    out = workdir / "int8.onnx"
    with pytest.raises(GateFailed) as caught:
        compile_patch(patch, model=tiny, sae=saes["standard"], classes=CLASSES, out=out, int8=True, optimize=True,
                      progress=False)
    assert caught.value.exit_code == 1 and not out.exists()
    quantized = quantize_graph(compiled[1].data)
    ops = Counter(node.op_type for node in onnx.load_from_string(quantized).graph.node)
    assert ops["DynamicQuantizeLinear"] > 0 and ops["MatMulInteger"] > 0
    pixels, _ = parity_inputs(_loaded(compiled), None, 64)  # the gate's own inputs (seeded)
    fp32 = onnx_outputs(create_session(compiled[1].data), pixels)["probs"].argmax(1)
    int8 = onnx_outputs(create_session(quantized), pixels)["probs"].argmax(1)
    agreement = float((fp32 == int8).mean())
    assert agreement < MIN_INT8_AGREEMENT
    assert f"top-1 agreement with the fp32 graph is {agreement:.2%} on 64 inputs" in str(caught.value)


def test_attention_fuses_once_per_block_through_the_export_time_attention(optimized, tiny):
    """open_clip's packed attention traced as separate Q/K/V lets ONNX Runtime fuse every block's attention."""
    blocks = len(tiny.model.visual.transformer.resblocks)
    assert optimized.info.fusions["Attention"] == blocks
    ops = Counter(node.op_type for node in onnx.load(optimized.path).graph.node)
    assert ops["Attention"] == blocks
    # the swap lasted only for the export: the torch model still holds its own attention modules
    assert all(isinstance(block.attn, torch.nn.MultiheadAttention) for block in tiny.model.visual.transformer.resblocks)


def test_fusable_attention_computes_what_multihead_attention_computes():
    from steerpatch.compile.attention import FusableAttention, fusable_attention

    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        expected = mha(x, x, x, need_weights=False)[0]
        got = FusableAttention(mha)(x, x, x, need_weights=False)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    holder = torch.nn.Sequential(mha)
    with fusable_attention(holder) as swapped:
        assert swapped == 1 and isinstance(holder[0], FusableAttention)
    assert holder[0] is mha
    with pytest.raises(ValueError, match="unmasked self-attention"):
        FusableAttention(mha)(x, x, x, attn_mask=torch.zeros(7, 7))
