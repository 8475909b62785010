"""The ``"torch"`` backend of the head's loss: SPEC 5's two losses in torch operations, any device,
each with its exact gradient written out (no autograd graph through the 200 Sinkhorn iterations)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .config import HeadConfig
from .training import trainer


def head_loss(
    e: torch.Tensor, y: torch.Tensor, partner: torch.Tensor, weight: torch.Tensor, config: HeadConfig, num_threads: int
) -> torch.Tensor:
    """The backend's entry (:func:`topoot_gpu.head.api.train_heads`): ``ot_weight * L_OT +
    L_contrastive`` per image, ``[B]``, differentiable in ``e [B, P, E]`` (``y`` bool ``[B, P]``,
    ``partner`` and ``weight`` ``[B, 2P]``; ``num_threads`` is torch's own setting)."""
    loss = config.ot_weight * ot_consistency(e, y.to(e.dtype), config)
    return loss + contrastive(e, partner, weight, config)


def ot_consistency(e: torch.Tensor, y: torch.Tensor, config: HeadConfig, sinkhorn=None) -> torch.Tensor:
    """SPEC 5's OT-consistency loss per image, ``e [B, P, E]``, ``y [B, P]`` in {0, 1} (both present).
    ``sinkhorn(K, iters, eps)``: the plain Sinkhorn's plan, differentiable in ``K`` (default: this
    module's, in torch operations)."""
    B, P, _ = e.shape
    eps = config.ot_eps
    n = F.normalize(e, dim=2)
    onehot = torch.stack([1 - y, y], 1)  # [B, 2, P]
    protos = F.normalize(torch.bmm(onehot, n) / onehot.sum(2, keepdim=True), dim=2)
    cos = torch.bmm(n, protos.transpose(1, 2))  # [B, P, 2]
    m_prot = (cos.clamp(-1, 1) + 1) * 0.5
    m_cls = onehot.transpose(1, 2)
    K = torch.exp(-(1 - cos).clamp_min(0) / config.ot_reg).clamp_min(eps)
    plan = (sinkhorn or _PlainSinkhorn.apply)(K, config.ot_iter, eps)
    g = plan / (plan.sum(2, keepdim=True) + eps)
    entropy = -(g * g.clamp_min(eps).log()).sum(2, keepdim=True)
    w = (1 - entropy / math.log(config.entropy_base)).clamp_min(0) * g
    return (w * (m_prot - m_cls).abs()).sum((1, 2)) / (2 * P + eps)


def plain_sinkhorn_function(forward, backward) -> type[torch.autograd.Function]:
    """The autograd function of ``plan = u K v`` after ``iters`` plain (fixed-count, no log domain,
    no stopping rule) Sinkhorn iterations on ``K [B, P, 2]`` (SPEC 5), with the exact gradient
    through the iterations: ``forward(K, iters, eps) -> (plan, v_hist)`` and ``backward(K, v_hist,
    grad_plan, eps) -> grad_K``. Only the ``v_t`` (two numbers per iteration) are kept; ``u_t`` is
    recomputed on the way back."""

    class PlainSinkhorn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, K: torch.Tensor, iters: int, eps: float):
            K = K.detach().contiguous()
            plan, v_hist = forward(K, iters, eps)
            ctx.save_for_backward(K, v_hist)
            ctx.eps = eps
            return plan

        @staticmethod
        def backward(ctx, grad_plan: torch.Tensor):
            K, v_hist = ctx.saved_tensors
            return backward(K, v_hist, grad_plan.contiguous(), ctx.eps), None, None

    return PlainSinkhorn


def plain_sinkhorn_forward(K: torch.Tensor, iters: int, eps: float):
    B, P, _ = K.shape
    a, b = 1.0 / P, 0.5
    v = torch.full((B, 2), b, dtype=K.dtype, device=K.device)
    hist = [v]
    for _ in range(iters):
        u = a / (torch.einsum("bpj,bj->bp", K, v) + eps)
        v = b / (torch.einsum("bpj,bp->bj", K, u) + eps)
        hist.append(v)
    u = a / (torch.einsum("bpj,bj->bp", K, hist[-2]) + eps)
    return u[:, :, None] * K * v[:, None, :], torch.stack(hist, 1)


