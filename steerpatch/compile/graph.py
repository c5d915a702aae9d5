"""The exportable steered image encoder: open_clip's vision tower with the patch as a module inside it.

The steering module computes the engine's error-preserving edit on the residual output of one block,

    x' = x + s(x) * (sum_i (z'_i - z_i) * W_dec[i] + sum_add a_i * W_dec[i])   (on the scoped tokens only)

so the SAE's reconstruction error never enters the graph; s(x) is the per-token factor of the SAE's
normalisation (see `steerpatch.sae.normalization`), 1 without one. The graph runs the same registered
code the eager engine runs: the normalisation step and the architecture's encoder. For elementwise
architectures (standard, jumprelu, gated) a latent's activation depends on its own encoder column only,
so the graph carries just the edited latents' columns, per-latent tensors and decoder rows (sparse
mode, O(k*d) extra weights). A TopK latent's activation depends on every other latent (the k-th
largest pre-activation), so TopK SAEs carry the full encoder and a TopK node (exact mode).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from steerpatch.models.tower import n_tokens as n_tokens  # re-exported: the compilers read it here
from steerpatch.models.tower import resblocks
from steerpatch.sae.normalization import get_normalization
from steerpatch.sae.registry import SAE_REGISTRY, get_architecture
from steerpatch.tokens import select_tokens


class _Modes(Mapping[str, tuple[str, str]]):
    """architecture -> (mode, why), read from the SAE registry (the one home of per-architecture facts)."""

    def __getitem__(self, name: str) -> tuple[str, str]:
        if name not in SAE_REGISTRY:
            raise KeyError(name)
        return SAE_REGISTRY[name].compile_mode

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(SAE_REGISTRY))

    def __len__(self) -> int:
        return len(SAE_REGISTRY)


MODES: Mapping[str, tuple[str, str]] = _Modes()

OPS = ("scale", "clamp", "clamp_if_active", "add")


@dataclass(frozen=True)
class EditTable:
    """A patch's edits as parallel columns, one row per edited latent (the `add` edits kept apart)."""

    latents: list[int]  # latents whose activation is rewritten (scale, clamp, clamp_if_active)
    scale: list[float]  # 1.0 unless the op is `scale`
    clamp: list[float]  # the clamp value, used where the op is `clamp` or `clamp_if_active`
    clamp_always: list[bool]
    clamp_if_active: list[bool]
    add_latents: list[int]
    add_values: list[float]

    @classmethod
    def from_edits(cls, edits: Sequence) -> EditTable:
        """Split edits (objects with `latent`, `op`, `value`) into the graph's columns.

        Raises:
            ValueError: for an op the graph does not know.
        """
        table = cls([], [], [], [], [], [], [])
        for edit in edits:
            op, latent, value = edit.op, int(edit.latent), float(edit.value)
            if op == "add":
                table.add_latents.append(latent)
                table.add_values.append(value)
                continue
            if op not in OPS:
                raise ValueError(f"edit op {op!r} on latent {latent} is not one of {', '.join(OPS)}")
            table.latents.append(latent)
            table.scale.append(value if op == "scale" else 1.0)
            table.clamp.append(value if op != "scale" else 0.0)
            table.clamp_always.append(op == "clamp")
            table.clamp_if_active.append(op == "clamp_if_active")
        return table


def token_mask(tokens: str | Sequence[int], n_tokens: int) -> torch.Tensor:
    """A (n_tokens,) float mask of the tokens a patch edits: 1 on `select_tokens`' positions.

    Raises:
        PatchError: for an unknown scope name or an index outside the sequence.
    """
    mask = torch.zeros(n_tokens)
    mask[select_tokens(tokens, n_tokens)] = 1.0
    return mask


