"""The SAE module: SAELens encode/decode math over W_enc (d_in, d_sae) and W_dec (d_sae, d_in)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

from steerpatch.errors import SAEError
from steerpatch.sae.architectures import Architecture, get_architecture
from steerpatch.sae.config import HookSpec, SAEConfig, hook_from_metadata, validate_config
from steerpatch.sae.normalization import Normalization, NormState, get_normalization


class SAE(torch.nn.Module):
    """A sparse autoencoder over the residual output of one CLIP vision block.

    x_n, back = normalize(x); sae_in = x_n - b_dec (if apply_b_dec_to_input);
    z = architecture.encode(sae_in) (relu(sae_in @ W_enc + b_enc) for standard);
    x_hat = back(z @ W_dec + b_dec). Parameters are held in float32 whatever the storage dtype.
    Architectures with extra tensors (jumprelu's `threshold`, gated's `b_gate`...) carry them as
    parameters too.

    Example:
        >>> cfg = SAEConfig(d_in=4, d_sae=8, architecture="standard")
        >>> sae = SAE(cfg)
        >>> sae.encode(torch.zeros(2, 4)).shape
        torch.Size([2, 8])
    """

    W_enc: torch.nn.Parameter
    b_enc: torch.nn.Parameter
    W_dec: torch.nn.Parameter
    b_dec: torch.nn.Parameter
    threshold: torch.nn.Parameter  # jumprelu only

    def __init__(
        self,
        cfg: SAEConfig,
        tensors: Mapping[str, torch.Tensor] | None = None,
        *,
        location: str | None = None,
    ) -> None:
        super().__init__()
        self.cfg = validate_config(cfg, source=location or "SAE config")
        self.spec: Architecture = get_architecture(cfg.architecture)
        self.location = location
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = torch.nn.Parameter(torch.zeros(d_in, d_sae))
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.W_dec = torch.nn.Parameter(torch.zeros(d_sae, d_in))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        for name in self.spec.extra_tensors:
            self.register_parameter(name, torch.nn.Parameter(torch.zeros(d_sae)))
        self._fingerprint_cache: tuple[Any, str] | None = None
        if tensors is not None:
            self.load_tensors(tensors, source=location or "tensors")
        # inference module: gradients may flow to activations, never to the weights by default
        self.requires_grad_(False)
        self.eval()

    # --- identity -------------------------------------------------------------------------------

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def architecture(self) -> str:
        return self.cfg.architecture

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return self.spec.tensor_names

    @property
    def norm(self) -> Normalization:
        """The registered normalisation step named by `cfg.normalize_activations`."""
        return get_normalization(self.cfg.normalize_activations)

    @property
    def dec_norms(self) -> torch.Tensor:
        """||W_dec[i]|| per latent (topk SAEs that rescale activations by decoder norm)."""
        return self.W_dec.norm(dim=-1)

    @property
    def hook(self) -> HookSpec | None:
        """The block and token scope recorded in metadata, or None when the file does not say."""
        return hook_from_metadata(self.cfg.metadata)

    def require_hook(self) -> HookSpec:
        """The hook, or an error saying how to record one.

        Raises:
            SAEError: when metadata names no block.
        """
        hook = self.hook
        if hook is None:
            raise SAEError(
                f"SAE {self.location or '(in memory)'} records no hook block; add metadata.block "
                "(and token_scope) to its cfg.json, or pass --block when loading it"
            )
        return hook

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex over the tensors (sorted names, float32 bytes) and the cfg keys that change the math."""
        key = tuple((t.data_ptr(), t._version) for t in self.state_tensors(detach=False).values())
        if self._fingerprint_cache is None or self._fingerprint_cache[0] != key:
            self._fingerprint_cache = (key, fingerprint_tensors(self.state_tensors(), self.math_config()))
        return self._fingerprint_cache[1]

    def math_config(self) -> dict[str, Any]:
        """The config values that change encode/decode: the architecture and its specific keys."""
        out: dict[str, Any] = {
            "architecture": self.architecture,
            "apply_b_dec_to_input": self.cfg.apply_b_dec_to_input,
        }
        if self.cfg.normalize_activations != "none":
            # absent when "none", so fingerprints of SAEs that predate normalisation do not change
            out["normalize_activations"] = self.cfg.normalize_activations
            out["norm_scaling_factor"] = self.cfg.norm_scaling_factor
        for key in self.spec.cfg_keys:
            out[key] = getattr(self.cfg, key)
        return out

    # --- tensors ----------------------------------------------------------------------------------

    def state_tensors(self, *, detach: bool = True) -> dict[str, torch.Tensor]:
        """The named weight tensors this architecture stores (W_enc, b_enc, W_dec, b_dec, extras)."""
        return {
            name: (getattr(self, name).detach() if detach else getattr(self, name))
            for name in self.tensor_names
        }

    @torch.no_grad()
    def load_tensors(self, tensors: Mapping[str, torch.Tensor], *, source: str) -> None:
        """Copy weights in after checking names, shapes and finiteness.

        Raises:
            SAEError: a missing or unexpected tensor, a shape that disagrees with the config, NaN/inf.
        """
        tensors = dict(tensors)
        if (
            "threshold" in self.spec.extra_tensors
            and "threshold" not in tensors
            and "log_threshold" in tensors
        ):
            # SAELens training checkpoints keep the JumpReLU threshold in log space
            tensors["threshold"] = tensors.pop("log_threshold").float().exp()
        missing = [n for n in self.tensor_names if n not in tensors]
        if missing:
            raise SAEError(
                f"{source} lacks tensor(s) {', '.join(missing)} needed by architecture {self.architecture!r}; "
                f"it has {', '.join(sorted(tensors)) or 'none'}"
            )
        if not self.spec.uses_b_enc:
            tensors.pop("b_enc", None)  # ViT-Prisma's gated SAEs store a b_enc their math never reads
        unexpected = sorted(set(tensors) - set(self.tensor_names))
        if unexpected:
            raise SAEError(
                f"{source} has tensor(s) {', '.join(unexpected)} that architecture {self.architecture!r} "
                f"does not use; check 'architecture' in cfg.json (known tensors: {', '.join(self.tensor_names)})"
            )
        for name in self.tensor_names:
            value = tensors[name]
            target = getattr(self, name)
            if tuple(value.shape) != tuple(target.shape):
                raise SAEError(
                    f"{source}: tensor {name} has shape {tuple(value.shape)} but cfg d_in={self.d_in}, "
                    f"d_sae={self.d_sae} needs {tuple(target.shape)}; fix d_in/d_sae in cfg.json"
                )
            value = value.detach().to(torch.float32)
            if not torch.isfinite(value).all():
                bad = int((~torch.isfinite(value)).sum())
                raise SAEError(
                    f"{source}: tensor {name} holds {bad} NaN or inf value(s); re-export finite weights"
                )
            target.copy_(value)

    # --- math -------------------------------------------------------------------------------------

    def normalize(self, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
        """x in the SAE's own space (its `normalize_activations`), and the map back."""
        return self.norm.normalize(self.cfg, x.to(self.W_enc.dtype))

    def sae_input(self, x: torch.Tensor) -> torch.Tensor:
        """What the encoder reads: normalised x minus b_dec where the format subtracts it."""
        x_n, _ = self.normalize(x)
        return x_n - self.b_dec if self.cfg.apply_b_dec_to_input else x_n

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """sae_input(x) @ W_enc + b_enc, times ||W_dec[i]|| for rescaled topk (not defined for gated)."""
        if self.spec.encoder is not None:
            raise SAEError(f"architecture {self.architecture!r} has no single pre-activation; use encode")
        pre = self.sae_input(x) @ self.W_enc + self.b_enc
        if self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.dec_norms
        return pre

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        """The architecture's nonlinearity (topk acts over the last dimension; not defined for gated)."""
        if self.spec.activate is None:
            raise SAEError(f"architecture {self.architecture!r} has no separate nonlinearity; use encode")
        return self.spec.activate(self, pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations z for activations x of shape (..., d_in)."""
        return self.spec.encode(self, self.cfg, self.sae_input(x))

    def decode(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction of x from codes z: z @ W_dec + b_dec, mapped back out of the SAE's space.

        Args:
            z: codes (..., d_sae).
            x: the activations z was encoded from; needed when the SAE normalises per token
                (layer_norm, constant_norm_rescale), whose way back depends on x's statistics.

        Raises:
            SAEError: when the normalisation needs x and it is not given.
        """
        if self.cfg.rescale_acts_by_decoder_norm:
            z = z / self.dec_norms
        y = z @ self.W_dec + self.b_dec
        if self.norm.per_token and x is None:
            raise SAEError(
                f"SAE {self.location or '(in memory)'} normalises with {self.norm.name!r}, so decoding "
                "needs the activations the codes came from; call decode(z, x)"
            )
        if x is None:
            return self.norm.normalize(self.cfg, torch.zeros_like(y))[1].restore(y)
        return self.normalize(x)[1].restore(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), x)

    def extra_repr(self) -> str:
        return f"architecture={self.architecture}, d_in={self.d_in}, d_sae={self.d_sae}"


def fingerprint_tensors(tensors: Mapping[str, torch.Tensor], math_config: Mapping[str, Any]) -> str:
    """SHA-256 hex over sorted tensor names, shapes and float32 little-endian bytes, then the math config.

    Independent of storage dtype widening (float16 -> float32 is exact), device and dict order.
    """
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name].detach().to("cpu", torch.float32).contiguous()
        digest.update(name.encode("utf-8"))
        digest.update(json.dumps(list(value.shape)).encode("utf-8"))
        digest.update(value.numpy().astype("<f4", copy=False).tobytes())
    digest.update(json.dumps(dict(math_config), sort_keys=True).encode("utf-8"))
    return digest.hexdigest()
