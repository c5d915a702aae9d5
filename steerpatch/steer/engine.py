"""Applying patches to an open_clip model: forward hooks on vision blocks, installed inside a context.

Hooks are removed when the context exits, whatever happens inside it, so a model is never left
steered by accident.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from steerpatch.errors import PatchError, SAEError
from steerpatch.models.tower import edit_block_output, num_blocks, residual_width, vision_tower
from steerpatch.patch.format import Patch
from steerpatch.steer.binding import Override, check_binding
from steerpatch.steer.delta import steer_block_output
from steerpatch.steer.sae_lookup import load_patch_sae


@dataclass
class SteeringSession:
    """What a `steer` context installed.

    Attributes:
        patches: the patches, in application order.
        saes: the SAE used for each patch.
        blocks: the vision blocks that carry a hook.
        overrides: fingerprint mismatches that were allowed; empty unless overridden.
    """

    patches: list[Patch]
    saes: list[Any]
    blocks: list[int]
    overrides: list[Override] = field(default_factory=list)


def _model_fingerprint(target: Any) -> str:
    fingerprint = getattr(target, "fingerprint", None)
    if isinstance(fingerprint, str):
        return fingerprint
    from steerpatch.models import fingerprint_state_dict

    return fingerprint_state_dict(getattr(target, "model", target).state_dict())


def _saes_for(patches: list[Patch], sae: Any) -> list[Any]:
    if isinstance(sae, (list, tuple)):
        if len(sae) != len(patches):
            raise PatchError(
                f"got {len(sae)} SAEs for {len(patches)} patches; pass one SAE, or one per patch"
            )
        return list(sae)
    if sae is not None:
        return [sae] * len(patches)
    loaded: dict[tuple[str, str], Any] = {}
    out = []
    for patch in patches:
        key = (patch.sae.location, patch.sae.fingerprint)
        if key not in loaded:
            loaded[key] = load_patch_sae(patch)
        out.append(loaded[key])
    return out


def _check_devices(tower: Any, saes: list[Any]) -> None:
    param = next(tower.parameters(), None)
    if param is None:
        return
    for sae in saes:
        if sae.W_dec.device != param.device:
            raise SAEError(
                f"the SAE is on {sae.W_dec.device} but the model is on {param.device}; "
                f"move one of them, e.g. sae.to('{param.device}')"
            )


def _apply(items: list[tuple[Patch, Any]]):
    def edit(x: torch.Tensor) -> torch.Tensor:
        for patch, sae in items:
            x = steer_block_output(x, sae, patch)
        return x

    return edit


@contextlib.contextmanager
def steer(
    loaded_or_model: Any,
    patches: Patch | Sequence[Patch],
    sae: Any = None,
    *,
    allow_fingerprint_mismatch: bool = False,
) -> Iterator[SteeringSession]:
    """Apply patches to a model's vision tower for the duration of a `with` block.

    Every patch is checked against the model and SAE fingerprints, the block count and width, and
    the SAE's latent count before any hook is installed. Patches on the same block run in order,
    each on the output of the one before.

    Args:
        loaded_or_model: a `steerpatch.models.LoadedModel`, an open_clip CLIP, or its vision tower
            (a raw module is fingerprinted from its state dict).
        patches: one patch or a stack.
        sae: the SAE for every patch, a list with one SAE per patch, or None to load each patch's
            own SAE (`load_patch_sae`: its recorded location, else the shipped SAE, by fingerprint).
        allow_fingerprint_mismatch: apply even when fingerprints differ; each override is recorded
            in the session and logged.

    Yields:
        A SteeringSession describing the hooks and any overrides.

    Raises:
        PatchError: a fingerprint mismatch (naming both), a block or width mismatch, a latent >= d_sae.
        ModelError: if the model is not an open_clip ViT.

    Example:
        >>> with steer(loaded, patch, sae) as session:  # doctest: +SKIP
        ...     features = loaded.model.encode_image(pixels)
    """
    patch_list = [patches] if isinstance(patches, Patch) else list(patches)
    tower = vision_tower(loaded_or_model)
    n_blocks = num_blocks(tower)
    saes = _saes_for(patch_list, sae)
    fingerprint = _model_fingerprint(loaded_or_model) if patch_list else None
    session = SteeringSession(patches=patch_list, saes=saes, blocks=[])
    groups: dict[int, list[tuple[Patch, Any]]] = {}
    for patch, patch_sae in zip(patch_list, saes, strict=True):
        block = patch.hook.block
        session.overrides += check_binding(
            patch,
            model_fingerprint=fingerprint,
            sae=patch_sae,
            n_blocks=n_blocks,
            width=residual_width(tower) if block < n_blocks else None,
            allow_fingerprint_mismatch=allow_fingerprint_mismatch,
        )
        groups.setdefault(block, []).append((patch, patch_sae))
    _check_devices(tower, saes)
    with contextlib.ExitStack() as hooks:
        for block, items in sorted(groups.items()):
            hooks.enter_context(edit_block_output(tower, block, _apply(items)))
            session.blocks.append(block)
        yield session
