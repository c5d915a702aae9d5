"""The exportable steering module: one patch's edit on a block's output, as pure tensor math.

It computes the engine's error-preserving edit on the residual output of one block,

    x' = x + s(x) * (sum_i (z'_i - z_i) * W_dec[i] + sum_add a_i * W_dec[i])   (on the scoped tokens only)

so the SAE's reconstruction error never enters the graph; s(x) is the per-token factor of the SAE's
normalisation (see `steerpatch.sae.normalization`), 1 without one. The module holds no math of its
own: it runs the registered normalisation, the architecture's `latent_tensors`/`latent_codes`, each
registered op's `rewrite` and the torch steering's `latent_change`/`direction_shift`, so a new op or
architecture compiles as soon as it is registered. For elementwise architectures (standard, jumprelu,
gated) a latent's activation depends on its own encoder column only, so the graph carries just the
edited latents' columns, per-latent tensors and decoder rows (sparse mode, O(k*d) extra weights). A
TopK latent's activation depends on every other latent (the k-th largest pre-activation), so TopK
SAEs carry the full encoder and a TopK node (exact mode).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from steerpatch.sae.architectures import ARCHITECTURES, get_architecture
from steerpatch.sae.normalization import get_normalization
from steerpatch.steer.delta import EditColumns, decoder_directions, direction_shift, latent_change


class _Modes(Mapping[str, tuple[str, str]]):
    """architecture -> (mode, why), read from the SAE architectures (the one home of per-architecture facts)."""

    def __getitem__(self, name: str) -> tuple[str, str]:
        if name not in ARCHITECTURES:
            raise KeyError(name)
        return ARCHITECTURES[name].compile_mode

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(ARCHITECTURES))

    def __len__(self) -> int:
        return len(ARCHITECTURES)


MODES: Mapping[str, tuple[str, str]] = _Modes()


class _EncoderTensors(nn.Module):
    """The tensors the architecture's `latent_codes` reads, held as graph buffers."""

    def __init__(self, cfg: Any, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.cfg = cfg  # plain attribute: k and the rescale flag are read at trace time
        for name, value in tensors.items():
            self.register_buffer(name, value.detach().float().clone())


class SteeringModule(nn.Module):
    """Rewrites a block's output (B, T, D) with one patch's edits; pure tensor math, ONNX-exportable.

    Args:
        sae: the `steerpatch.sae.SAE` (its registered architecture and normalisation are reused).
        columns: the patch's edits, resolved to their registered ops.
        token_mask: (n_tokens,) 1.0 on the tokens the patch edits, 0.0 elsewhere.
        batch_first: whether the block output is (B, T, D) rather than (T, B, D).

    The mode follows the architecture (`MODES`): "sparse" carries only the edited latents' columns
    (elementwise architectures), "exact" the full encoder.

    Example:
        >>> module = SteeringModule(sae, EditColumns.from_edits(patch.edits), mask)  # doctest: +SKIP
    """

    # buffers, declared for type checkers (nn.Module's __getattr__ types them as Tensor | Module)
    b_dec: torch.Tensor
    W_dec_sub: torch.Tensor
    values: torch.Tensor
    op_of: torch.Tensor
    add_vector: torch.Tensor
    token_mask: torch.Tensor
    edited: torch.Tensor

    def __init__(self, sae: Any, columns: EditColumns, token_mask: torch.Tensor, batch_first: bool = True) -> None:
        super().__init__()
        spec = get_architecture(sae.cfg.architecture)
        self.spec = spec
        self.cfg = sae.cfg
        self.norm = get_normalization(sae.cfg.normalize_activations)
        self.mode = spec.compile_mode[0]
        self.ops = columns.ops  # the registered ops, called at trace time
        self.has_edits = bool(columns.latents)
        self.has_adds = bool(columns.add_latents)
        self.apply_b_dec = bool(getattr(sae.cfg, "apply_b_dec_to_input", False))
        with torch.no_grad():
            idx = torch.tensor(columns.latents, dtype=torch.long)
            self.register_buffer("b_dec", sae.b_dec.detach().float().clone())
            self.register_buffer("W_dec_sub", decoder_directions(sae, columns.latents).detach().float().clone())
            self.register_buffer("values", torch.tensor(columns.values, dtype=torch.float32))
            self.register_buffer("op_of", torch.tensor(columns.op_of, dtype=torch.long))
            add = direction_shift(sae.W_dec.detach().float(), columns.add_latents, columns.add_values)
            self.register_buffer("add_vector", add.clone())
            shape = (-1, 1) if batch_first else (-1, 1, 1)
            self.register_buffer("token_mask", token_mask.detach().float().reshape(shape).clone())
            self.register_buffer("edited", idx.clone())
            self.encoder = _EncoderTensors(sae.cfg, spec.latent_tensors(sae, idx))

    def extra_weights(self) -> int:
        """Number of scalars this module adds to the graph."""
        return sum(buffer.numel() for buffer in self.buffers())

    def edited_activations(self, sae_in: torch.Tensor) -> torch.Tensor:
        """Activations of the edited latents only, (..., k), from the encoder's input."""
        return self.spec.latent_codes(self.encoder, sae_in, self.edited)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.has_edits or self.has_adds):
            return x
        x_n, back = self.norm.normalize(self.cfg, x)
        delta: torch.Tensor | None = None
        if self.has_edits:
            z = self.edited_activations(x_n - self.b_dec if self.apply_b_dec else x_n)
            delta = latent_change(z, self.ops, self.op_of, self.values) @ self.W_dec_sub
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
