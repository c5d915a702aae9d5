"""Zero-shot predictions of a few images before and after a patch: the quick look behind `patch apply`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from steerpatch.errors import DatasetError, SteerpatchError
from steerpatch.models.tower import num_blocks
from steerpatch.patch.format import Patch
from steerpatch.steer.binding import check_binding
from steerpatch.steer.engine import steer
from steerpatch.steer.sae_lookup import load_patch_sae


def _open_images(paths: Sequence[Path]) -> list[Any]:
    from PIL import Image, UnidentifiedImageError

    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        except (FileNotFoundError, IsADirectoryError):
            raise DatasetError(f"image '{path}' does not exist; check the path") from None
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as error:
            raise DatasetError(
                f"image '{path}' cannot be decoded ({error}); pass a PNG or JPEG file"
            ) from None
    return images


def _top(probs: torch.Tensor, classes: list[str], k: int) -> list[list[tuple[str, float]]]:
    values, indices = probs.topk(min(k, len(classes)), dim=-1)
    return [
        [(classes[i], round(float(v), 6)) for v, i in zip(vs, ix, strict=True)]
        for vs, ix in zip(values, indices, strict=True)
    ]


@torch.no_grad()
def predict_before_after(
    patch: Patch,
    image_paths: Sequence[Path],
    *,
    model_spec: str | None = None,
    sae_path: str | None = None,
    classes: list[str] | None = None,
    top_k: int = 3,
    allow_fingerprint_mismatch: bool = False,
) -> dict[str, Any]:
    """Top-k zero-shot predictions for images with and without a patch.

    Args:
        patch: the patch.
        image_paths: image files.
        model_spec: model to load (default: the patch's model id).
        sae_path: SAE to load (default: the patch's own SAE, found by `load_patch_sae`).
        classes: zero-shot class names (default: the model's known classes).
        top_k: how many classes to list per image.
        allow_fingerprint_mismatch: apply to a different model or SAE, recording the override.

    Returns:
        {"patch", "model", "overrides", "images": [{"image", "before": [(class, p)], "after": [...]}]}.

    Raises:
        PatchError: binding problems; DatasetError: unreadable images; ModelError/SAEError from loading.
    """
    from steerpatch.models import build_zero_shot_head, default_classes, load_model, preprocess_batch

    images = _open_images(image_paths)
    names = classes or default_classes(patch.model.id)
    if not names:
        raise SteerpatchError(
            f"model {patch.model.id!r} has no default class list; pass --classes a,b,c or --data DIR"
        )
    loaded = load_model(model_spec or patch.model.id)
    sae = load_patch_sae(patch, path=sae_path or None)
    # refuse a mismatch before the costly part (the steer context checks again, cheaply)
    check_binding(
        patch, model_fingerprint=loaded.fingerprint, sae=sae, n_blocks=num_blocks(loaded),
        allow_fingerprint_mismatch=allow_fingerprint_mismatch,
    )  # fmt: skip
    head = build_zero_shot_head(loaded, names)
    pixels = preprocess_batch(loaded, images)
    before = head.logits(loaded.model.encode_image(pixels)).softmax(-1)
    with steer(loaded, patch, sae, allow_fingerprint_mismatch=allow_fingerprint_mismatch) as session:
        after = head.logits(loaded.model.encode_image(pixels)).softmax(-1)
    rows = [
        {"image": str(path), "before": b, "after": a}
        for path, b, a in zip(image_paths, _top(before, names, top_k), _top(after, names, top_k), strict=True)
    ]
    return {
        "patch": patch.ref,
        "model": loaded.name,
        "overrides": [o.to_dict() for o in session.overrides],
        "images": rows,
    }
