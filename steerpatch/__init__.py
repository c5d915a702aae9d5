"""steerpatch: SAE steering patches for CLIP vision models, from attribution to served ONNX graphs.

The workflow, in the names this package exports::

    model = steerpatch.load_model("concept-clip")
    sae = steerpatch.load_sae(steerpatch.default_sae_path())
    data = steerpatch.load_dataset("world/test")
    scores = steerpatch.attribute_latents(model, sae, image, target="star")
    patch = steerpatch.load_patch("registry/patches/water-shortcut.json")
    with steerpatch.steered(model, patch, sae):
        ...
    report = steerpatch.validate_patch(patch, data)

Importing this package is cheap: torch, mlflow and onnx load only when a function needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from steerpatch.errors import PatchError, SAEError, SteerpatchError

__version__ = "0.1.0"

# public name -> module that defines it; resolved on first attribute access
_LAZY = {
    "load_model": "steerpatch.models",
    "default_sae_path": "steerpatch.sae",
    "load_sae": "steerpatch.sae",
    "save_sae": "steerpatch.sae",
    "load_dataset": "steerpatch.data",
    "Patch": "steerpatch.patch",
    "load_patch": "steerpatch.patch",
    "save_patch": "steerpatch.patch",
    "new_patch": "steerpatch.patch",
    "steered": "steerpatch.steer",
    "attribute_latents": "steerpatch.attribute",
    "validate_patch": "steerpatch.validate",
}

__all__ = [
    "Patch",
    "PatchError",
    "SAEError",
    "SteerpatchError",
    "__version__",
    "attribute_latents",
    "default_sae_path",
    "load_dataset",
    "load_model",
    "load_patch",
    "load_sae",
    "new_patch",
    "save_patch",
    "save_sae",
    "steered",
    "validate_patch",
]


# exported names that differ from the name inside their module (the module's own name is a subpackage)
_RENAMED = {"steered": "steer", "attribute_latents": "attribute"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), _RENAMED.get(name, name))
        globals()[name] = value
        return value
    raise AttributeError(f"module 'steerpatch' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from steerpatch.attribute import attribute as attribute_latents
    from steerpatch.data import load_dataset
    from steerpatch.models import load_model
    from steerpatch.patch import Patch, load_patch, new_patch, save_patch
    from steerpatch.sae import default_sae_path, load_sae, save_sae
    from steerpatch.steer import steer as steered
    from steerpatch.validate import validate_patch
