"""The exportable steered image encoder: open_clip's vision tower with a steering module inside it.

`EncoderGraph` wraps the tower (plus an optional zero-shot head) and puts the steering module of
`steerpatch.compile.steering` (one patch, or a `PatchSelector` of several) after one residual block.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from steerpatch.compile.steering import PatchSelector
from steerpatch.models.tower import n_tokens as n_tokens  # re-exported: the compilers read it here
from steerpatch.models.tower import resblocks
from steerpatch.tokens import select_tokens


def token_mask(tokens: str | Sequence[int], n_tokens: int) -> torch.Tensor:
    """A (n_tokens,) float mask of the tokens a patch edits: 1 on `select_tokens`' positions.

    Raises:
        PatchError: for an unknown scope name or an index outside the sequence.
    """
    mask = torch.zeros(n_tokens)
    mask[select_tokens(tokens, n_tokens)] = 1.0
    return mask


class SteeredBlock(nn.Module):
    """A residual block followed by a steering module on its output."""

    def __init__(self, block: nn.Module, steering: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.steering = steering

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.steering(self.block(x, *args, **kwargs))


class EncoderGraph(nn.Module):
    """pixels (B, 3, H, W) [, patch_index (B,)] -> embedding, plus logits and probs with a zero-shot head.

    With a `PatchSelector` as its steering the graph takes a second input, `patch_index`, per row.

    Args:
        visual: an open_clip vision tower (copied; the caller's model is never modified).
        block: index of the steered residual block.
        steering: the steering module, or None for the plain (unsteered) encoder.
        head_weights: (C, E) normalized class-prompt text embeddings, or None for embeddings only.
        logit_scale: the zero-shot head's temperature (already exponentiated).
    """

    head_weights: torch.Tensor
    logit_scale: torch.Tensor

    def __init__(self, visual: nn.Module, block: int | None = None, steering: nn.Module | None = None,
                 head_weights: torch.Tensor | None = None, logit_scale: float = 100.0) -> None:
        super().__init__()
        tower: Any = copy.deepcopy(visual).float().eval()
        if steering is not None and block is not None:
            blocks = resblocks(tower)
            blocks[block] = SteeredBlock(blocks[block], steering)
        self.visual = tower
        self.selector = steering if isinstance(steering, PatchSelector) else None
        self.has_head = head_weights is not None
        if head_weights is not None:
            self.register_buffer("head_weights", head_weights.detach().float().clone())
            self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))

    @property
    def output_names(self) -> list[str]:
        return ["embedding", "logits", "probs"] if self.has_head else ["embedding"]

    @property
    def input_names(self) -> list[str]:
        return ["pixels", "patch_index"] if self.selector is not None else ["pixels"]

    def forward(self, pixels: torch.Tensor, patch_index: torch.Tensor | None = None):
        if self.selector is not None:
            if patch_index is None:
                raise ValueError("a multi-patch graph needs patch_index, one int64 per row")
            self.selector.index = patch_index
        embedding = self.visual(pixels)
        if not self.has_head:
            return embedding
        features = embedding / embedding.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        logits = self.logit_scale * features @ self.head_weights.T
        return embedding, logits, torch.softmax(logits, dim=-1)

