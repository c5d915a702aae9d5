"""Which SAE latents drive one prediction: activation x gradient of a logit margin, then exact ablation.

The residual stream at the hook is rewritten as x = decode(z) + error (error held fixed), so the
margin is a function of the latent codes z and its gradient is exact for every latent at once. The
linear estimate z_i * dmargin/dz_i ranks the latents; the top few are then checked by re-running the
blocks after the hook with each one suppressed (scale 0), which is what a patch would do.
"""

from __future__ import annotations

from typing import Any

import torch

from steerpatch.errors import SteerpatchError
from steerpatch.models.tower import encode_prefix, encode_suffix


def margin(logits: torch.Tensor, target: int, against: int | None) -> torch.Tensor:
    """Logit margin of `target`: over `against`, or over the best other class when `against` is None.

    Args:
        logits: (B, C) class logits.
        target: target class index.
        against: competing class index, or None.

    Returns:
        (B,) margins; positive means the model prefers `target`.
    """
    if against is not None:
        return logits[:, target] - logits[:, against]
    others = logits.clone()
    others[:, target] = float("-inf")
    return logits[:, target] - others.max(dim=-1).values


def class_index(classes: list[str], name: str, what: str) -> int:
    """Position of a class name.

    Raises:
        SteerpatchError: naming the class and listing the known ones.
    """
    if name not in classes:
        raise SteerpatchError(f"{what} class {name!r} is not one of the classes {classes}; pick one of them")
    return classes.index(name)


def resolve_target(classes: list[str], logits: torch.Tensor, target: str, against: str | None) -> tuple[int, int | None]:
    """Class indices for a target spec: a class name or "predicted"; against: a class name or None."""
    t = int(logits.argmax()) if target == "predicted" else class_index(classes, target, "target")
    a = None if against is None else class_index(classes, against, "against")
    if a is not None and a == t:
        raise SteerpatchError(f"target and against are both {classes[t]!r}; choose two different classes")
    return t, a


def latent_scores(
    model, head, sae, hidden: torch.Tensor, block: int, tokens: Any, target: int, against: int | None
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Activation x gradient of the margin for every latent, summed over the scoped tokens.

    Args:
        model: the open_clip CLIP.
        head: a `ZeroShotHead`.
        sae: the SAE at `block`.
        hidden: residual stream after `block` for one image, (1, T, D).
        block: the hook block.
        tokens: the token scope the SAE reads.
        target: target class index.
        against: competing class index, or None for the best other class.

    Returns:
        (scores (d_sae,), image-level activation = max over scoped tokens (d_sae,), margin).
    """
    from steerpatch.steer import token_index

    where = token_index(tokens, hidden.shape[1])
    with torch.no_grad():
        scoped = hidden[:, where]
        z0 = sae.encode(scoped)
        error = scoped - sae.decode(z0, scoped)
    z = z0.clone().requires_grad_(True)
    rebuilt = hidden.clone()
    rebuilt[:, where] = sae.decode(z, scoped) + error
    value = margin(head.logits(encode_suffix(model, rebuilt, block)), target, against)[0]
    (grad,) = torch.autograd.grad(value, z)
    scores = (z0 * grad).sum(dim=(0, 1))
    return scores.detach(), z0.amax(dim=(0, 1)), float(value.detach())


@torch.no_grad()
def ablation_effects(
    model, head, sae, hidden: torch.Tensor, block: int, tokens: Any, latents: list[int], target: int,
    against: int | None, batch_size: int = 32,
) -> list[tuple[float, int]]:
    """Exact effect of suppressing each latent alone: (margin after - margin before, predicted class after).

    Args:
        model: the open_clip CLIP.
        head: a `ZeroShotHead`.
        sae: the SAE at `block`.
        hidden: residual stream after `block` for one image, (1, T, D).
        block: the hook block.
        tokens: the token scope of the edit.
        latents: the latents to suppress, one run each.
        target: target class index.
        against: competing class index, or None.
        batch_size: ablations per suffix pass.

    Returns:
        One (margin change, predicted class index) per latent, in order.
    """
    from steerpatch.patch import Edit
    from steerpatch.steer import steering_delta

    base = float(margin(head.logits(encode_suffix(model, hidden, block)), target, against)[0])
    out: list[tuple[float, int]] = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start : start + batch_size]
        edited = torch.cat([
            hidden + steering_delta(sae, hidden, [Edit(latent=i, op="scale", value=0.0)], tokens) for i in chunk
        ])
        logits = head.logits(encode_suffix(model, edited, block))
        values = margin(logits, target, against)
        out.extend((float(v) - base, int(p)) for v, p in zip(values, logits.argmax(-1), strict=True))
    return out


def prefix(model, pixels: torch.Tensor, block: int) -> torch.Tensor:
    """Residual stream after `block` for preprocessed pixels, without gradients."""
    with torch.no_grad():
        return encode_prefix(model, pixels, block)
