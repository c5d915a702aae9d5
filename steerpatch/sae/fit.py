"""The optimisation loop: SAELens losses on cached activations, unit-norm decoder rows, dead-latent resampling.

Activations are scaled so their mean norm is sqrt(d_in) while training (SAELens's
"expected_average_only_in"), and the scale is folded back afterwards so the saved SAE reads raw
activations and keeps unit-norm decoder rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from steerpatch.errors import SAEError
from steerpatch.sae.architectures import Training, get_architecture
from steerpatch.sae.config import SAEConfig
from steerpatch.sae.module import SAE


@dataclass
class FitSettings:
    """How to train one SAE. Defaults suit a narrow (width ~128) CLIP on CPU.

    Attributes:
        architecture: standard, topk or jumprelu.
        d_sae: number of latents.
        k: topk's latents per token.
        l1_coefficient: standard's sparsity weight on sum_i z_i * ||W_dec[i]||.
        l0_coefficient: jumprelu's weight on the (straight-through) count of active latents.
        jumprelu_bandwidth: width of the rectangle kernel for JumpReLU's threshold gradients.
        jumprelu_init_threshold: initial threshold (in normalised activation units).
        threshold_lr_multiplier: JumpReLU thresholds learn this many times faster than the weights.
        lr: Adam learning rate.
        batch_size: tokens per step.
        steps: optimisation steps.
        warmup_fraction: fraction of steps over which the sparsity coefficient ramps from 0.
        resample_every: steps between dead-latent resampling rounds (0 disables).
        resample_until: stop resampling after this fraction of steps, so the end is stable.
        seed: seeds initialisation and batch order.
    """

    architecture: str = "standard"
    d_sae: int = 2048
    k: int = 32
    l1_coefficient: float = 1.0
    l0_coefficient: float = 0.05
    jumprelu_bandwidth: float = 0.05
    jumprelu_init_threshold: float = 0.05
    threshold_lr_multiplier: float = 10.0
    lr: float = 2e-3
    batch_size: int = 1024
    steps: int = 3000
    warmup_fraction: float = 0.05
    resample_every: int = 250
    resample_until: float = 0.7
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitLog:
    """What happened during training (kept in the SAE's metadata)."""

    scale: float = 1.0
    resampled: list[int] = field(default_factory=list)
    final_mse: float = math.nan
    final_l0: float = math.nan


def _training(s: FitSettings) -> Training:
    training = get_architecture(s.architecture).training
    assert training is not None  # fit_sae refuses untrainable architectures first
    return training


def _init_params(
    d_in: int, s: FitSettings, mean: torch.Tensor, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    W_dec = torch.empty(s.d_sae, d_in)
    bound = math.sqrt(6.0 / d_in)
    W_dec.uniform_(-bound, bound, generator=generator)
    W_dec /= W_dec.norm(dim=-1, keepdim=True)
    params = {
        "W_dec": W_dec,
        "W_enc": W_dec.T.clone(),
        "b_enc": torch.zeros(s.d_sae),
        "b_dec": mean.clone(),
        **_training(s).extra_params(s),
    }
    return {name: t.requires_grad_(True) for name, t in params.items()}


def _forward(p: dict[str, torch.Tensor], x: torch.Tensor, s: FitSettings) -> tuple[torch.Tensor, ...]:
    """Latents, reconstruction and sparsity term for one batch, with the training-time surrogates."""
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    z, sparsity = _training(s).forward(p, pre, s)
    x_hat = z @ p["W_dec"] + p["b_dec"]
    return z, x_hat, sparsity


@torch.no_grad()
def _resample(
    p: dict[str, torch.Tensor],
    dead: torch.Tensor,
    x: torch.Tensor,
    s: FitSettings,
    opt: torch.optim.Adam,
    generator: torch.Generator,
) -> int:
    """Point dead latents at poorly reconstructed inputs (Anthropic's resampling, simplified)."""
    idx = dead.nonzero().flatten()
    if len(idx) == 0:
        return 0
    _, x_hat, _ = _forward(p, x, s)
    residual = x - x_hat
    weights = residual.pow(2).sum(-1)
    pick = torch.multinomial(weights + 1e-12, len(idx), replacement=len(idx) > len(x), generator=generator)
    directions = residual[pick]
    directions /= directions.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    alive = ~dead
    enc_norm = p["W_enc"][:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    p["W_dec"][idx] = directions
    p["W_enc"][:, idx] = directions.T * enc_norm * 0.2
    p["b_enc"][idx] = 0.0
    extra = _training(s).extra_params(s)
    for name, initial in extra.items():
        p[name][idx] = initial[idx]
    for name in ("W_dec", "W_enc", "b_enc", *extra):
        if p[name] not in opt.state:
            continue
        state = opt.state[p[name]]
        for key in ("exp_avg", "exp_avg_sq"):
            if name == "W_enc":
                state[key][:, idx] = 0.0
            else:
                state[key][idx] = 0.0
    return len(idx)


def fit_sae(
    acts: torch.Tensor,
    settings: FitSettings,
    *,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[SAE, FitLog]:
    """Train an SAE on activations with SAELens's loss: sum-over-width MSE plus the architecture's sparsity term.

    Args:
        acts: float tensor (n_tokens, d_in).
        settings: architecture, size and optimisation settings.
        metadata: recorded in the SAE's cfg.json (hook, model, training command...).
        progress: show a progress bar on stderr.

    Returns:
        The trained SAE (raw-activation units, unit-norm decoder rows) and a log.

    Raises:
        SAEError: for an unknown architecture, too few activations or a bad k.
    """
    from tqdm import tqdm

    if not get_architecture(settings.architecture).trainable:
        from steerpatch.sae.architectures import trainable_architectures

        raise SAEError(
            f"SAE architecture {settings.architecture!r} can be loaded but not trained here; "
            f"train one of {', '.join(trainable_architectures())}"
        )
    if acts.ndim != 2 or len(acts) < 2:
        raise SAEError(
            f"need a (tokens, width) activation matrix with at least 2 rows, got {tuple(acts.shape)}"
        )
    training = _training(settings)
    problem = training.problem(settings)
    if problem is not None:
        raise SAEError(problem)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    acts = acts.float()
    d_in = acts.shape[1]
    scale = float(math.sqrt(d_in) / acts.norm(dim=-1).mean().clamp_min(1e-12))
    x_all = acts * scale
    params = _init_params(d_in, settings, x_all.mean(0), generator)
    extra = list(training.extra_params(settings))
    groups: list[dict[str, Any]] = [{"params": [t for name, t in params.items() if name not in extra]}]
    if extra:
        # the L0 surrogate moves only the thresholds; a faster rate lets short CPU runs reach sparsity
        groups.append(
            {"params": [params[name] for name in extra], "lr": settings.lr * settings.threshold_lr_multiplier}
        )
    opt = torch.optim.Adam(groups, lr=settings.lr, betas=(0.9, 0.999))
    log = FitLog(scale=scale)
    n = len(x_all)
    fired = torch.zeros(settings.d_sae, dtype=torch.bool)
    coefficient = training.coefficient(settings)
    warmup = max(1, int(settings.warmup_fraction * settings.steps))
    order = torch.randperm(n, generator=generator)
    cursor = 0
    bar = tqdm(
        range(settings.steps), desc=f"training {settings.architecture} SAE", unit="step", disable=not progress
    )
    for step in bar:
        if cursor + settings.batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        x = x_all[order[cursor : cursor + settings.batch_size]]
        cursor += settings.batch_size
        z, x_hat, sparsity = _forward(params, x, settings)
        mse = (x_hat - x).pow(2).sum(dim=-1).mean()
        loss = mse + coefficient * min(1.0, (step + 1) / warmup) * sparsity
        opt.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            # decoder rows stay unit-norm: drop the gradient component that would change the norm
            W_dec = params["W_dec"]
            if W_dec.grad is not None:
                W_dec.grad -= (W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec
        opt.step()
        with torch.no_grad():
            params["W_dec"] /= params["W_dec"].norm(dim=-1, keepdim=True).clamp_min(1e-8)
            fired |= (z > 0).any(0)
        if settings.resample_every and (step + 1) % settings.resample_every == 0:
            if step + 1 <= settings.resample_until * settings.steps:
                sample = x_all[torch.randint(0, n, (min(n, 8192),), generator=generator)]
                log.resampled.append(_resample(params, ~fired, sample, settings, opt, generator))
            fired.zero_()
        if step % 50 == 0 or step == settings.steps - 1:
            l0 = float((z.detach() > 0).float().sum(-1).mean())
            log.final_mse, log.final_l0 = float(mse.detach()) / float(x.pow(2).sum(-1).mean()), l0
            bar.set_postfix(mse=f"{log.final_mse:.3f}", l0=f"{l0:.1f}")
    bar.close()
    return _fold(params, settings, d_in, scale, metadata or {}), log


@torch.no_grad()
def _fold(
    p: dict[str, torch.Tensor], s: FitSettings, d_in: int, scale: float, metadata: dict[str, Any]
) -> SAE:
    """Undo the training-time input scale: every latent is positively homogeneous, so divide biases by it."""
    training = _training(s)
    tensors = {
        "W_enc": p["W_enc"].detach().clone(),
        "b_enc": p["b_enc"].detach() / scale,
        "W_dec": p["W_dec"].detach().clone(),
        "b_dec": p["b_dec"].detach() / scale,
        **training.fold(p, scale),
    }
    fields: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": s.d_sae,
        "architecture": s.architecture,
        "metadata": metadata,
        **training.cfg_fields(s),
    }
    return SAE(SAEConfig(**fields), tensors)
