"""Score one candidate patch over cached hook activations: the only per-candidate work of a validation.

The cached residual stream at the hook goes through the steering engine's pure function (which reads
only the edited latents' encoder columns where that is exact), then through the blocks after the hook.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from steerpatch.models.tower import encode_suffix
from steerpatch.patch.ops import get_op
from steerpatch.steer import steer_block_output
from steerpatch.validate.metrics import ImageResults
from steerpatch.validate.shards import row_batches


def at_strength(edits, strength: float):
    """The edits moved `strength` of the way from doing nothing to what they say.

    Ops with an identity value (scale 1, add 0) are interpolated: v' = identity + strength * (v - identity);
    ops without one (clamp) are kept as written.

    Example:
        >>> at_strength([Edit(latent=3, op="scale", value=0.0)], 0.25)[0].value  # doctest: +SKIP
        0.75
    """
    out = []
    for edit in edits:
        identity = get_op(edit.op).identity
        value = edit.value if identity is None else identity + strength * (edit.value - identity)
        out.append(edit.model_copy(update={"value": value}))
    return out


@torch.no_grad()
def score_patch(
    model,
    head,
    sae,
    patch,
    cached,
    *,
    labels: np.ndarray,
    groups: list[str] | None = None,
    strength: float = 1.0,
    batch_size: int = 64,
    progress: bool = False,
) -> ImageResults:
    """Per-image predictions, probabilities and embedding drift of one patch over cached activations.

    Args:
        model: the open_clip CLIP the activations came from.
        head: a `ZeroShotHead` over the dataset's classes.
        sae: the patch's SAE.
        patch: the candidate `Patch`.
        cached: `CachedActivations` at the patch's hook block.
        labels: true class index per cached image.
        groups: grouping attribute value per cached image, or None.
        strength: dose of the edits (1 = as written, see `at_strength`).
        batch_size: images per suffix pass (the cache's batch size keeps results bit-identical).
        progress: show a progress bar on stderr.

    Returns:
        The per-image results (before = unpatched model, after = patched).
    """
    if strength != 1.0:
        patch = patch.model_copy(update={"edits": at_strength(patch.edits, strength)})
    block = patch.hook.block
    after = []
    desc = f"scoring {patch.ref}" + (f" x{strength:g}" if strength != 1.0 else "")
    total = -(-len(cached.ids) // batch_size)
    # row_batches reads spilled activations front to back, one shard at a time
    for hidden in tqdm(row_batches(cached.hidden, batch_size), total=total, desc=desc, unit="batch", disable=not progress):
        after.append(encode_suffix(model, steer_block_output(hidden, sae, patch), block))
    features_after = torch.cat(after) if after else cached.features[:0]
    return results_from_features(
        cached.ids, cached.features, features_after, head, labels=labels, groups=groups
    )


def results_from_features(ids, before: torch.Tensor, after: torch.Tensor, head, *, labels, groups=None) -> ImageResults:
    """Turn image embeddings before and after a patch into per-image results.

    Args:
        ids: item ids, one per row.
        before: unpatched embeddings, (N, E).
        after: patched embeddings, (N, E).
        head: a `ZeroShotHead`.
        labels: true class index per row.
        groups: grouping attribute value per row, or None.

    Returns:
        The per-image results.
    """
    probs_before = head.logits(before).softmax(-1).double().numpy()
    probs_after = head.logits(after).softmax(-1).double().numpy()
    cos = torch.nn.functional.cosine_similarity(before.double(), after.double(), dim=-1).numpy()
    return ImageResults(
        ids=list(ids),
        labels=np.asarray(labels, dtype=np.int64),
        pred_before=probs_before.argmax(-1),
        pred_after=probs_after.argmax(-1),
        probs_before=probs_before,
        probs_after=probs_after,
        cos=cos,
        classes=list(head.classes),
        groups=groups,
    )
