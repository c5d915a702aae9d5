"""Bad input to compile: clear errors and nothing written."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from steerpatch.compile import build_graph, compile_patch
from steerpatch.errors import CompileError, MissingDependencyError, PatchError
from tests.helpers.tiny import CLASSES, make_patch


def test_parity_failure_refuses_and_writes_nothing(tiny, saes, tmp_path):
    out = tmp_path / "g.onnx"
    patch = make_patch(tiny, saes["standard"])
    with pytest.raises(CompileError, match=r"parity check failed .* max abs difference .* exceeds the tolerance 1e-12"):
        compile_patch(patch, model=tiny, sae=saes["standard"], head="embedding", tolerance=1e-12, out=out)
    assert list(tmp_path.iterdir()) == []


def test_patch_for_another_model_is_refused_naming_both_fingerprints(tiny, saes):
    patch = make_patch(tiny, saes["standard"])
    other = patch.with_changes(model={"id": patch.model.id, "fingerprint": "0" * 64})
    with pytest.raises(PatchError) as error:
        compile_patch(other, model=tiny, sae=saes["standard"], head="embedding")
    assert "0" * 64 in str(error.value) and tiny.fingerprint in str(error.value)


def test_patch_with_another_sae_is_refused(tiny, saes):
    patch = make_patch(tiny, saes["standard"])
    with pytest.raises(PatchError, match="sae fingerprint mismatch"):
        compile_patch(patch, model=tiny, sae=saes["jumprelu"], head="embedding")


def test_unsupported_architecture(tiny, saes):
    patch = make_patch(tiny, saes["standard"])
    with pytest.raises(CompileError, match="'sparsemax' cannot be compiled; supported: gated, jumprelu, standard, topk"):
        build_graph(tiny, patch, SimpleNamespace(architecture="sparsemax"))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"head": "softmax"}, "--head 'softmax' is not one of"),
    ({"tolerance": -1.0}, "must be a non-negative number"),
    ({"tolerance": float("nan")}, "must be a non-negative number"),
])
def test_bad_options(kwargs, message, tiny, saes):
    with pytest.raises(CompileError, match=message):
        compile_patch(make_patch(tiny, saes["standard"]), model=tiny, sae=saes["standard"], **kwargs)


def test_zero_shot_head_needs_class_names(tiny, saes):
    with pytest.raises(CompileError, match="needs class names"):
        compile_patch(make_patch(tiny, saes["standard"]), model=tiny, sae=saes["standard"])


def test_missing_onnxruntime_names_the_extra(monkeypatch, tiny, saes):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what `import` sees when it is not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'steerpatch\[cpu\]'.*steerpatch\[gpu\]"):
        compile_patch(make_patch(tiny, saes["standard"]), model=tiny, sae=saes["standard"], classes=CLASSES)


def test_parity_on_held_out_images_takes_classes_from_the_data(tiny, saes, tmp_path):
    rng = np.random.default_rng(0)
    for label in CLASSES:
        (tmp_path / label).mkdir()
        for i in range(4):
            pixels = (rng.random((80, 70, 3)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{i}.png")
    result = compile_patch(make_patch(tiny, saes["standard"]), model=tiny, sae=saes["standard"], data=tmp_path)
    assert result.info.classes == CLASSES
    assert result.info.parity_inputs.startswith(f"data:{tmp_path}") and "12 images" in result.info.parity_inputs
    assert result.info.parity_samples == 64
    assert result.info.parity_max_abs_diff <= 1e-4
