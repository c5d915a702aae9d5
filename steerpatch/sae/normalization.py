"""Input normalisations an SAE may apply before encoding and undo after decoding, by name.

SAELens and ViT-Prisma store `normalize_activations` in the SAE config. Each value is one registered
step: `normalize(cfg, x)` returns the SAE-space input and the affine map back, y -> y * scale + shift,
with per-token `scale` and `shift`. Because the way back is affine in y, a change `d` made in the
SAE's space is a change `d * scale` in the residual stream: that is how steering stays exact (an
empty patch is the identity and the SAE's error term is kept) whatever the normalisation.

The functions are plain tensor math, so the ONNX graph runs the same code the eager path does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from steerpatch.errors import SAEError

if TYPE_CHECKING:  # pragma: no cover
    import torch

LAYER_NORM_EPS = 1e-5  # SAELens and ViT-Prisma add this to the standard deviation


@dataclass(frozen=True)
class NormState:
    """How to map SAE-space values back: y -> y * scale + shift (None means 1 and 0)."""

    scale: Any = None  # tensor (..., 1) or None
    shift: Any = None  # tensor (..., 1) or None

    def restore(self, y: torch.Tensor) -> torch.Tensor:
        """A reconstruction in the SAE's space mapped to the residual stream."""
        if self.scale is not None:
            y = y * self.scale
        return y if self.shift is None else y + self.shift

    def restore_delta(self, d: torch.Tensor) -> torch.Tensor:
        """A change made in the SAE's space, as a change to the residual stream (shift cancels)."""
        return d if self.scale is None else d * self.scale


@dataclass(frozen=True)
class Normalization:
    """One `normalize_activations` value.

    Attributes:
        name: the config value.
        normalize: (cfg, x) -> (SAE-space input, NormState).
        description: one line for `sae info` and the README.
        per_token: the map back depends on the token's own activations (not a constant).
    """

    name: str
    normalize: Callable[[Any, torch.Tensor], tuple[torch.Tensor, NormState]]
    description: str
    per_token: bool = True


NORMALIZATIONS: dict[str, Normalization] = {}


def register_normalization(norm: Normalization) -> Normalization:
    """Add a normalisation; a second one with the same name is refused.

    Raises:
        ValueError: if the name is already registered.
    """
    if norm.name in NORMALIZATIONS:
        raise ValueError(f"normalization {norm.name!r} is already registered")
    NORMALIZATIONS[norm.name] = norm
    return norm


def get_normalization(name: str, *, source: str = "SAE config") -> Normalization:
    """Look up a normalisation by name.

    Raises:
        SAEError: for an unknown name, listing the supported ones.
    """
    try:
        return NORMALIZATIONS[name]
    except KeyError:
        known = ", ".join(sorted(NORMALIZATIONS))
        raise SAEError(
            f"{source}: normalize_activations={name!r} is not supported; use one of {known}"
        ) from None


def _none(cfg: Any, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
    return x, NormState()


def _expected_average(cfg: Any, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
    # one dataset-wide factor (sqrt(d_in) / mean norm); without a recorded factor SAELens runs it as
    # the identity (load_from_disk does not fold anything), and so do we
    factor = cfg.norm_scaling_factor
    if factor is None:
        return x, NormState()
    return x * factor, NormState(scale=1.0 / factor)


def _constant_norm_rescale(cfg: Any, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
    coeff = (cfg.d_in**0.5) / x.norm(dim=-1, keepdim=True)
    return x * coeff, NormState(scale=1.0 / coeff)


def _layer_norm(cfg: Any, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
    mu = x.mean(dim=-1, keepdim=True)
    centred = x - mu
    # unbiased standard deviation, as torch.Tensor.std computes it in SAELens and ViT-Prisma; written
    # out so the ONNX export needs no std op
    std = (centred.pow(2).sum(dim=-1, keepdim=True) / (x.shape[-1] - 1)).sqrt()
    return centred / (std + LAYER_NORM_EPS), NormState(scale=std, shift=mu)


register_normalization(Normalization("none", _none, "no normalisation", per_token=False))
register_normalization(
    Normalization(
        "expected_average_only_in",
        _expected_average,
        "x * s with a dataset-wide s (cfg norm_scaling_factor or activation_scaler.json); out / s",
        per_token=False,
    )
)
register_normalization(
    Normalization(
        "constant_norm_rescale",
        _constant_norm_rescale,
        "x * sqrt(d_in) / ||x|| per token; out divided by the same factor",
    )
)
register_normalization(
    Normalization(
        "layer_norm",
        _layer_norm,
        "(x - mean) / (std + 1e-5) per token (unbiased std); out * std + mean",
    )
)
