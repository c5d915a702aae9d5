"""What runs on each executor: decode image bytes, preprocess them as open_clip does, run the ONNX graph.

This module is shipped to executors by value (see `steerpatch.spark.session.ship_runner`), so a
cluster needs only numpy, pillow, pandas, pyarrow and onnxruntime there, not steerpatch itself.
It must therefore import nothing from steerpatch but `steerpatch.pixels` (shipped by value with it),
and its heavy imports stay inside functions.

One ONNX Runtime session is created per partition (not per batch), and per-image results are
computed here, so only small rows travel back to the driver.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from steerpatch.pixels import OPENAI_MEAN, OPENAI_STD, to_pixels

SPARK_FILE_PREFIX = "sparkfile:"


@dataclass(frozen=True)
class Preprocess:
    """open_clip's evaluation transform, with the field names of a compiled graph's `preprocessing` record.

    Attributes:
        image_size: side of the square input the graph expects.
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel standard deviation divided by.
        interpolation: "bicubic", "bilinear" or "nearest".
        resize_mode: "shortest" (shorter side to image_size, then centre crop) or "squash".
    """

    image_size: int
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        return cls(
            image_size=int(data["image_size"]),
            mean=tuple(float(v) for v in data.get("mean", OPENAI_MEAN)),
            std=tuple(float(v) for v in data.get("std", OPENAI_STD)),
            interpolation=str(data.get("interpolation", "bicubic")),
            resize_mode=str(data.get("resize_mode", "shortest")),
        )


def preprocess_image(data: bytes, spec: Preprocess) -> np.ndarray:
    """Decode one encoded image and turn it into a (3, size, size) float32 array.

    Follows torchvision's Resize(int) + CenterCrop + ToTensor + Normalize on a PIL image, which is
    what open_clip's `preprocess` does, so the pixels match the torch path exactly.

    Raises:
        ValueError: when the bytes are not a decodable image.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        image: Any = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"not a decodable image ({error})") from None
    return to_pixels(image, spec)


def decode_batch(images: Sequence[bytes | None], spec: Preprocess) -> tuple[np.ndarray, list[str | None]]:
    """Preprocess a batch; undecodable images become zero rows and an error message.

    Returns:
        (pixels of shape (B, 3, size, size), per-image error or None).
    """
    pixels = np.zeros((len(images), 3, spec.image_size, spec.image_size), dtype=np.float32)
    errors: list[str | None] = []
    for i, data in enumerate(images):
        if data is None:
            errors.append("no image bytes")
            continue
        try:
            pixels[i] = preprocess_image(bytes(data), spec)
            errors.append(None)
        except ValueError as error:
            errors.append(str(error))
    return pixels, errors


def resolve_graph(graph: str) -> str:
    """A local path for a graph: a plain path, or a file shipped with SparkContext.addFile."""
    if graph.startswith(SPARK_FILE_PREFIX):
        from pyspark import SparkFiles

        return SparkFiles.get(graph[len(SPARK_FILE_PREFIX):])
    return graph


