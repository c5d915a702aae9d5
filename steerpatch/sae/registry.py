"""SAE architectures by name: the nonlinearity, the extra tensors and the config keys each one needs.

Adding an architecture is one `register_architecture` call; loading, saving, fingerprints and the
round-trip tests pick it up from `SAE_REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from steerpatch.errors import SAEError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from steerpatch.sae.config import SAEConfig
    from steerpatch.sae.module import SAE


@dataclass(frozen=True)
class Architecture:
    """One SAE architecture.

    Attributes:
        name: the `architecture` value in SAELens's cfg.json.
        activate: maps (sae, pre-activations) to latent activations, SAELens math.
        extra_tensors: tensors beyond W_enc/b_enc/W_dec/b_dec, all of shape (d_sae,).
        cfg_keys: architecture-specific cfg.json keys; they enter the fingerprint.
        description: one line for `sae info` and error messages.
    """

    name: str
    activate: Callable[[SAE, torch.Tensor], torch.Tensor]
    extra_tensors: tuple[str, ...] = ()
    cfg_keys: tuple[str, ...] = ()
    description: str = ""
    required_cfg: tuple[str, ...] = field(default=())

    def check_config(self, cfg: SAEConfig, *, source: str) -> None:
        """Refuse a config that lacks what this architecture needs.

        Raises:
            SAEError: naming the missing or invalid key.
        """
        for key in self.required_cfg:
            if getattr(cfg, key) is None:
                raise SAEError(f"{source}: architecture {self.name!r} needs '{key}' in cfg.json; add it")
        if "k" in self.required_cfg and not 0 < cfg.k <= cfg.d_sae:  # type: ignore[operator]
            raise SAEError(
                f"{source}: k={cfg.k} must be between 1 and d_sae={cfg.d_sae}; fix 'k' in cfg.json"
            )
        if cfg.rescale_acts_by_decoder_norm and "rescale_acts_by_decoder_norm" not in self.cfg_keys:
            raise SAEError(
                f"{source}: rescale_acts_by_decoder_norm=true is only defined for topk, not {self.name!r}; "
                "set it to false"
            )


SAE_REGISTRY: dict[str, Architecture] = {}


def register_architecture(arch: Architecture) -> Architecture:
    """Add an architecture; a second one with the same name is refused.

    Raises:
        ValueError: if the name is already registered (a programming error, not user input).
    """
    if arch.name in SAE_REGISTRY:
        raise ValueError(f"SAE architecture {arch.name!r} is already registered")
    SAE_REGISTRY[arch.name] = arch
    return arch


def get_architecture(name: str) -> Architecture:
    """Look up an architecture by name.

    Raises:
        SAEError: for an unknown name, listing the known ones.
    """
    try:
        return SAE_REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(SAE_REGISTRY))
        raise SAEError(f"unknown SAE architecture {name!r}; known architectures: {known}") from None


def _standard(sae: SAE, pre: torch.Tensor) -> torch.Tensor:
    return pre.relu()


def _topk(sae: SAE, pre: torch.Tensor) -> torch.Tensor:
    import torch

    values, indices = torch.topk(pre, k=int(sae.cfg.k), dim=-1, sorted=False)  # type: ignore[arg-type]
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


def _jumprelu(sae: SAE, pre: torch.Tensor) -> torch.Tensor:
    return pre.relu() * (pre > sae.threshold)


register_architecture(Architecture("standard", _standard, description="ReLU: z = relu(pre)"))
register_architecture(
    Architecture(
        "topk",
        _topk,
        cfg_keys=("k", "rescale_acts_by_decoder_norm"),
        required_cfg=("k",),
        description="TopK: keep the k largest of relu(pre) per token",
    )
)
register_architecture(
    Architecture(
        "jumprelu",
        _jumprelu,
        extra_tensors=("threshold",),
        description="JumpReLU: z = relu(pre) * 1[pre > threshold]",
    )
)