def plain_sinkhorn_backward(K: torch.Tensor, v_hist: torch.Tensor, G: torch.Tensor, eps: float) -> torch.Tensor:
    """Reverse mode through ``r_t = K v_{t-1} + eps, u_t = a / r_t, v_t = b / (K^T u_t + eps)``."""
    B, P, _ = K.shape
    a, b = 1.0 / P, 0.5
    iters = v_hist.shape[1] - 1
    vT = v_hist[:, iters]
    u = a / (torch.einsum("bpj,bj->bp", K, v_hist[:, iters - 1]) + eps)
    grad_K = G * u[:, :, None] * vT[:, None, :]
    u_bar = (G * K * vT[:, None, :]).sum(2)
    v_bar = (G * K * u[:, :, None]).sum(1)
    for t in range(iters, 0, -1):
        vt, vp = v_hist[:, t], v_hist[:, t - 1]
        r = torch.einsum("bpj,bj->bp", K, vp) + eps
        u = a / r
        s_bar = -v_bar * vt * vt / b
        u_bar = (u_bar if t == iters else 0) + torch.einsum("bpj,bj->bp", K, s_bar)
        r_bar = -u_bar * u / r
        v_bar = torch.einsum("bpj,bp->bj", K, r_bar)
        grad_K = grad_K + u[:, :, None] * s_bar[:, None, :] + r_bar[:, :, None] * vp[:, None, :]
    return grad_K


#: This backend's plain Sinkhorn: batched torch operations, any device.
_PlainSinkhorn = plain_sinkhorn_function(plain_sinkhorn_forward, plain_sinkhorn_backward)


def contrastive(e: torch.Tensor, partner: torch.Tensor, weight: torch.Tensor, config: HeadConfig) -> torch.Tensor:
    """SPEC 5's contrastive loss per image, ``[B]``, differentiable in ``e`` (see :class:`_Contrastive`)."""
    return _Contrastive.apply(e, partner, weight, config.margin, config.pair_eps)


class _Contrastive(torch.autograd.Function):
    """``sum_k w_k ((1 - y_k) d_k^2 + y_k max(0, margin - d_k)^2)`` per image, over pairs
    ``k = (k // 2, partner[k])`` with ``y_k = k % 2`` and ``d_k = |e_i - e_j + pair_eps|``, in torch
    ops (any device). The gradient is computed with the loss and scaled in backward; the partners'
    share is scattered with ``index_put_(accumulate=True)``, which is sort-based and deterministic
    on CUDA (autograd's gather backward uses atomics there)."""

    @staticmethod
    def forward(ctx, e, partner, weight, margin: float, pair_eps: float):
        loss, grad = _contrastive_torch(e.detach(), partner, weight, margin, pair_eps)
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        return grad_loss[:, None, None] * grad, None, None, None, None


def _contrastive_torch(e, partner, weight, margin: float, pair_eps: float):
    B, P, E = e.shape
    first = torch.arange(P, device=e.device).repeat_interleave(2)
    other = torch.gather(e, 1, partner[:, :, None].expand(B, 2 * P, E))
    diff = e[:, first] - other + pair_eps
    sq = (diff * diff).sum(2)
    y = (torch.arange(2 * P, device=e.device) % 2).bool()
    d = torch.sqrt(sq)
    h = (margin - d).clamp_min(0)
    loss = (weight * torch.where(y, h * h, sq)).sum(1)
    safe_d = torch.where(d > 0, d, torch.ones_like(d))
    coef = torch.where(y, torch.where((h > 0) & (d > 0), -2 * weight * h / safe_d, torch.zeros_like(d)), 2 * weight)
    g = coef[:, :, None] * diff
    grad = g.view(B, P, 2, E).sum(2)
    flat = (partner + torch.arange(B, device=e.device)[:, None] * P).reshape(-1)
    grad.view(B * P, E).index_put_((flat,), -g.reshape(B * 2 * P, E), accumulate=True)
    return loss, grad


#: The backend's entry (:func:`topoot_gpu.head.api.train_heads`): the batched training with this loss.
train_heads = trainer(head_loss)
