"""A faster graph at the same answers: ONNX Runtime's transformer optimiser, and int8 behind its own gate.

`optimize_graph` runs `onnxruntime.transformers.optimizer` (LayerNorm, GELU and attention fusions
where its patterns match the traced graph) and keeps the result only where the parity gate still
holds against the same torch reference; the steering module is plain MatMul/Where math the fusions
do not touch, and the gate would see it if they did. `quantize_graph` makes an int8 dynamic-quantised
copy; it is never the default and is accepted only when its top-1 class agrees with the fp32 graph
on at least `MIN_INT8_AGREEMENT` of the held-out inputs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steerpatch.errors import CompileError

MIN_INT8_AGREEMENT = 0.995


@dataclass(frozen=True)
class Optimized:
    """An optimised graph and what the optimiser fused (op type -> count, non-zero only)."""

    proto: Any
    fused: dict[str, int]


def optimize_graph(proto: Any, num_heads: int, hidden_size: int) -> Optimized:
    """Run ONNX Runtime's transformer optimiser (the ViT fusions) on a compiled graph.

    Args:
        proto: the exported `onnx.ModelProto`.
        num_heads: attention heads of the vision tower.
        hidden_size: its width.

    Returns:
        The optimised proto (metadata kept) and its fusion counts.

    Raises:
        CompileError: when the optimiser fails on the graph.
    """
    import logging

    from onnxruntime.transformers.optimizer import optimize_model

    # the optimiser logs a warning for every pattern it does not find; they are not ours to act on
    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    try:
        # the optimiser rewrites the proto it is given; the caller's unfused graph must stay as it was
        unfused = type(proto)()
        unfused.CopyFrom(proto)
        model = optimize_model(unfused, model_type="vit", num_heads=num_heads, hidden_size=hidden_size, opt_level=0)
    except Exception as error:  # noqa: BLE001 - the optimiser raises many types
        raise CompileError(f"ONNX Runtime's transformer optimiser failed on the graph: {error}") from error
    fused = {op: int(n) for op, n in (model.get_fused_operator_statistics() or {}).items() if n}
    return Optimized(model.model, fused)


def quantize_graph(data: bytes) -> bytes:
    """An int8 dynamic-quantised copy of a serialized graph (weights int8, activations quantised at run time)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="steerpatch-int8-") as folder:
        src, dst = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        src.write_bytes(data)
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
        return dst.read_bytes()


def top1_agreement(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> float:
    """Share of inputs whose top-1 class (argmax of `probs`, else of `embedding`) is the same in both.

    Raises:
        CompileError: when neither has `probs` (an embedding head has no classes to agree on).
    """
    if "probs" not in reference or "probs" not in candidate:
        raise CompileError("the int8 gate compares top-1 classes: compile with the zero-shot head (--head zero-shot)")
    return float((reference["probs"].argmax(axis=1) == candidate["probs"].argmax(axis=1)).mean())


def tower_shape(loaded: Any) -> tuple[int, int]:
    """(attention heads, width) of an open_clip vision tower, for the optimiser."""
    from steerpatch.models.tower import resblocks, residual_width

    first: Any = resblocks(loaded)[0]  # an open_clip ResidualAttentionBlock (ModuleList items are typed loosely)
    return int(first.attn.num_heads), residual_width(loaded)


@dataclass
class Refined:
    """What `refine` made of a graph that passed its parity gate."""

    proto: Any
    parity: Any
    fused: dict[str, int] | None = None
    int8_top1_agreement: float | None = None


def refine(proto: Any, parity: Any, reference: dict[str, np.ndarray], pixels: Any, loaded: Any, *, optimize: bool,
           int8: bool, providers: list[str] | None, say: Any) -> Refined:
    """Optimise (kept only where parity still holds) and/or quantise (kept only past its agreement gate).

    Args:
        proto: the exported graph, which passed `parity`.
        parity: its `ParityResult`.
        reference: the torch reference outputs the gate compared with.
        pixels: the gate's inputs.
        loaded: the `LoadedModel` (for the tower's heads and width).
        optimize: run the transformer optimiser.
        int8: make the int8 dynamic-quantised graph.
        providers: ONNX Runtime providers.
        say: the compile log.

    Raises:
        GateFailed: int8 top-1 agreement with the fp32 graph below `MIN_INT8_AGREEMENT` (exit 1; nothing written).
    """
    import onnx

    from steerpatch.compile.export import serialize
    from steerpatch.compile.parity import compare, onnx_outputs
    from steerpatch.compile.runtime import create_session
    from steerpatch.errors import GateFailed

    result = Refined(proto, parity)
    if optimize:
        optimized = optimize_graph(proto, *tower_shape(loaded))
        session = create_session(serialize(optimized.proto), providers)
        checked = compare(reference, onnx_outputs(session, pixels), tolerance=parity.tolerance, inputs=parity.inputs)
        fusions = ", ".join(f"{op} {n}" for op, n in sorted(optimized.fused.items())) or "none"
        if checked.passed:
            result.proto, result.parity, result.fused = optimized.proto, checked, optimized.fused
            say(f"optimised (fusions: {fusions}); parity still holds: max abs diff {checked.max_abs_diff:.3g}")
        else:
            say(f"optimised graph fails parity ({checked.max_abs_diff:.3g} > {parity.tolerance:g}); kept the unoptimised graph")
    if int8:
        # the quantiser cannot read the optimiser's com.microsoft ops: it quantises the unfused graph,
        # and the int8 graph is that one (ORT's own session-level fusions still apply when it loads)
        if result.fused is not None:
            say("int8: quantising the unfused graph (the quantiser cannot read the optimiser's fused ops)")
            result.fused = None
        data = serialize(proto)
        fp32 = onnx_outputs(create_session(data, providers), pixels)
        quantized = quantize_graph(data)
        agreement = top1_agreement(fp32, onnx_outputs(create_session(quantized, providers), pixels))
        say(f"int8: top-1 agreement with the fp32 graph {agreement:.2%} on {len(pixels)} inputs "
            f"(gate >= {MIN_INT8_AGREEMENT:.1%})")
        if agreement < MIN_INT8_AGREEMENT:
            raise GateFailed(
                f"int8 gate failed: top-1 agreement with the fp32 graph is {agreement:.2%} on {len(pixels)} inputs, "
                f"below {MIN_INT8_AGREEMENT:.1%}; nothing was written; ship the fp32 graph (drop --int8)"
            )
        result.proto, result.parity, result.int8_top1_agreement = onnx.load_from_string(quantized), parity, agreement
    return result
