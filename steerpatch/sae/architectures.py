"""SAE architectures by name: how codes are computed and trained, the extra tensors and config keys each needs.

Adding an architecture is one `register_architecture` call; loading, saving, fingerprints, steering,
training, the ONNX graph and the round-trip tests pick it up from `ARCHITECTURES`.

Every architecture encodes through one function, `encode(t, cfg, sae_in)`, where `sae_in` is the
(normalised, b_dec-shifted) input and `t` is anything with the architecture's tensors as attributes:
the `SAE` itself, or a view holding only some latents' columns (`latent_tensors`, read by the torch
steering and the ONNX graph alike). Elementwise architectures compute latent i from column i alone,
so such a view is exact for them.

This module imports no torch at import time (the CLI lists architectures without loading it) and
nothing else from `steerpatch.sae`, so config, module and training all depend on it one way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any

from steerpatch.errors import SAEError

if TYPE_CHECKING:  # pragma: no cover
    import torch

# training hooks take the parameter dict and `steerpatch.sae.fit.FitSettings` (typed Any: fit imports us)
Params = dict[str, Any]


def _no_extra(settings: Any) -> dict[str, Any]:
    return {}


def _no_fold(params: Params, scale: float) -> dict[str, Any]:
    return {}


def _no_problem(settings: Any) -> str | None:
    return None


@dataclass(frozen=True)
class Training:
    """How `fit_sae` trains one architecture (SAELens's training-time forward and sparsity penalty).

    Attributes:
        forward: (params, pre-activations, settings) -> (codes, sparsity term before its
            coefficient); the codes may use a straight-through estimator.
        coefficient: settings -> the weight of the sparsity term.
        extra_params: settings -> extra trainable (d_sae,) tensors (jumprelu's log threshold); they
            learn `threshold_lr_multiplier` times faster and return to these values on resampling.
        fold: (params, input scale) -> the extra tensors to save, in raw activation units.
        cfg_fields: settings -> the architecture's `SAEConfig` fields (topk's k).
        problem: settings -> why they cannot train this architecture, or None.
    """

    forward: Callable[[Params, torch.Tensor, Any], tuple[torch.Tensor, torch.Tensor]]
    coefficient: Callable[[Any], float]
    extra_params: Callable[[Any], dict[str, torch.Tensor]] = _no_extra
    fold: Callable[[Params, float], dict[str, torch.Tensor]] = _no_fold
    cfg_fields: Callable[[Any], dict[str, Any]] = _no_extra
    problem: Callable[[Any], str | None] = _no_problem


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
        training: how `fit_sae` trains it; None when it can be loaded but not trained here.
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
    training: Training | None = None
    uses_b_enc: bool = True
    encoder: Callable[[Any, Any, torch.Tensor], torch.Tensor] | None = None

    @property
    def trainable(self) -> bool:
        """Whether `fit_sae` can train it."""
        return self.training is not None

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

    def latent_tensors(self, t: Any, idx: Any) -> dict[str, Any]:
        """The tensors `encode` reads for the codes of latents `idx`, by name.

        Elementwise architectures need only those latents' columns (the sparse ONNX graph carries
        just these); the others need every latent, whatever `idx` is.

        Args:
            t: the `SAE` (its tensors, `cfg` and `dec_norms`).
            idx: an int64 tensor of latent indices.
        """
        cols = idx if self.elementwise else slice(None)
        out = {"W_enc": t.W_enc[:, cols]}
        if self.uses_b_enc:
            out["b_enc"] = t.b_enc[cols]
        for name in self.extra_tensors:
            out[name] = getattr(t, name)[cols]
        if getattr(t.cfg, "rescale_acts_by_decoder_norm", False):
            out["dec_norms"] = t.dec_norms[cols]
        return out

    def latent_codes(self, view: Any, sae_in: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Codes of latents `idx`, (..., len(idx)), from a view holding `latent_tensors` and `cfg`.

        Args:
            view: an object with the tensors `latent_tensors` returned as attributes, plus `cfg`.
            sae_in: the encoder's input (normalised, b_dec already handled).
            idx: the same latent indices the view was made for.
        """
        z = self.encode(view, view.cfg, sae_in)
        return z if self.elementwise else z.index_select(-1, idx)

    def check_config(self, cfg: Any, *, source: str) -> None:
        """Refuse a config (an `SAEConfig`) that lacks what this architecture needs.

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


ARCHITECTURES: dict[str, Architecture] = {}
SAE_REGISTRY = ARCHITECTURES  # the name `steerpatch.sae` has always exported


def register_architecture(arch: Architecture) -> Architecture:
    """Add an architecture; a second one with the same name is refused.

    Raises:
        ValueError: if the name is already registered or it has neither `activate` nor `encoder`
            (programming errors, not user input).
    """
    if arch.name in ARCHITECTURES:
        raise ValueError(f"SAE architecture {arch.name!r} is already registered")
    if (arch.activate is None) == (arch.encoder is None):
        raise ValueError(f"SAE architecture {arch.name!r} needs exactly one of activate or encoder")
    ARCHITECTURES[arch.name] = arch
    return arch


def get_architecture(name: str) -> Architecture:
    """Look up an architecture by name.

    Raises:
        SAEError: for an unknown name, listing the known ones.
    """
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise SAEError(f"unknown SAE architecture {name!r}; known architectures: {known}") from None


def trainable_architectures() -> tuple[str, ...]:
    """Names of the architectures `fit_sae` can train, sorted."""
    return tuple(sorted(name for name, arch in ARCHITECTURES.items() if arch.trainable))


def _standard(t: Any, pre: torch.Tensor) -> torch.Tensor:
    return pre.relu()


def _topk_codes(pre: torch.Tensor, k: int, *, relu: bool = True) -> torch.Tensor:
    import torch

    values, indices = torch.topk(pre, k=k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, values.relu() if relu else values)


def _topk(t: Any, pre: torch.Tensor) -> torch.Tensor:
    return _topk_codes(pre, int(t.cfg.k))


def _topk_raw(t: Any, pre: torch.Tensor) -> torch.Tensor:
    return _topk_codes(pre, int(t.cfg.k), relu=False)


def _jumprelu(t: Any, pre: torch.Tensor) -> torch.Tensor:
    return pre.relu() * (pre > t.threshold)


def _gated(t: Any, cfg: Any, sae_in: torch.Tensor) -> torch.Tensor:
    # gated SAEs (Rajamanoharan et al. 2024): a gate path decides which latents fire, a magnitude
    # path sharing W_enc (rescaled per latent by exp(r_mag)) decides how strongly
    gate = sae_in @ t.W_enc + t.b_gate
    magnitude = sae_in @ (t.W_enc * t.r_mag.exp()) + t.b_mag
    return (gate > 0).to(magnitude.dtype) * magnitude.relu()


# --- training hooks (SAELens's losses) -----------------------------------------------------------


def _train_standard(p: Params, pre: torch.Tensor, s: Any) -> tuple[torch.Tensor, torch.Tensor]:
    z = pre.relu()
    return z, (z * p["W_dec"].norm(dim=-1)).sum(dim=-1).mean()  # L1 weighted by decoder norms


def _train_topk(p: Params, pre: torch.Tensor, s: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return _topk_codes(pre, s.k), pre.new_zeros(())  # k alone sets the sparsity


def _topk_problem(s: Any) -> str | None:
    if not 0 < s.k <= s.d_sae:
        return f"k={s.k} must be between 1 and the number of latents ({s.d_sae})"
    return None


def _train_jumprelu(p: Params, pre: torch.Tensor, s: Any) -> tuple[torch.Tensor, torch.Tensor]:
    from steerpatch.sae.surrogates import JumpReLU, Step

    threshold = p["log_threshold"].exp()
    z = JumpReLU.apply(pre, threshold, s.jumprelu_bandwidth)
    return z, Step.apply(pre, threshold, s.jumprelu_bandwidth).sum(dim=-1).mean()  # straight-through L0


def _jumprelu_params(s: Any) -> dict[str, torch.Tensor]:
    import torch

    return {"log_threshold": torch.full((s.d_sae,), math.log(s.jumprelu_init_threshold))}


def _jumprelu_fold(p: Params, scale: float) -> dict[str, torch.Tensor]:
    # a threshold is in activation units, so it scales like the biases
    return {"threshold": p["log_threshold"].detach().exp() / scale}


register_architecture(
    Architecture(
        "standard",
        _standard,
        description="ReLU: z = relu(pre)",
        training=Training(_train_standard, attrgetter("l1_coefficient")),
    )
)
register_architecture(
    Architecture(
        "topk",
        _topk,
        cfg_keys=("k", "rescale_acts_by_decoder_norm"),
        required_cfg=("k",),
        description="TopK: keep the k largest of relu(pre) per token",
        elementwise=False,
        training=Training(
            _train_topk, attrgetter("l0_coefficient"), cfg_fields=lambda s: {"k": s.k}, problem=_topk_problem
        ),
    )
)
register_architecture(
    Architecture(
        "jumprelu",
        _jumprelu,
        extra_tensors=("threshold",),
        description="JumpReLU: z = relu(pre) * 1[pre > threshold]",
        training=Training(
            _train_jumprelu, attrgetter("l0_coefficient"), extra_params=_jumprelu_params, fold=_jumprelu_fold
        ),
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
