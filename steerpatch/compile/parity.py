"""The parity gate: a compiled graph must reproduce the torch steered model before anyone gets it.

The reference is the steering engine itself (`steerpatch.steer.steer` hooks on the real open_clip
model), not the module that was exported, so a mistake in the graph's own math cannot hide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steerpatch.errors import CompileError

MIN_SAMPLES = 64
CHUNK = 16


@dataclass(frozen=True)
class ParityResult:
    """How far ONNX Runtime's outputs are from torch's.

    Attributes:
        max_abs_diff: the largest |ORT - torch| over every output element and sample.
        per_output: the same, per output name.
        samples: images compared.
        inputs: where the images came from ("data:<dir>" or "random").
        tolerance: the bound they were held to.
    """

    max_abs_diff: float
    per_output: dict[str, float]
    samples: int
    inputs: str
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def parity_inputs(loaded: Any, data: Any = None, n: int = MIN_SAMPLES, seed: int = 0) -> tuple[torch.Tensor, str]:
    """Preprocessed images to compare on: `n` spread over a held-out dataset, else seeded random pixels.

    Args:
        loaded: the `LoadedModel` (for its preprocessing and image size).
        data: a dataset folder or `ImageDataset`, or None for random inputs.
        n: number of images (at least 64 are used).
        seed: seed of the random inputs.

    Returns:
        (pixels (n, 3, H, W), a description of the source).
    """
    n = max(n, MIN_SAMPLES)
    if data is None:
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(n, 3, loaded.image_size, loaded.image_size, generator=generator), "random"
    from steerpatch.data import ImageDataset, iter_image_batches, load_dataset

    dataset = data if isinstance(data, ImageDataset) else load_dataset(data)
    picks = np.linspace(0, len(dataset) - 1, num=min(n, len(dataset))).round().astype(int)
    chosen = [dataset[int(i)] for i in dict.fromkeys(picks.tolist())]
    # streamed: only the preprocessed pixels are kept, never the decoded images
    pixels = torch.cat([batch.pixels for batch in iter_image_batches(dataset, loaded.preprocess, items=chosen,
                                                                     on_undecodable="fail")])
    if len(chosen) < n:
        # a small held-out set is topped up with random pixels so the gate still sees n inputs
        generator = torch.Generator().manual_seed(seed)
        extra = torch.randn(n - len(chosen), *pixels.shape[1:], generator=generator)
        pixels = torch.cat([pixels, extra])
    return pixels, f"data:{dataset.root} ({len(chosen)} images)"


def _chunks(n: int, what: str, progress: bool) -> Any:
    from tqdm import tqdm

    return tqdm(range(0, n, CHUNK), desc=what, unit="batch", disable=not progress, leave=False)


@torch.no_grad()
def torch_reference(loaded: Any, patch: Any, sae: Any, head: Any, pixels: torch.Tensor, *,
                    progress: bool = False) -> dict[str, np.ndarray]:
    """The outputs of the torch model steered by the engine's hooks (no patch: the plain model).

    Args:
        loaded: the `LoadedModel`.
        patch: the patch, or None for the unsteered encoder.
        sae: its SAE.
        head: a `ZeroShotHead` or None.
        pixels: (N, 3, H, W).
        progress: show a progress bar on stderr.

    Returns:
        name -> array, for `embedding` and, with a head, `logits` and `probs`.
    """
    import contextlib

    from steerpatch.models import encode_images

    outputs: dict[str, list[np.ndarray]] = {"embedding": [], "logits": [], "probs": []}
    context: contextlib.AbstractContextManager[Any]
    if patch is None:
        context = contextlib.nullcontext()
    else:
        from steerpatch.steer import steer

        context = steer(loaded, patch, sae)
    with context:
        for start in _chunks(len(pixels), "parity: torch", progress):
            embedding = encode_images(loaded, pixels[start : start + CHUNK]).float()
            outputs["embedding"].append(embedding.numpy())
            if head is not None:
                logits = head.logits(embedding).float()
                outputs["logits"].append(logits.numpy())
                outputs["probs"].append(torch.softmax(logits, dim=-1).numpy())
    return {name: np.concatenate(parts) for name, parts in outputs.items() if parts}


def onnx_outputs(session: Any, pixels: torch.Tensor, *, progress: bool = False,
                 patch_index: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Run a session over `pixels` in chunks; name -> array.

    Args:
        session: the ONNX Runtime session.
        pixels: (N, 3, H, W).
        progress: show a progress bar on stderr.
        patch_index: (N,) int64 per-row patch selection, for multi-patch graphs.
    """
    names = [o.name for o in session.get_outputs()]
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    array = pixels.numpy().astype(np.float32, copy=False)
    for start in _chunks(len(array), "parity: onnxruntime", progress):
        feeds = {"pixels": array[start : start + CHUNK]}
        if patch_index is not None:
            feeds["patch_index"] = patch_index[start : start + CHUNK].astype(np.int64)
        for name, value in zip(names, session.run(names, feeds), strict=True):
            parts[name].append(value)
    return {name: np.concatenate(values) for name, values in parts.items()}


def compare(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray], *, tolerance: float,
            inputs: str) -> ParityResult:
    """Measure the max abs difference per output.

    Raises:
        CompileError: when the graph's outputs do not match the reference's names or shapes.
    """
    per_output: dict[str, float] = {}
    for name, expected in reference.items():
        got = candidate.get(name)
        if got is None or got.shape != expected.shape:
            raise CompileError(
                f"compiled graph output {name!r} is {None if got is None else got.shape}, expected {expected.shape}"
            )
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        # a NaN anywhere is a failure, never a silently ignored element
        per_output[name] = float("inf") if not np.isfinite(diff).all() else float(diff.max(initial=0.0))
    n = len(next(iter(reference.values())))
    # np.max, not max(): max() over [0.0, nan] is 0.0, so a NaN in any but the first output would pass
    return ParityResult(float(np.max(list(per_output.values()))), per_output, n, inputs, tolerance)
