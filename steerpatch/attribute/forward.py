"""A CLIP image encoder split at a residual block: the prefix up to a hook, the suffix after it.

Attribution and validation both edit the residual stream at one block and need the rest of the model
from there on. Re-running only the suffix is what makes trying one more edit cheap: the prefix output
is computed once and reused. The suffix mirrors open_clip's `VisionTransformer.forward` after the
transformer blocks (`_pool`, then `proj`), and a test pins it to `model.encode_image` exactly.
"""

from __future__ import annotations

import torch

from steerpatch.errors import ModelError


def _visual(model):
    visual = getattr(model, "visual", model)
    transformer = getattr(visual, "transformer", None)
    if transformer is None or not hasattr(transformer, "resblocks") or not hasattr(visual, "_embeds"):
        raise ModelError(
            f"model {type(model).__name__} has no open_clip VisionTransformer; "
            "steerpatch edits the residual stream of open_clip ViT image towers only"
        )
    return visual


def num_blocks(model) -> int:
    """Number of residual blocks in the image tower.

    Args:
        model: an open_clip CLIP (or its `visual` tower).

    Returns:
        How many residual blocks the vision transformer has.
    """
    return len(_visual(model).transformer.resblocks)


def check_block(model, block: int) -> None:
    """Refuse a block index the image tower does not have.

    Raises:
        ModelError: if `block` is outside `[0, num_blocks)`.
    """
    n = num_blocks(model)
    if not 0 <= block < n:
        raise ModelError(f"hook block {block} is out of range: the image tower has blocks 0..{n - 1}")


def _run_blocks(visual, x: torch.Tensor, blocks) -> torch.Tensor:
    # open_clip keeps (N, L, D) when batch_first, else transposes to (L, N, D) around the blocks
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for blk in blocks:
        x = blk(x, attn_mask=None)
    if not batch_first:
        x = x.transpose(0, 1)
    return x


def encode_prefix(model, pixels: torch.Tensor, block: int) -> torch.Tensor:
    """Run the image tower up to and including residual block `block`.

    Args:
        model: an open_clip CLIP (or its `visual` tower).
        pixels: preprocessed images, (B, 3, H, W).
        block: index of the last block to run.

    Returns:
        The residual stream after `block`, batch first: (B, tokens, width).

    Raises:
        ModelError: if `block` is out of range.

    Example:
        >>> x = encode_prefix(model, pixels, 8)  # doctest: +SKIP
        >>> torch.equal(encode_suffix(model, x, 8), model.encode_image(pixels))  # doctest: +SKIP
        True
    """
    check_block(model, block)
    visual = _visual(model)
    x = visual._embeds(pixels)
    return _run_blocks(visual, x, visual.transformer.resblocks[: block + 1])


def encode_suffix(model, hidden: torch.Tensor, block: int) -> torch.Tensor:
    """Run the blocks after `block`, then the pooling head, from a residual stream after `block`.

    Args:
        model: an open_clip CLIP (or its `visual` tower).
        hidden: the residual stream after `block`, batch first: (B, tokens, width).
        block: index of the block whose output `hidden` is.

    Returns:
        Unnormalized image embeddings, (B, embed_dim), equal to `model.encode_image` on the same input.

    Raises:
        ModelError: if `block` is out of range.
    """
    check_block(model, block)
    visual = _visual(model)
    x = _run_blocks(visual, hidden, visual.transformer.resblocks[block + 1 :])
    pooled, _ = visual._pool(x)
    if visual.proj is not None:
        pooled = pooled @ visual.proj
    return pooled
