"""SAE architectures by name: how codes are computed, the extra tensors and the config keys each one needs.

Adding an architecture is one `register_architecture` call; loading, saving, fingerprints, steering,
the ONNX graph and the round-trip tests pick it up from `SAE_REGISTRY`.

Every architecture encodes through one function, `encode(t, cfg, sae_in)`, where `sae_in` is the
(normalised, b_dec-shifted) input and `t` is anything with the architecture's tensors as attributes:
the `SAE` itself, or a view holding only some latents' columns (steering, the sparse ONNX graph).
Elementwise architectures compute latent i from column i alone, so such a view is exact for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from steerpatch.errors import SAEError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from steerpatch.sae.config import SAEConfig


@dataclass(frozen=True)
class Architecture:
    """One SAE architecture.

    Attributes:
        name: the `architecture` value in SAELens's cfg.json.
        activate: maps (t, pre-activations) to latent activations, for architectures whose
            pre-activations are `sae_in @ W_enc + b_enc`; None when `encoder` is given instead.
        extra_tensors: tensors beyond W_enc/b_enc/W_dec/b_dec, all of shape (d_sae,).
        cfg_keys: architecture-specific cfg.json keys; they enter the fingerprint.
        description: one line for `sae info` and error messages.
        required_cfg: cfg keys that must be set.
        elementwise: latent i depends on its own encoder column only, so steering and the ONNX graph
            may read just the edited columns (sparse compile); False means the full encoder runs.
        trainable: `fit_sae` can train it.
        uses_b_enc: the math reads b_enc; when False a b_enc in a file is accepted and ignored.
        encoder: (t, cfg, sae_in) -> codes, for architectures with their own encoder (gated).
    """

    name: str
    activate: Callable[[Any, torch.Tensor], torch.Tensor] | None
    extra_tensors: tuple[str, ...] = ()
    cfg_keys: tuple[str, ...] = ()
    description: str = ""
    required_cfg: tuple[str, ...] = field(default=())
    elementwise: bool = True
    trainable: bool = False
    uses_b_enc: bool = True
    encoder: Callable[[Any, Any, torch.Tensor], torch.Tensor] | None = None

    @property
    def tensor_names(self) -> tuple[str, ...]:
        """The tensors a file of this architecture must hold."""
        base = ("W_enc", "b_enc", "W_dec", "b_dec") if self.uses_b_enc else ("W_enc", "W_dec", "b_dec")
        return base + self.extra_tensors

    @property
    def compile_mode(self) -> tuple[str, str]:
        """("sparse" | "exact", why) for the ONNX graph."""
        if self.elementwise:
            return "sparse", f"{self.name} latents depend only on their own encoder column"
        return "exact", (
            f"{self.name} latents depend on the others (the k-th largest pre-activation), "
            "so the full encoder is kept"
        )

    def encode(self, t: Any, cfg: Any, sae_in: torch.Tensor) -> torch.Tensor:
        """Codes for `sae_in` (..., d_in): the architecture's encoder over `t`'s tensors.

        Args:
            t: an object with attributes W_enc, b_enc (if used), the extra tensors, and `dec_norms`
                when `cfg.rescale_acts_by_decoder_norm` is set.
            cfg: the SAE config (k, rescale flag).
            sae_in: the normalised input with b_dec already subtracted where the format does.
        """
        if self.encoder is not None:
            return self.encoder(t, cfg, sae_in)
        pre = sae_in @ t.W_enc + t.b_enc
        if getattr(cfg, "rescale_acts_by_decoder_norm", False):
            pre = pre * t.dec_norms
        assert self.activate is not None  # registration guarantees one of the two
        return self.activate(t, pre)

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
        ValueError: if the name is already registered or it has neither `activate` nor `encoder`
            (programming errors, not user input).
    """
    if arch.name in SAE_REGISTRY:
        raise ValueError(f"SAE architecture {arch.name!r} is already registered")
    if (arch.activate is None) == (arch.encoder is None):
        raise ValueError(f"SAE architecture {arch.name!r} needs exactly one of activate or encoder")
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


def trainable_architectures() -> tuple[str, ...]:
    """Names of the architectures `fit_sae` can train, sorted."""
    return tuple(sorted(name for name, arch in SAE_REGISTRY.items() if arch.trainable))


def _standard(t: Any, pre: torch.Tensor) -> torch.Tensor:
    return pre.relu()


def _topk(t: Any, pre: torch.Tensor, *, relu: bool = True) -> torch.Tensor:
    import torch

    values, indices = torch.topk(pre, k=int(t.cfg.k), dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu() if relu else values)


def _topk_raw(t: Any, pre: torch.Tensor) -> torch.Tensor:
    return _topk(t, pre, relu=False)


def _jumprelu(t: Any, pre: torch.Tensor) -> torch.Tensor:
    return pre.relu() * (pre > t.threshold)


def _gated(t: Any, cfg: Any, sae_in: torch.Tensor) -> torch.Tensor:
    # gated SAEs (Rajamanoharan et al. 2024): a gate path decides which latents fire, a magnitude
    # path sharing W_enc (rescaled per latent by exp(r_mag)) decides how strongly
    gate = sae_in @ t.W_enc + t.b_gate
    magnitude = sae_in @ (t.W_enc * t.r_mag.exp()) + t.b_mag
    return (gate > 0).to(magnitude.dtype) * magnitude.relu()


register_architecture(
    Architecture("standard", _standard, description="ReLU: z = relu(pre)", trainable=True)
)
register_architecture(
    Architecture(
        "topk",
        _topk,
        cfg_keys=("k", "rescale_acts_by_decoder_norm"),
        required_cfg=("k",),
        description="TopK: keep the k largest of relu(pre) per token",
        elementwise=False,
        trainable=True,
    )
)
register_architecture(
    Architecture(
        "jumprelu",
        _jumprelu,
        extra_tensors=("threshold",),
        description="JumpReLU: z = relu(pre) * 1[pre > threshold]",
        trainable=True,
    )
)
register_architecture(
    Architecture(
        "topk_raw",
        _topk_raw,
        cfg_keys=("k",),
        required_cfg=("k",),
        description="saev TopK: keep the k largest pre-activations as they are, negative ones included",
        elementwise=False,
    )
)
register_architecture(
    Architecture(
        "gated",
        None,
        extra_tensors=("b_gate", "r_mag", "b_mag"),
        description="Gated: z = 1[sae_in @ W_enc + b_gate > 0] * relu(sae_in @ (W_enc * exp(r_mag)) + b_mag)",
        uses_b_enc=False,
        encoder=_gated,
    )
)
