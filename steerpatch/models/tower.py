"""The open_clip vision tower: the one module that knows its layout, cuts it at a block and resumes.

steerpatch edits the residual stream after one block of an open_clip `VisionTransformer`
(`model.visual.transformer.resblocks[L]`). Finding the tower, its blocks, width, token count and
layout, running it up to a block, resuming from a block's output, and rewriting a block's output
with a hook all live here; attribution, SAE training, steering, validation and ONNX export call
these instead of reaching into open_clip's attributes themselves.

Every function takes a `LoadedModel`, an open_clip CLIP, or its vision tower. Block outputs are
handed to callers batch first, (batch, tokens, width), whatever the transformer's own layout.
Torch is imported only by the functions that run the model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from steerpatch.errors import ModelError, SteerpatchError

if TYPE_CHECKING:
    import torch


def vision_tower(model: Any) -> Any:
    """The open_clip vision transformer of a LoadedModel, a CLIP model, or a vision tower itself.

    Raises:
        ModelError: if the object has no open_clip ViT `transformer.resblocks`.

    Example:
        >>> vision_tower(loaded).transformer.width  # doctest: +SKIP
        768
    """
    model = getattr(model, "model", model)
    tower = getattr(model, "visual", model)
    if not hasattr(getattr(tower, "transformer", None), "resblocks"):
        raise ModelError(
            f"{type(model).__name__} has no visual.transformer.resblocks; steerpatch steers the residual "
            "stream of open_clip ViT image towers only"
        )
    return tower


def resblocks(model: Any) -> torch.nn.ModuleList:
    """The vision transformer's residual blocks (`model.visual.transformer.resblocks`).

    Raises:
        ModelError: if the model is not an open_clip ViT.
    """
    return vision_tower(model).transformer.resblocks


def num_blocks(model: Any) -> int:
    """Number of residual blocks in the image tower.

    Raises:
        ModelError: if the model is not an open_clip ViT.
    """
    return len(resblocks(model))


def check_block(model: Any, block: int, error: type[SteerpatchError] = ModelError) -> None:
    """Refuse a block index the image tower does not have.

    Args:
        model: the model.
        block: the block index.
        error: the error class to raise (the SAE code raises `SAEError` for its own inputs).

    Raises:
        ModelError: (or `error`) naming the block and the valid range.
    """
    n = num_blocks(model)
    if not 0 <= block < n:
        raise error(f"block {block} does not exist: this model's vision tower has blocks 0..{n - 1}")


def residual_width(model: Any) -> int:
    """Width of the residual stream (every block's input and output width)."""
    return int(vision_tower(model).transformer.width)


def width_at_block(model: Any, block: int) -> int:
    """Residual-stream width at the output of vision block `block`.

    Raises:
        ModelError: if `block` is out of range.
    """
    check_block(model, block)
    return residual_width(model)


def n_tokens(model: Any) -> int:
    """Sequence length of the vision tower: class token + patch grid."""
    return int(vision_tower(model).positional_embedding.shape[0])


def is_batch_first(model: Any) -> bool:
    """Whether the transformer's blocks take and return (batch, tokens, width) rather than (tokens, batch, width)."""
    return bool(getattr(vision_tower(model).transformer, "batch_first", True))


def as_batch_first(output: torch.Tensor, batch_first: bool) -> torch.Tensor:
    """A block's output as (batch, tokens, width); applied again it restores the block's own layout."""
    return output if batch_first else output.transpose(0, 1)


def _run_blocks(tower: Any, x: torch.Tensor, blocks: Any) -> torch.Tensor:
    # open_clip keeps (N, L, D) when batch_first, else transposes to (L, N, D) around the blocks
    batch_first = is_batch_first(tower)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    for blk in blocks:
        x = blk(x, attn_mask=None)
    return as_batch_first(x, batch_first)


def encode_prefix(model: Any, pixels: torch.Tensor, block: int) -> torch.Tensor:
    """Run the image tower up to and including residual block `block`.

    Hooks on the blocks (a steering context) run as in `encode_image`.

    Args:
        model: a LoadedModel, an open_clip CLIP, or its `visual` tower.
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
    tower = vision_tower(model)
    return _run_blocks(tower, tower._embeds(pixels), tower.transformer.resblocks[: block + 1])


def encode_suffix(model: Any, hidden: torch.Tensor, block: int) -> torch.Tensor:
    """Run the blocks after `block`, then the pooling head, from a residual stream after `block`.

    This mirrors open_clip's `VisionTransformer.forward` after the blocks (`_pool`, then `proj`).

    Args:
        model: a LoadedModel, an open_clip CLIP, or its `visual` tower.
        hidden: the residual stream after `block`, batch first: (B, tokens, width).
        block: index of the block whose output `hidden` is.

    Returns:
        Unnormalized image embeddings, (B, embed_dim), equal to `model.encode_image` on the same input.

    Raises:
        ModelError: if `block` is out of range.
    """
    check_block(model, block)
    tower = vision_tower(model)
    x = _run_blocks(tower, hidden, tower.transformer.resblocks[block + 1 :])
    pooled, _ = tower._pool(x)
    if tower.proj is not None:
        pooled = pooled @ tower.proj
    return pooled


def run_to_block(model: Any, pixels: torch.Tensor, block: int) -> torch.Tensor:
    """Capture the (batch, tokens, width) residual output of `block` for preprocessed `pixels`, without grad.

    The blocks after `block` are not run.

    Raises:
        ModelError: if `block` is out of range.
    """
    import torch

    with torch.no_grad():
        return encode_prefix(model, pixels, block).detach()


@contextlib.contextmanager
def edit_block_output(
    model: Any, block: int, edit: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Rewrite the output of vision block `block` on every forward pass inside the `with` block.

    Args:
        model: the model.
        block: the block index (not range-checked here: callers check it with their own words).
        edit: batch-first block output -> its replacement, same shape.

    Yields:
        Nothing; the hook is removed when the context exits, whatever happens inside it.
    """
    batch_first = is_batch_first(model)

    def hook(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        return as_batch_first(edit(as_batch_first(output, batch_first)), batch_first)

    handle = resblocks(model)[block].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()
