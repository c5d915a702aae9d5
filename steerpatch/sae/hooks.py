"""Hook names of SAE configs mapped to open_clip's vision blocks.

Every SAE here reads the residual stream at the output of one block,
`model.visual.transformer.resblocks[L]`. SAELens and ViT-Prisma name that point in TransformerLens
style (`blocks.L.hook_resid_post`, or `blocks.L+1.hook_resid_pre`, the same tensor); open_clip names
the module. Each accepted spelling is one row of `RESIDUAL_HOOKS`; names inside a block (attention,
MLP, the mid-block residual) have no open_clip block output, so they are refused with what is supported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from steerpatch.errors import SAEError


@dataclass(frozen=True)
class HookPattern:
    """A residual-stream hook spelling: the regex (group 1 = layer) and the offset to the block index."""

    pattern: re.Pattern[str]
    offset: int
    example: str


RESIDUAL_HOOKS: tuple[HookPattern, ...] = (
    HookPattern(re.compile(r"^(?:model\.)?(?:visual\.)?transformer\.resblocks\.(\d+)$"), 0,
                "visual.transformer.resblocks.L"),
    HookPattern(re.compile(r"^blocks\.(\d+)\.hook_resid_post$"), 0, "blocks.L.hook_resid_post"),
    # the residual entering block L+1 is the output of block L
    HookPattern(re.compile(r"^blocks\.(\d+)\.hook_resid_pre$"), -1, "blocks.L.hook_resid_pre (L >= 1)"),
)


def supported_hooks() -> str:
    """The accepted spellings, for messages and the README."""
    return ", ".join(p.example for p in RESIDUAL_HOOKS)


def block_for_hook(name: str) -> int:
    """The open_clip vision block whose output a hook name denotes.

    Args:
        name: a hook name such as `blocks.8.hook_resid_post` or `visual.transformer.resblocks.8`.

    Returns:
        The block index L (the SAE reads `model.visual.transformer.resblocks[L]`'s output).

    Raises:
        SAEError: for a hook that is not a block's residual output, naming what is supported.

    Example:
        >>> block_for_hook("blocks.9.hook_resid_pre")
        8
    """
    for hook in RESIDUAL_HOOKS:
        match = hook.pattern.match(name)
        if match:
            block = int(match.group(1)) + hook.offset
            if block < 0:
                raise SAEError(
                    f"hook {name!r} is the embedding output before block 0, which no block output carries; "
                    f"use an SAE on a block's residual output; supported: {supported_hooks()}"
                )
            return block
    raise SAEError(
        f"hook {name!r} is not the residual stream between blocks (attention, MLP and mid-block hooks "
        f"cannot be steered here); supported: {supported_hooks()}"
    )
