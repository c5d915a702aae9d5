"""The parity gate's parts: compare (NaN, missing outputs, bounds), its inputs, the torch and ORT sides."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from steerpatch.compile.parity import (
    MIN_SAMPLES,
    ParityResult,
    compare,
    onnx_outputs,
    parity_inputs,
    torch_reference,
)
from steerpatch.errors import CompileError

REF = {"embedding": np.zeros((4, 3), np.float32), "logits": np.zeros((4, 2), np.float32)}


def _shifted(**shifts):
    """A copy of REF with element [1, 1] of each named output set to the given value."""
    out = {k: v.copy() for k, v in REF.items()}
    for name, value in shifts.items():
        out[name][1, 1] = value
    return out


def test_identical_outputs_pass_with_zero_difference():
    result = compare(REF, _shifted(), tolerance=0.0, inputs="random")
    assert result == ParityResult(0.0, {"embedding": 0.0, "logits": 0.0}, 4, "random", 0.0)
    assert result.passed


def test_the_largest_difference_of_any_output_is_reported():
    result = compare(REF, _shifted(embedding=-0.25, logits=0.5), tolerance=0.5, inputs="data:x")
    assert result.per_output == {"embedding": 0.25, "logits": 0.5}
    assert result.max_abs_diff == 0.5 and result.samples == 4 and result.inputs == "data:x"
    assert result.passed  # the bound is inclusive
    assert not compare(REF, _shifted(logits=0.5), tolerance=0.4999, inputs="x").passed


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("where", ["embedding", "logits"])
def test_a_non_finite_output_fails_whichever_output_holds_it(bad, where):
    # max() over [0.0, nan] is 0.0: a NaN in any but the first output must still fail the gate
    result = compare(REF, _shifted(**{where: bad}), tolerance=1e9, inputs="x")
    assert math.isinf(result.per_output[where]) and result.per_output[where] > 0
    assert math.isinf(result.max_abs_diff) and result.max_abs_diff > 0
    assert not result.passed


def test_a_nan_in_the_reference_fails_too():
    reference = _shifted(logits=math.nan)
    result = compare(reference, _shifted(), tolerance=1e9, inputs="x")
    assert math.isinf(result.max_abs_diff) and not result.passed


def test_a_nan_max_abs_diff_never_passes():
    assert not ParityResult(math.nan, {"embedding": math.nan}, 1, "x", 1e9).passed


def test_a_missing_output_is_an_error():
    candidate = {"embedding": REF["embedding"]}
    with pytest.raises(CompileError) as info:
        compare(REF, candidate, tolerance=1.0, inputs="x")
    assert str(info.value) == "compiled graph output 'logits' is None, expected (4, 2)"


def test_a_wrong_shape_is_an_error():
    candidate = {"embedding": REF["embedding"], "logits": np.zeros((4, 3), np.float32)}
    with pytest.raises(CompileError, match=r"^compiled graph output 'logits' is \(4, 3\), expected \(4, 2\)$"):
        compare(REF, candidate, tolerance=1.0, inputs="x")


def test_differences_are_taken_in_float64():
    # in float32, 1e8 + 1 == 1e8 and the difference would vanish
    reference = {"embedding": np.full((2, 1), 1e8, np.float32)}
    candidate = {"embedding": np.full((2, 1), 1e8, np.float64) + 1.0}
    assert compare(reference, candidate, tolerance=0.0, inputs="x").max_abs_diff == 1.0


def test_random_inputs_are_seeded_and_at_least_the_minimum(concept_model):
    pixels, source = parity_inputs(concept_model, n=3, seed=5)
    size = concept_model.image_size
    assert source == "random" and MIN_SAMPLES == 64
    expected = torch.randn(64, 3, size, size, generator=torch.Generator().manual_seed(5))
    assert torch.equal(pixels, expected)
    more, _ = parity_inputs(concept_model, n=70)
    assert more.shape == (70, 3, size, size)
    assert torch.equal(more, torch.randn(70, 3, size, size, generator=torch.Generator().manual_seed(0)))


def test_data_inputs_are_the_dataset_topped_up_with_random(concept_model, tmp_path):
    from steerpatch.data import load_dataset
    from steerpatch.models import preprocess_batch
    from steerpatch.world import write_world

    root = write_world(tmp_path / "w", split="test", n=5, seed=3, progress=False)
    dataset = load_dataset(root)
    pixels, source = parity_inputs(concept_model, root, seed=2)
    assert source == f"data:{dataset.root} (5 images)"
    assert pixels.shape == (64, 3, concept_model.image_size, concept_model.image_size)
    images = preprocess_batch(concept_model, [dataset.load_image(i) for i in range(5)])
    assert torch.equal(pixels[:5], images)
    extra = torch.randn(59, *images.shape[1:], generator=torch.Generator().manual_seed(2))
    assert torch.equal(pixels[5:], extra)
    # a dataset object works the same as its folder
    again, _ = parity_inputs(concept_model, dataset, seed=2)
    assert torch.equal(again, pixels)


def test_data_inputs_spread_over_a_large_dataset(concept_model, tmp_path):
    from steerpatch.data import load_dataset
    from steerpatch.models import preprocess_batch
    from steerpatch.world import write_world

    root = write_world(tmp_path / "w", split="test", n=67, seed=3, progress=False)
    dataset = load_dataset(root)
    pixels, source = parity_inputs(concept_model, dataset)
    assert source == f"data:{dataset.root} (64 images)"
    picks = np.linspace(0, 66, num=64).round().astype(int)
    assert len(set(picks.tolist())) == 64
    expected = preprocess_batch(concept_model, [dataset.load_image(int(i)) for i in picks])
    assert torch.equal(pixels, expected)


def test_torch_reference_is_the_plain_and_the_steered_model(concept_model):
    from steerpatch.models import build_zero_shot_head, encode_images
    from steerpatch.patch import new_patch
    from steerpatch.sae import default_sae_path, load_sae
    from steerpatch.steer import steer

    pixels = torch.randn(18, 3, concept_model.image_size, concept_model.image_size,
                         generator=torch.Generator().manual_seed(1))  # two chunks of 16 and 2
    plain = torch_reference(concept_model, None, None, None, pixels)
    assert list(plain) == ["embedding"]
    np.testing.assert_allclose(plain["embedding"], encode_images(concept_model, pixels).numpy(), atol=1e-5)

    sae = load_sae(default_sae_path())
    patch = new_patch("p", concept_model, sae, [(240, "scale", 0.0)], rationale="t", author="t",
                      tokens=sae.hook.tokens)
    head = build_zero_shot_head(concept_model, ["circle", "square", "star"])
    steered = torch_reference(concept_model, patch, sae, head, pixels)
    assert list(steered) == ["embedding", "logits", "probs"]
    with steer(concept_model, patch, sae):
        embedding = encode_images(concept_model, pixels)
    np.testing.assert_allclose(steered["embedding"], embedding.numpy(), atol=1e-5)
    assert np.abs(steered["embedding"] - plain["embedding"]).max() > 1e-3  # the patch does change it
    np.testing.assert_allclose(steered["logits"], head.logits(embedding).numpy(), atol=1e-4)
    np.testing.assert_allclose(steered["probs"], torch.softmax(head.logits(embedding), -1).numpy(), atol=1e-6)


def test_zero_size_outputs_compare_as_equal():
    empty = {"embedding": np.zeros((4, 0), np.float32)}
    result = compare(empty, {"embedding": np.zeros((4, 0), np.float32)}, tolerance=0.0, inputs="x")
    assert result.max_abs_diff == 0.0 and result.passed


def _bar(text: str, what: str, batches: int) -> None:
    """A tqdm bar for `what` that counted `batches` batches and was cleared when done (leave=False)."""
    assert text.startswith(f"\r{what}:   0%") and f"| 0/{batches} [" in text and "batch/s]" in text, text
    assert text.endswith("\r") and text.split("\r")[-2].strip() == "", repr(text[-40:])  # the line is wiped


def test_progress_bars_only_when_asked(concept_model, tmp_path, capsys):
    pixels = torch.randn(17, 3, concept_model.image_size, concept_model.image_size,
                         generator=torch.Generator().manual_seed(1))
    torch_reference(concept_model, None, None, None, pixels)
    assert capsys.readouterr().err == ""
    torch_reference(concept_model, None, None, None, pixels, progress=True)
    _bar(capsys.readouterr().err, "parity: torch", 2)
    session = _identity_session(tmp_path)
    onnx_outputs(session, pixels[:, :, :2, :2].contiguous())
    assert capsys.readouterr().err == ""
    onnx_outputs(session, pixels[:, :, :2, :2].contiguous(), progress=True)
    _bar(capsys.readouterr().err, "parity: onnxruntime", 2)


def _identity_session(tmp_path):
    """A real ONNX Runtime session: pixels -> same (Identity) and double (pixels + pixels)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["pixels"], ["same"]), helper.make_node("Add", ["pixels", "pixels"], ["double"])],
        "g",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["n", 3, 2, 2])],
        [helper.make_tensor_value_info("same", TensorProto.FLOAT, ["n", 3, 2, 2]),
         helper.make_tensor_value_info("double", TensorProto.FLOAT, ["n", 3, 2, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "g.onnx")
    return ort.InferenceSession(str(tmp_path / "g.onnx"), providers=["CPUExecutionProvider"])


def test_onnx_outputs_run_every_output_over_every_chunk(tmp_path):
    session = _identity_session(tmp_path)
    pixels = torch.arange(35 * 12, dtype=torch.float64).reshape(35, 3, 2, 2)  # three chunks: 16, 16, 3
    out = onnx_outputs(session, pixels)
    assert list(out) == ["same", "double"]
    assert out["same"].dtype == np.float32
    np.testing.assert_array_equal(out["same"], pixels.numpy().astype(np.float32))
    np.testing.assert_array_equal(out["double"], 2 * pixels.numpy().astype(np.float32))
