"""Straight-through estimators for training JumpReLU SAEs (SAELens's JumpReLU and Step functions).

The forward passes are exact; the backward passes give the threshold a rectangle-kernel
pseudo-gradient of width `bandwidth`, since the true gradient of a step is zero almost everywhere.
"""

from __future__ import annotations

import torch


class JumpReLU(torch.autograd.Function):
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


class Step(torch.autograd.Function):
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
