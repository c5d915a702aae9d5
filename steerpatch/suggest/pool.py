"""The inputs of a suggestion, checked: the misclassified images, their class, and an unlabelled pool.

The pool is read as images only. Its manifest and its per-image labels are never opened: `suggest`
must work on data nobody labelled, and a search that peeked at labels would report fixes it could
not find in the field. The one thing read from the pool's layout is the set of top-level folder
names, to refuse a pool laid out for another model's classes before any work is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from steerpatch.data import IMAGE_SUFFIXES, ImageDataset, Item
from steerpatch.errors import DatasetError, SteerpatchError

UNLABELLED = ""  # the label every pool item carries: none


def resolve_classes(sae, classes: Sequence[str] | None) -> list[str]:
    """The class names the zero-shot head classifies into.

    Args:
        sae: the SAE (its stored latent statistics name the classes it was profiled on).
        classes: explicit class names, or None.

    Returns:
        The class list.

    Raises:
        SteerpatchError: no class list given and none stored beside the SAE, or a repeated name.
    """
    if classes is None:
        from steerpatch.sae import load_latent_stats

        if not sae.location:
            raise SteerpatchError("no class list: pass --classes a,b,c (the SAE has no stored statistics)")
        try:
            classes = list(load_latent_stats(sae.location, sae=sae).firing_rate_by_class)
        except SteerpatchError:
            raise SteerpatchError(
                f"no class list: pass --classes a,b,c, or store latent statistics beside the SAE "
                f"('{sae.location}') with `steerpatch sae stats`"
            ) from None
    classes = [c for c in classes if c]
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise SteerpatchError(f"class list {classes} needs at least two distinct names; fix --classes")
    return classes


def check_label(label: str, classes: list[str]) -> int:
    """Index of the correct class the user names.

    Raises:
        SteerpatchError: `label` is not one of the classes.
    """
    if label not in classes:
        raise SteerpatchError(f"--label {label!r} is not a class of this model; use one of: {', '.join(classes)}")
    return classes.index(label)


def load_pool(root: str | Path, classes: list[str]) -> ImageDataset:
    """The pool's images as an unlabelled dataset (every image file under `root`, sorted by path).

    Args:
        root: the pool folder (an image folder, a generated world, or a flat folder of images).
        classes: the model's classes; a pool whose class folders name others is refused.

    Returns:
        An `ImageDataset` whose items carry no label and no attributes.

    Raises:
        DatasetError: no such folder, no images in it, or class folders the model does not know.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"pool folder '{root}' does not exist; pass --data with a folder of images")
    paths = sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not paths:
        raise DatasetError(f"pool folder '{root}' holds no images ({', '.join(IMAGE_SUFFIXES)}); pass a folder of images")
    folders = sorted({p.relative_to(root).parts[0] for p in paths if len(p.relative_to(root).parts) > 1})
    foreign = [f for f in folders if f not in classes]
    if len(folders) >= 2 and foreign:  # one sub-folder is just a folder; several are a class layout
        raise DatasetError(
            f"pool '{root}' is laid out for classes {foreign[:6]} that this model does not know "
            f"(its classes: {', '.join(classes)}); pass a flat folder of images or class folders of this model"
        )
    items = [Item(id=p.relative_to(root).as_posix(), path=p, label=UNLABELLED) for p in paths]
    return ImageDataset(root, items, classes=list(classes))


def load_targets(paths: Sequence[str | Path]) -> list:
    """The misclassified images as RGB PIL images.

    Raises:
        DatasetError: a path that is missing or not an image.
    """
    from PIL import Image, UnidentifiedImageError

    if not paths:
        raise SteerpatchError("give at least one misclassified IMAGE")
    images = []
    for path in paths:
        try:
            with Image.open(path) as img:
                images.append(img.convert("RGB"))
        except FileNotFoundError:
            raise DatasetError(f"image '{path}' does not exist; pass the path of a misclassified image") from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise DatasetError(f"image '{path}' cannot be decoded as an image; pass a PNG or JPEG") from None
    return images
