"""Fixtures of the Spark tests: one local[2] session for the whole run, a tiny graph, a small image folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

CLASSES = ["circle", "square", "star"]


@pytest.fixture(scope="session")
def spark():
    """The library's default session (local[2], loopback, UI off); stopped when the run ends.

    No master or settings are passed: `test_session.py` checks that the defaults are small and private.
    """
    pytest.importorskip("pyspark")
    from steerpatch.spark import spark_session

    session = spark_session(app_name="steerpatch-tests")
    yield session
    session.stop()


def _tiny_clip():
    import torch
    from open_clip.model import CLIP

    torch.manual_seed(0)
    model = CLIP(
        embed_dim=32,
        vision_cfg={"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        text_cfg={"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    )
    return model.eval()


class _Graph:
    """pixels -> embedding, logits, probs: a tiny open_clip vision tower with a fixed random head."""

    @staticmethod
    def module(model, n_classes: int, shift: float = 0.0):
        import torch

        class Head(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.visual = model.visual
                weights = torch.nn.functional.normalize(torch.randn(n_classes, 32, generator=torch.Generator().manual_seed(1)), dim=-1)
                self.register_buffer("weights", weights)
                self.shift = shift

            def forward(self, pixels):
                embedding = self.visual(pixels) + self.shift
                features = embedding / embedding.norm(dim=-1, keepdim=True)
                logits = 100.0 * features @ self.weights.T
                return embedding, logits, torch.softmax(logits, dim=-1)

        return Head().eval()


def export_tiny_graph(path: Path, *, shift: float = 0.0, classes=CLASSES, metadata: bool = True) -> Path:
    """Export the tiny model to ONNX with the compile metadata record scoring reads."""
    import io
    import warnings

    import onnx
    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    module = _Graph.module(_tiny_clip(), len(classes), shift)
    buffer = io.BytesIO()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # the fused attention kernel has no ONNX form; the plain path exports as MatMul/Softmax
    torch.backends.mha.set_fastpath_enabled(False)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(1, 3, 32, 32),), buffer, input_names=["pixels"],
            output_names=["embedding", "logits", "probs"],
            dynamic_axes={n: {0: "batch"} for n in ("pixels", "embedding", "logits", "probs")},
            opset_version=17, dynamo=False,
        )
    torch.backends.mha.set_fastpath_enabled(fastpath)
    proto = onnx.load_from_string(buffer.getvalue())
    if metadata:
        record = {
            "classes": list(classes),
            "preprocessing": {"image_size": 32, "mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD),
                              "interpolation": "bicubic", "resize_mode": "shortest"},
        }
        entry = proto.metadata_props.add()
        entry.key, entry.value = "steerpatch", json.dumps(record)
    path.write_bytes(proto.SerializeToString())
    return path


@pytest.fixture(scope="session")
def tiny_model():
    return _tiny_clip()


@pytest.fixture(scope="session")
def tiny_graph(tmp_path_factory) -> Path:
    return export_tiny_graph(tmp_path_factory.mktemp("graph") / "tiny.onnx")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """30 PNGs in class folders (mixed sizes, so resize and crop are exercised), a manifest, one broken file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images") / "data"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        label = CLASSES[i % 3]
        size = [(32, 32), (48, 40), (40, 64)][i % 3]
        pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
        rel = f"{label}/{i:03d}.png"
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(root / rel)
        rows.append({"path": rel, "label": label, "attributes": {"index": i, "parity": "even" if i % 2 == 0 else "odd"}})
    (root / "star" / "broken.png").write_bytes(b"not a png")
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root
