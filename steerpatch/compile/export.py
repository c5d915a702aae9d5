"""Turn an `EncoderGraph` into one self-contained ONNX file with a dynamic batch axis."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from steerpatch.compile.attention import fusable_attention
from steerpatch.errors import CompileError
from steerpatch.io import atomic_file

OPSET = 17
INPUT_NAME = "pixels"
PATCH_INDEX = "patch_index"  # the second input of a multi-patch graph: int64, one per batch row
# protobuf refuses single messages over 2 GB; beyond that ONNX needs external data, which we never write
MAX_PROTO_BYTES = 2**31 - 1


@contextlib.contextmanager
def _exportable_attention():
    # nn.MultiheadAttention's fused fast path has no ONNX symbolic; the plain path traces to MatMul/Softmax
    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)


def export_graph(module: torch.nn.Module, image_size: int, output_names: list[str], *, opset: int = OPSET,
                 fusable: bool = False) -> Any:
    """Trace `module` (pixels [, patch_index] -> outputs) to an in-memory ONNX model.

    Args:
        module: an `EncoderGraph` in eval mode.
        image_size: side of the square input image.
        output_names: names of the module's outputs, in order.
        opset: ONNX opset; at least 17 (LayerNormalization).
        fusable: trace the tower's attention in the form ONNX Runtime's attention fusion matches
            (`steerpatch.compile.attention`; same weights and math), for `--optimize`.

    Returns:
        An `onnx.ModelProto` with a dynamic `batch` axis on the inputs and every output (a module
        whose `input_names` include `patch_index` gets that int64 input too).

    Raises:
        CompileError: when tracing fails or the graph would not fit in one file.
    """
    import onnx

    if opset < 17:
        raise CompileError(f"opset {opset} is too old; use 17 or newer (LayerNormalization needs it)")
    input_names = list(getattr(module, "input_names", [INPUT_NAME]))
    example: tuple[torch.Tensor, ...] = (torch.zeros(1, 3, image_size, image_size),)
    if PATCH_INDEX in input_names:
        example = (*example, torch.zeros(1, dtype=torch.int64))
    dynamic_axes = {name: {0: "batch"} for name in [*input_names, *output_names]}
    buffer = io.BytesIO()
    try:
        swap = fusable_attention(module) if fusable else contextlib.nullcontext()
        with _exportable_attention(), swap, torch.no_grad(), warnings.catch_warnings():
            # the tracer's notes (constant shapes, legacy exporter) are about its internals, not our graph
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                example,
                buffer,  # type: ignore[arg-type]  # the legacy exporter writes to file objects too
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as error:  # the exporter raises many unrelated types
        raise CompileError(f"ONNX export of the steered encoder failed: {error}") from error
    data = buffer.getvalue()
    if len(data) > MAX_PROTO_BYTES:
        raise CompileError(
            f"the graph is {len(data) / 1e9:.1f} GB, over ONNX's 2 GB single-file limit; "
            "use a sparse-compilable SAE (standard or jumprelu) or fewer weights"
        )
    return onnx.load_from_string(data)


def set_metadata(proto: Any, props: dict[str, str]) -> Any:
    """Replace the graph's `metadata_props` with `props` (returns the same proto)."""
    del proto.metadata_props[:]
    for key, value in sorted(props.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "steerpatch"
    return proto


def serialize(proto: Any) -> bytes:
    """The graph as bytes, weights inline (never external data files)."""
    return proto.SerializeToString()


def write_graph(data: bytes, path: str | Path) -> Path:
    """Write serialized graph bytes atomically: a reader sees the old file or the whole new one.

    Raises:
        OutputError: when the destination is a folder.
    """
    from steerpatch.errors import OutputError

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"--out '{path}' is a folder; give a file name such as '{path / 'model.onnx'}'")
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return path
