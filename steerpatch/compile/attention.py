"""open_clip's attention, re-expressed at export time in the form ONNX Runtime's attention fusion matches.

`nn.MultiheadAttention` traces to one packed QKV MatMul, a Split and a scaled query; ONNX Runtime's
transformer optimiser (`model_type="vit"`) looks for separate Q, K and V projections, per-head
Reshape/Transpose, `MatMul(q, k) / sqrt(d)`, Softmax, `MatMul(p, v)` and a Transpose/Reshape back,
as BERT and ViT export, and fuses only that into one `Attention` op. `FusableAttention` computes the
same self-attention from the same weights in that form; `fusable_attention` swaps it in for the
length of an export and puts the original modules back. The parity gate compares the exported
graph with the untouched torch model, so a difference in the math cannot ship.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn


class FusableAttention(nn.Module):
    """Self-attention (query = key = value, no mask) with the weights of a batch-first `nn.MultiheadAttention`.

    Args:
        mha: the module it stands in for (packed `in_proj`, `out_proj`, batch first).
    """

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        width, heads = mha.embed_dim, mha.num_heads
        self.heads, self.head_dim = heads, width // heads
        weight = mha.in_proj_weight.detach()
        bias = mha.in_proj_bias.detach() if mha.in_proj_bias is not None else torch.zeros(3 * width)
        self.q, self.k, self.v = (nn.Linear(width, width) for _ in range(3))
        for i, linear in enumerate((self.q, self.k, self.v)):
            linear.weight = nn.Parameter(weight[i * width:(i + 1) * width].clone(), requires_grad=False)
            linear.bias = nn.Parameter(bias[i * width:(i + 1) * width].clone(), requires_grad=False)
        self.out_proj = mha.out_proj

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, **_: object) -> tuple[torch.Tensor, None]:
        if attn_mask is not None or key is not query or value is not query:
            raise ValueError("FusableAttention computes unmasked self-attention only")
        tokens, width = int(query.shape[1]), int(query.shape[2])  # static in the graph; only the batch varies

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(-1, tokens, self.heads, self.head_dim).permute(0, 2, 1, 3)

        q, k, v = heads(self.q(query)), heads(self.k(query)), heads(self.v(query))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        context = torch.matmul(scores.softmax(dim=-1), v).permute(0, 2, 1, 3).reshape(-1, tokens, width)
        return self.out_proj(context), None


def _swappable(module: nn.Module) -> bool:
    return (isinstance(module, nn.MultiheadAttention) and module.batch_first and module._qkv_same_embed_dim
            and module.in_proj_weight is not None and module.bias_k is None and not module.add_zero_attn)


@contextlib.contextmanager
def fusable_attention(module: nn.Module) -> Iterator[int]:
    """Swap every batch-first self-attention inside `module` for a `FusableAttention`, and back on exit.

    Yields:
        How many modules were swapped (0 when the tower's attention has another form: nothing changes).
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in module.modules():
        for name, child in list(parent.named_children()):
            if _swappable(child):
                swapped.append((parent, name, child))
    try:
        for parent, name, child in swapped:
            setattr(parent, name, FusableAttention(child))  # type: ignore[arg-type]
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
