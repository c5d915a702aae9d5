"""The compiled graph computes the engine's steered model: every architecture, op and token scope."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from steerpatch.compile import compile_patch, create_session, session_metadata
from steerpatch.compile.metadata import GraphInfo
from steerpatch.compile.parity import onnx_outputs, torch_reference
from steerpatch.compile.steering import MODES
from steerpatch.models import build_zero_shot_head, encode_images
from tests.helpers.tiny import CLASSES, D_SAE, EDITS, make_patch

PIXELS = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(7))


def _plain_embedding(model) -> np.ndarray:
    with torch.no_grad():
        return encode_images(model, PIXELS).numpy()


# each architecture with a different token scope, to keep the number of compiles small
CASES = [("standard", "all"), ("jumprelu", "cls"), ("topk", "patches"), ("topk-rescaled", [0, 5, 9])]


@pytest.fixture(scope="module")
def by_arch(tiny, saes) -> dict:
    out = {}
    for arch, tokens in CASES:
        patch = make_patch(tiny, saes[arch], tokens=tokens)
        out[arch] = (patch, compile_patch(patch, model=tiny, sae=saes[arch], classes=CLASSES))
    return out


@pytest.mark.parametrize(("arch", "tokens"), CASES)
def test_every_architecture_and_scope_matches_the_engine_and_moves_the_output(arch, tokens, tiny, saes, by_arch):
    sae = saes[arch]
    patch, result = by_arch[arch]

    assert result.info.tokens == tokens
    assert result.info.mode == MODES[sae.architecture][0]
    assert result.info.parity_max_abs_diff <= 1e-4
    assert result.info.parity_samples >= 64
    session = create_session(result.data)
    got = onnx_outputs(session, PIXELS)
    head = build_zero_shot_head(tiny, CLASSES)
    want = torch_reference(tiny, patch, sae, head, PIXELS)
    for name in ("embedding", "logits", "probs"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=0)
    # the steering really acts: the graph is far from the unsteered model
    assert np.abs(got["embedding"] - _plain_embedding(tiny)).max() > 1e-2


def test_sparse_graph_carries_only_the_edited_rows(tiny, by_arch):
    width = tiny.model.visual.transformer.width
    sparse, exact = by_arch["standard"][1], by_arch["topk"][1]
    k = len(EDITS)

    # O(k*d): encoder columns, decoder rows, a handful of per-latent vectors, b_dec, the add vector, a token mask
    assert sparse.info.extra_weights <= 2 * k * width + 8 * k + 3 * width + 100
    def dims(result):
        return {d for t in onnx.load_from_string(result.data).graph.initializer for d in t.dims}

    assert D_SAE not in dims(sparse)  # no full encoder or decoder
    assert D_SAE in dims(exact)
    assert exact.info.extra_weights >= width * D_SAE
    assert "k-th largest" in exact.info.mode_reason


def test_empty_patch_is_the_plain_encoder(tiny, saes):
    patch = make_patch(tiny, saes["standard"], edits=[])
    result = compile_patch(patch, model=tiny, sae=saes["standard"], head="embedding")
    assert result.info.mode == "none"
    got = onnx_outputs(create_session(result.data), PIXELS)["embedding"]
    np.testing.assert_allclose(got, _plain_embedding(tiny), atol=1e-5, rtol=0)


def test_graph_contract_batch_axis_opset_single_file_and_metadata(compiled, workdir):
    patch, result = compiled
    path = result.path
    assert path.is_file() and path.read_bytes() == result.data
    # one file: nothing else was written beside it, and no tensor points at external data
    assert not [p for p in workdir.iterdir() if p.name.startswith(".standard.onnx")]
    proto = onnx.load(str(path), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
    assert max(op.version for op in proto.opset_import if op.domain in ("", "ai.onnx")) >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"

    session = create_session(path)
    for batch in (1, 3):
        outputs = session.run(None, {"pixels": np.zeros((batch, 3, 64, 64), np.float32)})
        assert [o.shape[0] for o in outputs] == [batch] * 3
    props = session_metadata(session)
    info = GraphInfo.from_props(props)
    assert props["patch_hash"] == patch.content_hash == info.patch_hash
    assert props["model_fingerprint"] == patch.model.fingerprint
    assert info.classes == CLASSES and info.head == "zero-shot" and info.mode == "sparse"
    assert float(props["parity_max_abs_diff"]) == result.info.parity_max_abs_diff
    assert info.outputs == ["embedding", "logits", "probs"]


def test_embedding_head_has_one_output(tiny, saes):
    result = compile_patch(make_patch(tiny, saes["jumprelu"]), model=tiny, sae=saes["jumprelu"], head="embedding")
    session = create_session(result.data)
    assert [o.name for o in session.get_outputs()] == ["embedding"]
    assert result.info.classes == []
