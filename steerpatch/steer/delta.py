"""The steering math as pure tensor functions, shared by the hooks, the validation cache and ONNX export.

A patch changes the residual stream x at its block by the difference its edits make to the SAE
reconstruction, never by replacing x with the reconstruction, so the SAE's error term is kept.
The difference is computed in the SAE's own (normalised) space and mapped back:

    x' = x + s(x) * (sum_i (z'_i - z_i) * d_i + sum_add a_i * W_dec[i])

where d_i is the decoder direction of latent i (W_dec[i], divided by its norm for topk SAEs that
rescale activations by decoder norm) and s(x) is the per-token factor of the SAE's normalisation
(1 for none, std for layer_norm, ||x|| / sqrt(d_in) for constant_norm_rescale): the normalisation's
way back is affine, so this is exactly decode(z') - decode(z) in the residual stream. An empty
patch, or one whose edits change nothing, returns x bit for bit.

Both the torch hooks and the exported ONNX module (`steerpatch.compile.steering`) compute the edit
from the same pieces here: `EditColumns` (the edits grouped by their registered op), the
architecture's `latent_tensors`/`latent_codes`, `latent_change` and `direction_shift`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from steerpatch.errors import PatchError
from steerpatch.patch.format import Edit, Patch
from steerpatch.patch.ops import Op, get_op
from steerpatch.sae.architectures import ARCHITECTURES
from steerpatch.tokens import select_tokens as token_index  # the one token-scope function, by its public name

# a view of the registry's `elementwise` flag (its one home), kept for importers of this name
ELEMENTWISE_ARCHITECTURES = frozenset(name for name, arch in ARCHITECTURES.items() if arch.elementwise)


@dataclass(frozen=True)
class EditColumns:
    """A patch's edits as columns in patch order, each resolved to its registered op.

    Attributes:
        latents: latents of the latent-op edits (their activation is rewritten).
        values: those edits' values.
        ops: the latent ops used, each once, in order of first use.
        op_of: for each latent edit, its op's position in `ops`.
        add_latents: latents of the direction-op edits (value * W_dec[i] is added).
        add_values: those edits' values.
    """

    latents: tuple[int, ...]
    values: tuple[float, ...]
    ops: tuple[Op, ...]
    op_of: tuple[int, ...]
    add_latents: tuple[int, ...]
    add_values: tuple[float, ...]

    @classmethod
    def from_edits(cls, edits: Iterable[Any]) -> EditColumns:
        """Split edits (objects with `latent`, `op`, `value`) by their op's kind.

        Raises:
            PatchError: for an op that is not registered.
        """
        latent, direction, ops = [], [], []
        for edit in edits:
            op = get_op(edit.op)
            if op.kind == "direction":
                direction.append(edit)
                continue
            if op not in ops:
                ops.append(op)
            latent.append((edit, ops.index(op)))
        return cls(
            latents=tuple(int(e.latent) for e, _ in latent),
            values=tuple(float(e.value) for e, _ in latent),
            ops=tuple(ops),
            op_of=tuple(i for _, i in latent),
            add_latents=tuple(int(e.latent) for e in direction),
            add_values=tuple(float(e.value) for e in direction),
        )


def latent_change(z: torch.Tensor, ops: Sequence[Op], op_of: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """z' - z for the codes z (..., k) of k edited latents: column j goes through ops[op_of[j]] with values[j].

    Each op runs once on all k columns and `where` keeps its own columns, so the exported graph
    holds one node group per op, whatever the number of edits.
    """
    new = z
    for i, op in enumerate(ops):
        new = torch.where(op_of == i, op.rewrite(z, values), new)
    return new - z


def direction_shift(W_dec: torch.Tensor, latents: Sequence[int], values: Sequence[float]) -> torch.Tensor:
    """sum_i value_i * W_dec[latent_i], (d_in,): what the direction ops add."""
    rows = W_dec[torch.tensor(list(latents), dtype=torch.long, device=W_dec.device)]
    return torch.tensor(list(values), dtype=rows.dtype, device=rows.device) @ rows


def _rescaled(sae: Any) -> bool:
    return bool(getattr(sae.cfg, "rescale_acts_by_decoder_norm", False))


def latent_codes(sae: Any, sae_in: torch.Tensor, latents: Sequence[int]) -> torch.Tensor:
    """Codes of a few latents from the encoder's input (normalised, b_dec already handled), (..., k).

    The architecture says which tensors that takes (`latent_tensors`: the named encoder columns for
    elementwise architectures, every latent for topk, where whether a latent survives depends on
    all the others) and computes the codes from them, as the exported graph does.
    """
    idx = torch.tensor(list(latents), dtype=torch.long, device=sae.W_dec.device)
    view = SimpleNamespace(cfg=sae.cfg, **sae.spec.latent_tensors(sae, idx))
    return sae.spec.latent_codes(view, sae_in, idx)


def latent_activations(sae: Any, x: torch.Tensor, latents: Sequence[int]) -> torch.Tensor:
    """The activations of a few latents, (..., len(latents)).

    Args:
        sae: a `steerpatch.sae.SAE`.
        x: activations (..., d_in), in the residual stream (the SAE normalises them itself).
        latents: latent indices.

    Returns:
        z restricted to `latents`, in the SAE's own units.
    """
    return latent_codes(sae, sae.sae_input(x), latents)


def decoder_directions(sae: Any, latents: Sequence[int]) -> torch.Tensor:
    """The SAE-space direction of one unit of each latent, (len(latents), d_in)."""
    rows = sae.W_dec[torch.tensor(list(latents), dtype=torch.long, device=sae.W_dec.device)]
    return rows / rows.norm(dim=-1, keepdim=True) if _rescaled(sae) else rows


def apply_edits(z: torch.Tensor, edits: Iterable[Edit]) -> torch.Tensor:
    """Apply the latent ops of `edits` to full SAE codes z (..., d_sae); direction ops are skipped.

    Args:
        z: latent activations.
        edits: the edits; each latent at most once.

    Returns:
        A new tensor z' (z itself is not modified).
    """
    out = z.clone()
    for edit in edits:
        op = get_op(edit.op)
        if op.kind == "latent":
            out[..., edit.latent] = op.rewrite(z[..., edit.latent], edit.value)
    return out


def edits_delta(sae: Any, x: torch.Tensor, edits: Sequence[Edit]) -> torch.Tensor | None:
    """The additive change edits make to activations x (..., d_in), or None for no edits.

    The change is made in the SAE's normalised space and mapped back to the residual stream by the
    normalisation's per-token factor.

    Args:
        sae: a `steerpatch.sae.SAE`.
        x: activations already restricted to the scoped tokens.
        edits: the edits.

    Returns:
        The change, in the SAE's dtype, broadcastable to x; None when there is nothing to add.
    """
    cols = EditColumns.from_edits(edits)
    if not cols.latents and not cols.add_latents:
        return None
    x_n, back = sae.normalize(x)
    delta: torch.Tensor | None = None
    if cols.latents:
        z = latent_codes(sae, x_n - sae.b_dec if sae.cfg.apply_b_dec_to_input else x_n, cols.latents)
        op_of = torch.tensor(cols.op_of, dtype=torch.long, device=z.device)
        values = torch.tensor(cols.values, dtype=z.dtype, device=z.device)
        delta = latent_change(z, cols.ops, op_of, values) @ decoder_directions(sae, cols.latents)
    if cols.add_latents:
        shift = direction_shift(sae.W_dec, cols.add_latents, cols.add_values)
        delta = shift if delta is None else delta + shift
    return None if delta is None else back.restore_delta(delta)


def check_latents(sae: Any, patch: Patch) -> None:
    """Refuse edits whose latent index the SAE does not have.

    Raises:
        PatchError: naming each out-of-range latent and the SAE's d_sae.
    """
    bad = [e.latent for e in patch.edits if e.latent >= sae.d_sae]
    if bad:
        raise PatchError(
            f"patch {patch.ref} edits latent(s) {bad} but the SAE has d_sae={sae.d_sae}; "
            f"use indices 0..{sae.d_sae - 1} or the SAE the patch was made for"
        )


def _edit_scope(x: torch.Tensor, tokens: str | Sequence[int], delta_fn: Any) -> torch.Tensor:
    where = token_index(tokens, x.shape[1])
    if tokens == "all":
        delta = delta_fn(x)
        return x if delta is None else x + delta.to(x.dtype)
    scoped = x[:, where]
    delta = delta_fn(scoped)
    if delta is None:
        return x
    edited = scoped + delta.to(x.dtype)
    if tokens == "cls":
        return torch.cat([edited, x[:, 1:]], dim=1)
    if tokens == "patches":
        return torch.cat([x[:, :1], edited], dim=1)
    out = x.clone()
    out[:, where] = edited
    return out


def steer_block_output(x: torch.Tensor, sae: Any, patches: Patch | Sequence[Patch]) -> torch.Tensor:
    """The residual stream after a block with patches applied, in order, on their scoped tokens.

    Each patch sees the output of the one before it. Tokens outside a patch's scope are untouched,
    and a patch with no edits returns its input unchanged.

    Args:
        x: block output, (batch, tokens, width), batch first.
        sae: the `steerpatch.sae.SAE` every patch's latents refer to.
        patches: one patch or a sequence.

    Returns:
        x' of the same shape and dtype.

    Raises:
        PatchError: for a latent >= d_sae or a token index past the last token.

    Example:
        >>> steered = steer_block_output(hidden, sae, patch)  # doctest: +SKIP
    """
    for patch in [patches] if isinstance(patches, Patch) else patches:
        if not patch.edits:
            continue
        check_latents(sae, patch)
        x = _edit_scope(x, patch.tokens, lambda xs, p=patch: edits_delta(sae, xs, p.edits))
    return x


def steering_delta(
    sae: Any, x: torch.Tensor, edits: Sequence[Edit], tokens: str | Sequence[int]
) -> torch.Tensor:
    """The additive change edits make to block output x (B, T, D): zero outside the token scope.

    Args:
        sae: the SAE.
        x: block output, batch first.
        edits: the edits.
        tokens: the token scope.

    Returns:
        A tensor shaped like x.
    """
    out = torch.zeros_like(x)
    where = token_index(tokens, x.shape[1])
    delta = edits_delta(sae, x[:, where], edits)
    if delta is not None:
        out[:, where] = delta.to(x.dtype).expand_as(out[:, where])
    return out
