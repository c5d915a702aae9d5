"""The look-alike neighbourhood of a mistake, found without labels, and per-image latent attribution.

A mistake generalises through the concepts it rests on. Images of the pool that the model sends to
the same wrong class *and* whose SAE codes resemble the misclassified image's are, most likely, the
same mistake again; the rest of the pool is what a fix must leave alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from steerpatch.models.tower import encode_suffix
from steerpatch.steer import token_index


@torch.no_grad()
def image_codes(sae, hidden: Any, tokens, *, batch_size: int = 256) -> torch.Tensor:
    """Image-level SAE codes: each latent's mean activation over the scoped tokens, (N, d_sae)."""
    where = token_index(tokens, hidden.shape[1]) if len(hidden) else slice(None)
    parts = [sae.encode(hidden[s : s + batch_size][:, where]).mean(dim=1) for s in range(0, len(hidden), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, sae.d_sae)


@dataclass
class Neighbourhood:
    """The pool split by resemblance to the mistake.

    Attributes:
        lookalikes: pool positions predicted as a wrong class and nearest to the mistake in code space.
        rest: every other pool position.
        similarity: cosine similarity of each pool image's code to the mistake's, (N,).
    """

    lookalikes: np.ndarray
    rest: np.ndarray
    similarity: np.ndarray


def find_lookalikes(
    pool_codes: torch.Tensor, target_codes: torch.Tensor, pool_pred: np.ndarray, wrong: set[int], k: int
) -> Neighbourhood:
    """The `k` pool images nearest to the mistake (cosine of SAE codes) among those predicted a wrong class.

    Args:
        pool_codes: (N, d_sae) image codes of the pool.
        target_codes: (T, d_sae) image codes of the misclassified images.
        pool_pred: predicted class index per pool image.
        wrong: the classes the misclassified images were wrongly given.
        k: neighbourhood size (fewer when fewer pool images share a wrong prediction).

    Returns:
        The neighbourhood.
    """
    pool = torch.nn.functional.normalize(pool_codes.double(), dim=-1)
    centre = torch.nn.functional.normalize(target_codes.double(), dim=-1)
    similarity = (pool @ centre.T).max(dim=1).values.numpy() if len(pool) else np.zeros(0)
    same = np.flatnonzero(np.isin(pool_pred, sorted(wrong)))
    nearest = same[np.argsort(-similarity[same], kind="stable")[:k]]
    lookalikes = np.sort(nearest)
    rest = np.setdiff1d(np.arange(len(pool_pred)), lookalikes)
    return Neighbourhood(lookalikes=lookalikes, rest=rest, similarity=similarity)


def relative_attribution(
    model, head, sae, hidden: torch.Tensor, block: int, tokens, *, push: np.ndarray, against: np.ndarray | None = None,
    batch_size: int = 64,
) -> torch.Tensor:
    """Each latent's share of each image's logit margin (activation x gradient / margin), (N, d_sae).

    The margin is logit[push] - logit[against] (against: the best other class when None). A share of
    1 means that suppressing the latent alone is, to first order, enough to erase the margin.

    Args:
        model: the open_clip CLIP.
        head: a `ZeroShotHead`.
        sae: the SAE at `block`.
        hidden: residual stream after `block`, (N, T, D).
        block: the hook block.
        tokens: the token scope.
        push: class index per image whose margin to explain.
        against: competing class index per image, or None for the best other class.
        batch_size: images per backward pass.

    Returns:
        Shares, float32 on CPU.
    """
    where = token_index(tokens, hidden.shape[1])
    out = []
    for s in range(0, len(hidden), batch_size):
        x = hidden[s : s + batch_size]
        with torch.no_grad():
            scoped = x[:, where]
            z0 = sae.encode(scoped)
            error = scoped - sae.decode(z0)
        z = z0.clone().requires_grad_(True)
        rebuilt = x.clone()
        rebuilt[:, where] = sae.decode(z) + error
        logits = head.logits(encode_suffix(model, rebuilt, block))
        rows = torch.arange(len(x))
        p = torch.as_tensor(push[s : s + batch_size], dtype=torch.long)
        if against is None:
            others = logits.detach().clone()
            others[rows, p] = float("-inf")
            a = others.argmax(dim=-1)
        else:
            a = torch.as_tensor(against[s : s + batch_size], dtype=torch.long)
        margins = logits[rows, p] - logits[rows, a]
        (grad,) = torch.autograd.grad(margins.sum(), z)
        share = (z0 * grad).sum(dim=1) / margins.detach().abs().clamp_min(1e-3)[:, None]
        out.append(share.detach().float())
    return torch.cat(out) if out else torch.zeros(0, sae.d_sae)