class GraphRunner:
    """An ONNX Runtime session over one graph, returning its outputs by name.

    Args:
        graph: path of the .onnx file (or a `sparkfile:` name).
        threads: intra-op threads; one per Spark task keeps executors from oversubscribing cores,
            0 lets ONNX Runtime use every core (the local engine).
    """

    def __init__(self, graph: str, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(resolve_graph(graph), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {self.input_name: pixels})
        return dict(zip(self.output_names, outputs, strict=True))


def _rows(values: np.ndarray, ok: np.ndarray) -> list[np.ndarray | None]:
    return [row.astype(np.float32) if good else None for row, good in zip(values, ok, strict=True)]


def _batches(frames: Iterator[Any], batch_size: int) -> Iterator[Any]:
    """Re-chunk Arrow-sized pandas frames into model-sized ones."""
    for frame in frames:
        for start in range(0, len(frame), batch_size):
            yield frame.iloc[start:start + batch_size].reset_index(drop=True)


def score_frames(
    frames: Iterator[Any],
    *,
    graph: str,
    preprocess: dict[str, Any],
    classes: list[str],
    embedding: bool,
    batch_size: int = 32,
    threads: int = 1,
) -> Iterator[Any]:
    """Score (id, label, attributes, image) frames with one graph: the body of a mapInPandas call.

    Yields:
        pandas frames with id, label, attributes, pred, pred_index, confidence, probs,
        embedding (when asked) and error (None when the image scored).
    """
    import pandas as pd

    spec = Preprocess.from_dict(preprocess)
    runner = GraphRunner(graph, threads)
    for frame in _batches(frames, batch_size):
        pixels, errors = decode_batch(list(frame["image"]), spec)
        ok = np.asarray([e is None for e in errors])
        outputs = runner.run(pixels)
        probs = outputs.get("probs")
        out = pd.DataFrame({"id": frame["id"], "label": frame["label"], "attributes": frame["attributes"]})
        if probs is not None:
            index = probs.argmax(axis=1)
            names = [classes[i] if i < len(classes) else str(i) for i in index]
            out["pred"] = [name if good else None for name, good in zip(names, ok, strict=True)]
            out["pred_index"] = pd.array([int(i) if good else None for i, good in zip(index, ok, strict=True)],
                                         dtype="Int64")
            out["confidence"] = [float(probs[r, i]) if ok[r] else None for r, i in enumerate(index)]
            out["probs"] = _rows(probs, ok)
        if embedding:
            out["embedding"] = _rows(outputs["embedding"], ok)
        out["error"] = errors
        yield out


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(denom, 1e-12)


def compare_frames(
    frames: Iterator[Any],
    *,
    before: str,
    after: Sequence[str],
    preprocess: dict[str, Any],
    batch_size: int = 32,
    threads: int = 1,
    embedding: bool = False,
) -> Iterator[Any]:
    """Run an unsteered graph and one or more steered graphs on the same images: validation on Spark.

    Args:
        frames: pandas frames with `id` and `image` columns.
        before: the unsteered graph.
        after: the steered graphs (one per edit strength), all with `embedding` and `probs` outputs.
        preprocess: a `Preprocess` as a dict.
        batch_size: images per ONNX Runtime call.
        threads: ONNX Runtime intra-op threads.
        embedding: also return the unsteered embedding (float32), which the ceiling baseline re-fits on.

    Yields:
        pandas frames with id, probs_before, probs_after (one row of probabilities per steered
        graph), cos (cosine between the unsteered and each steered embedding), embedding (when asked;
        see `compare_schema`) and error. Steered embeddings stay on the executor; predictions are the
        argmax of the probabilities.
    """
    import pandas as pd

    spec = Preprocess.from_dict(preprocess)
    plain = GraphRunner(before, threads)
    steered = [GraphRunner(graph, threads) for graph in after]
    for frame in _batches(frames, batch_size):
        pixels, errors = decode_batch(list(frame["image"]), spec)
        ok = np.asarray([e is None for e in errors])
        base = plain.run(pixels)
        runs = [runner.run(pixels) for runner in steered]
        probs_after = np.stack([r["probs"] for r in runs], axis=1)  # (B, S, C)
        cos = np.stack([_cosine(base["embedding"], r["embedding"]) for r in runs], axis=1)  # (B, S)
        out = pd.DataFrame({
            "id": frame["id"],
            "probs_before": _rows(base["probs"], ok),
            "probs_after": [list(p.astype(np.float32)) if good else None for p, good in zip(probs_after, ok, strict=True)],
            "cos": [c if good else None for c, good in zip(cos, ok, strict=True)],
        })
        if embedding:
            out["embedding"] = _rows(base["embedding"], ok)
        out["error"] = errors
        yield out


COMPARE_SCHEMA = "id string, probs_before array<float>, probs_after array<array<float>>, cos array<double>, error string"


def compare_schema(embedding: bool) -> str:
    """The Spark DDL schema of `compare_frames`' rows, with or without the unsteered embedding."""
    return COMPARE_SCHEMA.replace(", error string", ", embedding array<float>, error string") if embedding else COMPARE_SCHEMA


def graph_info(graph: str) -> dict[str, Any]:
    """What a graph says about itself: output names, input side, and steerpatch metadata if present.

    Returns:
        {"outputs": [...], "input_size": int | None, "metadata": {key: value}}.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(resolve_graph(graph), providers=["CPUExecutionProvider"])
    shape = session.get_inputs()[0].shape
    size = shape[-1] if isinstance(shape[-1], int) else None
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    return {"outputs": [o.name for o in session.get_outputs()], "input_size": size, "metadata": metadata}


def partition_function(body: Callable[..., Iterator[Any]], **kwargs: Any) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """Bind keyword arguments to a frame function, giving the one-argument form mapInPandas wants."""

    def run(frames: Iterator[Any]) -> Iterator[Any]:
        yield from body(frames, **kwargs)

    return run