class _EncoderTensors(nn.Module):
    """The encoder tensors the architecture's registered `encode` reads, held as graph buffers."""

    def __init__(self, cfg: Any, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.cfg = cfg  # plain attribute: k and the rescale flag are read at trace time
        for name, value in tensors.items():
            self.register_buffer(name, value.detach().float().clone())


class SteeringModule(nn.Module):
    """Rewrites a block's output (B, T, D) with one patch's edits; pure tensor math, ONNX-exportable.

    Args:
        sae: the `steerpatch.sae.SAE` (its registered architecture and normalisation are reused).
        table: the patch's edits as columns.
        tokens: the patch's token scope.
        n_tokens: sequence length of the vision tower (class token + patches).
        mode: "sparse" (edited columns only; elementwise architectures) or "exact" (full encoder).
        batch_first: whether the block output is (B, T, D) rather than (T, B, D).
    """

    # buffers, declared for type checkers (nn.Module's __getattr__ types them as Tensor | Module)
    b_dec: torch.Tensor
    W_dec_sub: torch.Tensor
    scale: torch.Tensor
    clamp_value: torch.Tensor
    clamp_always: torch.Tensor
    clamp_if_active: torch.Tensor
    add_vector: torch.Tensor
    token_mask: torch.Tensor
    edited: torch.Tensor

    def __init__(self, sae, table: EditTable, tokens, n_tokens: int, mode: str, batch_first: bool = True) -> None:
        super().__init__()
        spec = get_architecture(sae.cfg.architecture)
        if mode == "sparse" and not spec.elementwise:
            raise ValueError(f"SAE architecture {spec.name!r} cannot be compiled sparse: {spec.compile_mode[1]}")
        self.spec = spec
        self.cfg = sae.cfg
        self.norm = get_normalization(sae.cfg.normalize_activations)
        self.mode = mode
        self.has_edits = bool(table.latents)
        self.has_adds = bool(table.add_latents)
        self.apply_b_dec = bool(getattr(sae.cfg, "apply_b_dec_to_input", False))
        with torch.no_grad():
            W_dec = sae.W_dec.detach().float()
            idx = torch.tensor(table.latents, dtype=torch.long)
            rescale = bool(getattr(sae.cfg, "rescale_acts_by_decoder_norm", False))
            norms = W_dec.norm(dim=-1)
            self.register_buffer("b_dec", sae.b_dec.detach().float().clone())
            # with rescaled topk the code is z * ||W_dec[i]|| and decoding divides it back out
            W_dec_sub = W_dec[idx] / norms[idx, None] if rescale else W_dec[idx]
            self.register_buffer("W_dec_sub", W_dec_sub.clone())
            self.register_buffer("scale", torch.tensor(table.scale, dtype=torch.float32))
            self.register_buffer("clamp_value", torch.tensor(table.clamp, dtype=torch.float32))
            self.register_buffer("clamp_always", torch.tensor(table.clamp_always, dtype=torch.bool))
            self.register_buffer("clamp_if_active", torch.tensor(table.clamp_if_active, dtype=torch.bool))
            add = torch.zeros(W_dec.shape[1])
            for latent, value in zip(table.add_latents, table.add_values, strict=True):
                add = add + value * W_dec[latent]
            self.register_buffer("add_vector", add)
            mask = token_mask(tokens, n_tokens)
            shape = (n_tokens, 1) if batch_first else (n_tokens, 1, 1)
            self.register_buffer("token_mask", mask.reshape(shape))
            self.register_buffer("edited", idx.clone())
            # exact mode keeps every latent (the encoder needs them all); sparse mode only the edited ones
            cols = slice(None) if mode == "exact" else idx
            tensors = {"W_enc": sae.W_enc.detach()[:, cols]}
            if spec.uses_b_enc:
                tensors["b_enc"] = sae.b_enc.detach()[cols]
            for name in spec.extra_tensors:
                tensors[name] = getattr(sae, name).detach()[cols]
            if rescale:
                tensors["dec_norms"] = norms[cols]
            self.encoder = _EncoderTensors(sae.cfg, tensors)

    def extra_weights(self) -> int:
        """Number of scalars this module adds to the graph."""
        return sum(buffer.numel() for buffer in self.buffers())

    def edited_activations(self, sae_in: torch.Tensor) -> torch.Tensor:
        """Activations of the edited latents only, (..., k), from the encoder's input."""
        z = self.spec.encode(self.encoder, self.cfg, sae_in)
        return z.index_select(-1, self.edited) if self.mode == "exact" else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.has_edits or self.has_adds):
            return x
        x_n, back = self.norm.normalize(self.cfg, x)
        delta: torch.Tensor | None = None
        if self.has_edits:
            z = self.edited_activations(x_n - self.b_dec if self.apply_b_dec else x_n)
            z_new = z * self.scale
            z_new = torch.where(self.clamp_always, self.clamp_value, z_new)
            z_new = torch.where(self.clamp_if_active & (z > 0), self.clamp_value, z_new)
            delta = (z_new - z) @ self.W_dec_sub
        if self.has_adds:
            delta = self.add_vector if delta is None else delta + self.add_vector
        assert delta is not None  # has_edits or has_adds
        return x + back.restore_delta(delta) * self.token_mask


class PatchSelector(nn.Module):
    """Several patches' steering modules on one block; each batch row picks its own by `patch_index`.

    Row b gets patch `index[b]` (1-based; 0 leaves the row unpatched). Every module runs on the whole
    batch and `Where` keeps each row's own result: the modules are sparse, so this costs O(n*k*d) and
    one graph serves a batch that mixes patches. `index` is set by `EncoderGraph.forward` for each
    call (a traced tensor, so it stays an input of the exported graph).

    Args:
        modules: one `SteeringModule` per patch, in patch-index order (index 1 first).
        batch_first: whether the block output is (B, T, D) rather than (T, B, D).
    """

    def __init__(self, modules: Sequence[nn.Module], batch_first: bool = True) -> None:
        super().__init__()
        self.patches = nn.ModuleList(modules)
        self.batch_first = batch_first
        self.index: torch.Tensor | None = None

    def extra_weights(self) -> int:
        """Number of scalars the patches add to the graph."""
        return sum(module.extra_weights() for module in self.patches)  # type: ignore[operator]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            raise RuntimeError("PatchSelector needs EncoderGraph to set the batch's patch_index first")
        rows = self.index.reshape(-1, 1, 1) if self.batch_first else self.index.reshape(1, -1, 1)
        out = x
        for i, module in enumerate(self.patches, start=1):
            out = torch.where(rows == i, module(x), out)
        return out


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

