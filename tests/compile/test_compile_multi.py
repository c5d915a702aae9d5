"""Multi-patch graphs: one graph, a `patch_index` input per row, parity per index and on mixed batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerpatch.compile import compile_patch
from steerpatch.compile.parity import torch_reference
from steerpatch.compile.runtime import create_session, session_metadata
from steerpatch.errors import CompileError
from tests.helpers.tiny import CLASSES, make_patch


@pytest.fixture(scope="module")
def multi(tiny, saes, workdir):
    """Three patches on one block, two SAEs (standard sparse, topk exact), compiled into one graph."""
    patches = [
        make_patch(tiny, saes["standard"], name="fix-a", edits=["3:scale:0", "7:clamp:2.0"]),
        make_patch(tiny, saes["topk"], name="fix-b", edits=["5:scale:4", "9:add:1.5"], tokens="cls"),
        make_patch(tiny, saes["standard"], name="fix-c", edits=["11:clamp_if_active:3.0"]),
    ]
    sae_list = [saes["standard"], saes["topk"], saes["standard"]]
    out = workdir / "multi.onnx"
    result = compile_patch(patches, model=tiny, sae=sae_list, classes=CLASSES, out=out, progress=False)
    return patches, sae_list, result


def test_the_graph_takes_a_patch_index_and_lists_its_patches_in_order(multi, compiled):
    patches, _, result = multi
    session = create_session(result.path)
    assert [(i.name, i.type) for i in session.get_inputs()] == [("pixels", "tensor(float)"), ("patch_index", "tensor(int64)")]
    info = result.info
    assert [(e.index, e.patch_ref, e.patch_hash) for e in info.patches] == [
        (i, p.ref, p.content_hash) for i, p in enumerate(patches, 1)
    ]
    assert [e.mode for e in info.patches] == ["sparse", "exact", "sparse"]
    assert info.patch_hash_at(0) is None and info.patch_hash_at(2) == patches[1].content_hash
    assert session_metadata(session)["patch_hashes"] == '["' + '", "'.join(p.content_hash for p in patches) + '"]'
    # a single-patch compile keeps today's interface: one input
    single = create_session(compiled[1].path)
    assert [i.name for i in single.get_inputs()] == ["pixels"]
    assert compiled[1].info.patches is None


def test_each_row_is_steered_by_its_own_patch(multi, tiny):
    """A batch mixing every index equals, row by row, the torch hooks of that row's patch."""
    patches, sae_list, result = multi
    from steerpatch.models import build_zero_shot_head

    head = build_zero_shot_head(tiny, CLASSES)
    pixels = torch.randn(8, 3, tiny.image_size, tiny.image_size, generator=torch.Generator().manual_seed(5))
    index = np.array([3, 0, 1, 2, 2, 1, 0, 3], dtype=np.int64)
    session = create_session(result.path)
    probs, embedding = session.run(["probs", "embedding"], {"pixels": pixels.numpy(), "patch_index": index})
    refs = [torch_reference(tiny, None, None, head, pixels)]
    refs += [torch_reference(tiny, p, s, head, pixels) for p, s in zip(patches, sae_list, strict=True)]
    for row, k in enumerate(index):
        np.testing.assert_allclose(embedding[row], refs[k]["embedding"][row], atol=1e-4)
        np.testing.assert_allclose(probs[row], refs[k]["probs"][row], atol=1e-4)
    # and the patches really differ from each other and from the plain model on these rows
    assert all(np.abs(refs[k]["embedding"] - refs[0]["embedding"]).max() > 1e-3 for k in (1, 2, 3))
    assert result.info.parity_max_abs_diff <= 1e-4
    assert [e.parity_max_abs_diff <= 1e-4 for e in result.info.patches] == [True] * 3


def test_patches_for_different_blocks_or_models_are_refused_and_nothing_is_written(tiny, saes, workdir):
    a = make_patch(tiny, saes["standard"], name="fix-a")
    other_block = make_patch(tiny, saes["standard"], name="fix-b", block=1)
    out = workdir / "refused.onnx"
    with pytest.raises(CompileError, match=r"steers block 1 but fix-a@1.0.0 steers block 2") as caught:
        compile_patch([a, other_block], model=tiny, sae=saes["standard"], classes=CLASSES, out=out, progress=False)
    assert caught.value.exit_code == 2 and not out.exists()
    other_model = a.model_copy(update={"model": a.model.model_copy(update={"id": "ViT-B-32"})})
    with pytest.raises(CompileError, match=r"is for model 'ViT-B-32'"):
        compile_patch([a, other_model], model=tiny, sae=saes["standard"], classes=CLASSES, out=out, progress=False)
    with pytest.raises(CompileError, match="given twice"):
        compile_patch([a, a], model=tiny, sae=saes["standard"], classes=CLASSES, out=out, progress=False)
    assert not out.exists()
