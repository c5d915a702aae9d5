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
from steerpatch.sae.config import SAEConfig
from steerpatch.sae.module import SAE
from steerpatch.sae.registry import get_architecture


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


class _JumpReLU(torch.autograd.Function):
    """z = pre * 1[pre > theta]; theta gets a rectangle-kernel pseudo-gradient (SAELens JumpReLU)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((pre - threshold).abs() < eps / 2).to(pre.dtype)
        grad_pre = (pre > threshold) * grad
        grad_threshold = (-(threshold / eps) * kernel * grad).sum(dim=0)
        return grad_pre, grad_threshold, None


class _Step(torch.autograd.Function):
    """1[pre > theta] with a pseudo-gradient for theta only (SAELens Step, for the L0 penalty)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        kernel = ((pre - threshold).abs() < eps / 2).to(pre.dtype)
        return torch.zeros_like(pre), (-(1.0 / eps) * kernel * grad).sum(dim=0), None


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
    }
    if s.architecture == "jumprelu":
        params["log_threshold"] = torch.full((s.d_sae,), math.log(s.jumprelu_init_threshold))
    return {name: t.requires_grad_(True) for name, t in params.items()}


def _forward(p: dict[str, torch.Tensor], x: torch.Tensor, s: FitSettings) -> tuple[torch.Tensor, ...]:
    """Latents, reconstruction and sparsity term for one batch, with the training-time surrogates."""
    pre = (x - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
    norms = p["W_dec"].norm(dim=-1)
    if s.architecture == "standard":
        z = pre.relu()
        sparsity = (z * norms).sum(dim=-1).mean()
    elif s.architecture == "topk":
        values, indices = torch.topk(pre, k=s.k, dim=-1, sorted=False)
        z = torch.zeros_like(pre).scatter(-1, indices, values.relu())
        sparsity = torch.zeros(())
    else:
        threshold = p["log_threshold"].exp()
        z = _JumpReLU.apply(pre, threshold, s.jumprelu_bandwidth)
        sparsity = _Step.apply(pre, threshold, s.jumprelu_bandwidth).sum(dim=-1).mean()
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
    if "log_threshold" in p:
        p["log_threshold"][idx] = math.log(s.jumprelu_init_threshold)
    for name in ("W_dec", "W_enc", "b_enc", "log_threshold"):
        if name not in p or p[name] not in opt.state:
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
        from steerpatch.sae.registry import trainable_architectures

        raise SAEError(
            f"SAE architecture {settings.architecture!r} can be loaded but not trained here; "
            f"train one of {', '.join(trainable_architectures())}"
        )
    if acts.ndim != 2 or len(acts) < 2:
        raise SAEError(
            f"need a (tokens, width) activation matrix with at least 2 rows, got {tuple(acts.shape)}"
        )
    if settings.architecture == "topk" and not 0 < settings.k <= settings.d_sae:
        raise SAEError(f"k={settings.k} must be between 1 and the number of latents ({settings.d_sae})")
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    acts = acts.float()
    d_in = acts.shape[1]
    scale = float(math.sqrt(d_in) / acts.norm(dim=-1).mean().clamp_min(1e-12))
    x_all = acts * scale
    params = _init_params(d_in, settings, x_all.mean(0), generator)
    groups: list[dict[str, Any]] = [{"params": [t for name, t in params.items() if name != "log_threshold"]}]
    if "log_threshold" in params:
        # the L0 surrogate moves only the thresholds; a faster rate lets short CPU runs reach sparsity
        groups.append(
            {"params": [params["log_threshold"]], "lr": settings.lr * settings.threshold_lr_multiplier}
        )
    opt = torch.optim.Adam(groups, lr=settings.lr, betas=(0.9, 0.999))
    log = FitLog(scale=scale)
    n = len(x_all)
    fired = torch.zeros(settings.d_sae, dtype=torch.bool)
    coefficient = settings.l1_coefficient if settings.architecture == "standard" else settings.l0_coefficient
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
    tensors = {
        "W_enc": p["W_enc"].detach().clone(),
        "b_enc": p["b_enc"].detach() / scale,
        "W_dec": p["W_dec"].detach().clone(),
        "b_dec": p["b_dec"].detach() / scale,
    }
    if s.architecture == "jumprelu":
        tensors["threshold"] = p["log_threshold"].detach().exp() / scale
    fields: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": s.d_sae,
        "architecture": s.architecture,
        "metadata": metadata,
    }
    if s.architecture == "topk":
        fields["k"] = s.k
    return SAE(SAEConfig(**fields), tensors)
