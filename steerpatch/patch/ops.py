"""The patch operations: one registry mapping an op name to what it does to a latent.

A *latent* op rewrites the SAE code z_i and the engine adds (z'_i - z_i) * W_dec[i] to the block output;
a *direction* op adds value * W_dec[i] directly and never needs the encoder.

An op is all the torch steering, the validation cache and the ONNX graph know about it: the torch
engine calls `rewrite` per edit with a float, the exported graph calls it once per op on all its
edited latents with a tensor of values (one per column). So a latent op's `fn` must broadcast a
value tensor against the last axis of z and use only traceable tensor operations; then a newly
registered op steers, validates and compiles with no other change. torch is imported inside the
functions, so the patch format stays light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

# An op's function takes activations z (..., k) and the value(s): a float, or a tensor of k values,
# one per column of z; it returns new activations shaped like z.
OpFn = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class Op:
    """One registered patch operation.

    Attributes:
        name: the `op` string used in patch files.
        kind: "latent" rewrites z_i (error term kept); "direction" adds value * W_dec[i] to the output.
        fn: for latent ops, maps (z, value) -> z' (see `OpFn`: traceable, broadcasting a value tensor
            over z's last axis); None for direction ops.
        summary: one line for help texts and the JSON Schema.
        identity: the value for which the op changes nothing (None when no value does for all z).
        max_abs: the largest |value| a patch may give; beyond it float32 activations overflow or
            dwarf the residual stream, so no useful edit lies there.
        editor_range: (low, high) the studio's controls accept: wide enough for any real edit,
            narrow enough to refuse a typo.
    """

    name: str
    kind: Literal["latent", "direction"]
    fn: OpFn | None
    summary: str
    identity: float | None
    max_abs: float = 1e4
    editor_range: tuple[float, float] = (-1000.0, 1000.0)

    def check_value(self, value: float) -> str | None:
        """Why `value` is outside this op's domain, or None when it is inside."""
        if not -self.max_abs <= value <= self.max_abs:
            return (
                f"{value:g} is out of range for op {self.name!r}; use a finite value in "
                f"[-{self.max_abs:g}, {self.max_abs:g}]"
            )
        return None

    def rewrite(self, z: Any, value: Any) -> Any:
        """z' for a latent op.

        Args:
            z: activations, (...) for one latent or (..., k) for k latents.
            value: the edit's value, or a tensor of k values (one per latent) for (..., k) activations.

        Raises:
            TypeError: for a direction op, which adds to the output instead (a programming error).
        """
        if self.fn is None:
            raise TypeError(f"op {self.name!r} adds a direction; it does not rewrite latent activations")
        return self.fn(z, value)


OPS: dict[str, Op] = {}


def register_op(op: Op) -> Op:
    """Add an operation to the registry.

    Args:
        op: the operation; its name must be new.

    Returns:
        The same op, so the call can be used inline.

    Raises:
        ValueError: if an op with that name is already registered (a programming error, not user input).
    """
    if op.name in OPS:
        raise ValueError(f"patch op {op.name!r} is already registered")
    OPS[op.name] = op
    return op


def _scale(z: Any, value: Any) -> Any:
    return z * value


def _clamp(z: Any, value: Any) -> Any:
    import torch

    return torch.zeros_like(z) + value  # value everywhere, also where z is NaN


def _clamp_if_active(z: Any, value: Any) -> Any:
    import torch

    return torch.where(z > 0, value, z)


register_op(Op("scale", "latent", _scale, "z_i <- value * z_i (0 suppresses the latent)", 1.0, 1e3, (0.0, 10.0)))
register_op(Op("clamp", "latent", _clamp, "z_i <- value on every scoped token", None, editor_range=(0.0, 1000.0)))
register_op(Op("clamp_if_active", "latent", _clamp_if_active, "z_i <- value where z_i > 0", None,
               editor_range=(0.0, 1000.0)))
register_op(Op("add", "direction", None, "x <- x + value * W_dec[i] (a steering vector)", 0.0))

OP_NAMES: tuple[str, ...] = tuple(OPS)


def get_op(name: str) -> Op:
    """Look up an operation by name.

    Raises:
        PatchError: naming the unknown op and listing the known ones.
    """
    if name not in OPS:
        from steerpatch.errors import PatchError

        raise PatchError(f"unknown patch op {name!r}; use one of: {', '.join(OPS)}")
    return OPS[name]
