"""ONNX Runtime sessions: the one place that decides providers and imports onnxruntime.

CUDA comes first when onnxruntime-gpu is installed and a GPU is visible; the CPU provider is always
last so a session can fall back. A missing onnxruntime is a clear error naming the extra to install.
"""

from __future__ import annotations

import shutil
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

from steerpatch.errors import MissingDependencyError

INSTALL_HINT = "pip install 'steerpatch[cpu]' (or 'steerpatch[gpu]' for onnxruntime-gpu)"


def import_onnxruntime() -> Any:
    """Import onnxruntime or say how to install it.

    Raises:
        MissingDependencyError: when neither onnxruntime nor onnxruntime-gpu is installed.
    """
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(f"ONNX Runtime is not installed; {INSTALL_HINT}") from None
    return onnxruntime


@lru_cache(maxsize=1)
def _gpu_visible() -> bool:
    # nvidia-smi answers without importing torch or initialising CUDA in this process
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return False
    try:
        result = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and "GPU" in result.stdout


def execution_providers() -> list[str]:
    """Providers to use, best first: CUDA (when installed and a GPU is visible), then CPU.

    Returns:
        Provider names accepted by `onnxruntime.InferenceSession`.
    """
    ort = import_onnxruntime()
    available = ort.get_available_providers()
    providers = []
    if "CUDAExecutionProvider" in available and _gpu_visible():
        providers.append("CUDAExecutionProvider")
    providers.append("CPUExecutionProvider")
    return providers


def create_session(model: str | Path | bytes, providers: list[str] | None = None, *, threads: int | None = None) -> Any:
    """Open an inference session on a graph file or serialized bytes.

    Args:
        model: path to a `.onnx` file, or the serialized graph.
        providers: execution providers; default `execution_providers()`.
        threads: intra-op threads, without spin-waiting (a server sets this: its event loop and image
            decoding share the cores); default ONNX Runtime's own (one per core, spinning).

    Returns:
        An `onnxruntime.InferenceSession`.
    """
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = max(1, int(threads))
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=providers or execution_providers())


def session_metadata(session: Any) -> dict[str, str]:
    """The graph's `metadata_props` (patch hash, fingerprints, classes, parity result...)."""
    return dict(session.get_modelmeta().custom_metadata_map)
