"""Compile a patch into a parity-checked ONNX graph of the steered image encoder.

    result = compile_patch("water.json", out="steered.onnx")      # sparse or exact, parity-gated
    result.info.mode, result.info.parity_max_abs_diff
    graph = register_graph(result, alias="production")           # mlflow.onnx model, sibling version
"""

from steerpatch.compile.compiler import DEFAULT_TOLERANCE, HEADS, CompileResult, build_graph, compile_patch
from steerpatch.compile.metadata import GraphInfo, Preprocessing
from steerpatch.compile.runtime import create_session, execution_providers, session_metadata

# registering and fetching graphs is MLflow work, owned by the registry package; re-exported here
# because it is part of compiling's public API
from steerpatch.registry.graphs import (
    GraphVersion,
    compiled_name,
    download_graph,
    register_graph,
    resolve_graph,
)

__all__ = [
    "DEFAULT_TOLERANCE",
    "HEADS",
    "CompileResult",
    "GraphInfo",
    "GraphVersion",
    "Preprocessing",
    "build_graph",
    "compile_patch",
    "compiled_name",
    "create_session",
    "download_graph",
    "execution_providers",
    "register_graph",
    "resolve_graph",
    "session_metadata",
]
