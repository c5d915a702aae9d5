"""Zero-shot classification: class prompts through the text tower, images through the vision tower.

A `ZeroShotHead` is the usual CLIP recipe: for each class, embed every template filled with the
class name, normalise, average, normalise again; logits are `scale * f_image @ W.T`.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from steerpatch.models.loading import CONCEPT_CLIP, LoadedModel

# Phrased like the concept world's captions; generic enough for real CLIPs too.
DEFAULT_TEMPLATES: list[str] = [
    "a photo of a {}",
    "a picture of a {}",
    "a small {}",
    "a large {}",
    "a {} in the centre",
]


@dataclass
class ZeroShotHead:
    """Normalised class text embeddings and the logit scale."""

    classes: list[str]
    weights: torch.Tensor  # (C, E), rows L2-normalised
    logit_scale: float

    def logits(self, image_features: torch.Tensor) -> torch.Tensor:
        """Class logits for unnormalised image features (B, E) -> (B, C)."""
        feats = image_features / image_features.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return self.logit_scale * feats @ self.weights.to(feats.dtype).T

    def predict(self, image_features: torch.Tensor) -> list[str]:
        """Class names of the arg-max logits."""
        return [self.classes[i] for i in self.logits(image_features).argmax(dim=-1).tolist()]


def default_classes(model_name: str) -> list[str] | None:
    """The class names a known model is evaluated on, when none are given; None for other models.

    Sorted, as an image folder lists its classes (`ImageDataset.classes`): a graph compiled without
    `--data` then has the logit columns of one compiled with the concept world's held-out folder.

    Example:
        >>> default_classes("concept-clip")
        ['circle', 'cross', 'heart', 'square', 'star', 'triangle']
    """
    if model_name == CONCEPT_CLIP:  # the embedded default names the concept world's shapes
        from steerpatch.world import SHAPES

        return sorted(SHAPES)
    return None


@torch.no_grad()
def build_zero_shot_head(
    loaded: LoadedModel, classes: Sequence[str], templates: Sequence[str] | None = None
) -> ZeroShotHead:
    """Embed class prompts into a zero-shot classifier.

    Args:
        loaded: the model.
        classes: class names, in label order.
        templates: prompt templates with one `{}`; defaults to `DEFAULT_TEMPLATES`.

    Returns:
        The head; `head.logits(encode_images(loaded, pixels))` classifies images.

    Example:
        >>> head = build_zero_shot_head(loaded, ["circle", "star"])  # doctest: +SKIP
    """
    templates = list(templates or DEFAULT_TEMPLATES)
    device = next(loaded.model.parameters()).device
    rows = []
    for name in classes:
        tokens = loaded.tokenizer([t.format(name) for t in templates]).to(device)
        emb = loaded.model.encode_text(tokens).float()
        emb = emb / emb.norm(dim=-1, keepdim=True)
        mean = emb.mean(dim=0)
        rows.append(mean / mean.norm())
    scale = float(loaded.model.logit_scale.exp().item())
    return ZeroShotHead(classes=list(classes), weights=torch.stack(rows).cpu(), logit_scale=scale)


def preprocess_batch(loaded: LoadedModel, images: Iterable[Any]) -> torch.Tensor:
    """Apply the model's preprocess to PIL images and stack them into (B, 3, H, W)."""
    return torch.stack([loaded.preprocess(img.convert("RGB")) for img in images])


@torch.no_grad()
def encode_images(loaded: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """Unnormalised image embeddings (B, E) of preprocessed pixels."""
    device = next(loaded.model.parameters()).device
    return loaded.model.encode_image(pixels.to(device)).float().cpu()


def group_accuracy(
    predictions: Sequence[str], labels: Sequence[str], groups: Sequence[str] | None = None
) -> dict[str, Any]:
    """Overall and per-group accuracy.

    Returns:
        `{"accuracy": float, "n": int, "groups": {group: {"accuracy": float, "n": int}}}`.
    """
    correct = [p == y for p, y in zip(predictions, labels, strict=True)]
    out: dict[str, Any] = {"accuracy": sum(correct) / max(len(correct), 1), "n": len(correct), "groups": {}}
    if groups is not None:
        hits: dict[str, int] = defaultdict(int)
        counts = Counter(groups)
        for ok, group in zip(correct, groups, strict=True):
            hits[group] += int(ok)
        out["groups"] = {g: {"accuracy": hits[g] / counts[g], "n": counts[g]} for g in sorted(counts)}
    return out


@torch.no_grad()
def classify_images(
    loaded: LoadedModel,
    images: Sequence[Any],
    head: ZeroShotHead,
    *,
    batch_size: int = 256,
    progress: bool = True,
    desc: str = "classify",
) -> list[str]:
    """Predicted class names for PIL images, in batches with a progress bar."""
    preds: list[str] = []
    for start in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, unit="batch"):
        pixels = preprocess_batch(loaded, images[start : start + batch_size])
        preds.extend(head.predict(encode_images(loaded, pixels)))
    return preds


@torch.no_grad()
def classify_dataset(
    loaded: LoadedModel,
    dataset: Any,
    head: ZeroShotHead,
    *,
    items: Sequence[Any] | None = None,
    batch_size: int = 256,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "classify",
) -> list[str]:
    """Predicted class names for a dataset's images, streamed (never all decoded at once).

    Images are decoded in `workers` threads while the model runs on the previous batch and dropped once
    preprocessed (`steerpatch.data.iter_image_batches`), so memory does not grow with the dataset.

    Args:
        loaded: the model.
        dataset: an `ImageDataset`, or a function key -> PIL image (then `items` are its keys).
        head: the zero-shot head.
        items: the items (or keys) to classify, in order; default: every item of the dataset.
        batch_size: images per forward pass.
        workers: decoding threads (None: `steerpatch.data.default_workers()`).
        progress: show a progress bar on stderr.
        desc: the progress bar's label.

    Returns:
        One class name per item, in the order of `items`.

    Raises:
        DatasetError: an image is missing or cannot be decoded.

    Example:
        >>> classify_dataset(loaded, load_dataset("world/test"), head)  # doctest: +SKIP
    """
    from steerpatch.data import iter_image_batches

    chosen = list(items) if items is not None else list(dataset.items)
    preds: list[str] = []
    with tqdm(total=len(chosen), desc=desc, disable=not progress, unit="img") as bar:
        for batch in iter_image_batches(dataset, loaded.preprocess, items=chosen, batch_size=batch_size,
                                        workers=workers, on_undecodable="fail"):
            preds.extend(head.predict(encode_images(loaded, batch.pixels)))
            bar.update(len(batch.items))
    return preds
