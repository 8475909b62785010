"""The ``"triton"`` backend of the head's loss: the ``"torch"`` backend's losses with the
OT-consistency loss's 200 plain Sinkhorn iterations, and their exact gradient, fused into one
Triton launch each way.

In torch operations every Sinkhorn iteration is a handful of small launches (about 6 forward and
12 backward, so some 18k per ``refine`` call at the default 5 epochs), each doing little work on a
``[B, P, 2]`` kernel. Here one program per image runs the whole loop: per iteration one pass over
its ``P`` pixels in blocks (``u = a / (K v + eps)`` per pixel, ``K^T u`` reduced in the program),
the image's ``K`` (``P x 2``) staying in L2 between passes; backward is one more launch, the
reverse sweep of :func:`topoot_gpu.head._torch.plain_sinkhorn_backward` with ``grad_K`` accumulated
in place. Sums run in a fixed order within a program: deterministic, no atomics. The values are
those of the ``"torch"`` backend up to summation order.

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (set before this module is
imported), which is how CI tests it. Not picked by ``"auto"`` until measured on a GPU.
"""

from __future__ import annotations

import torch

from ._torch import contrastive, ot_consistency, plain_sinkhorn_function
from .config import HeadConfig
from .training import trainer

try:
    import triton
    import triton.language as tl
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("backend='triton' needs Triton: pip install 'topoot_gpu[triton]'") from e

#: Pixels per block of a pass (a power of two).
BLOCK = 2048
NUM_WARPS = 8


@triton.jit
def _load_pair(base, p, mask):
    """Both columns of rows ``p`` of a row-major ``[P, 2]`` array (0 outside ``mask``)."""
    return tl.load(base + 2 * p, mask=mask, other=0.0), tl.load(base + 2 * p + 1, mask=mask, other=0.0)


# a, b and eps come in a tensor of K's dtype (Triton passes Python floats as fp32 scalars); the
# pixel count and the iteration count are not specialised on.
@triton.jit(do_not_specialize=["P", "iters"])
def _plain_sinkhorn_forward_kernel(K_ptr, plan_ptr, hist_ptr, params_ptr, P, iters, BLOCK: tl.constexpr):
    img = tl.program_id(0).to(tl.int64)
    a = tl.load(params_ptr)
    b = tl.load(params_ptr + 1)
    eps = tl.load(params_ptr + 2)
    K_img = K_ptr + img * P * 2
    hist = hist_ptr + img * (iters + 1) * 2
    v0 = b
    v1 = b
    vp0 = b
    vp1 = b
    tl.store(hist, v0)
    tl.store(hist + 1, v1)
    t = 0
    while t < iters:
        s0 = a * 0
        s1 = a * 0
        start = 0
        while start < P:
            p = start + tl.arange(0, BLOCK)
            m = p < P
            k0, k1 = _load_pair(K_img, p, m)
            u = tl.where(m, a / (k0 * v0 + k1 * v1 + eps), 0.0)
            s0 += tl.sum(k0 * u, 0)
            s1 += tl.sum(k1 * u, 0)
            start += BLOCK
        vp0 = v0
        vp1 = v1
        v0 = b / (s0 + eps)
        v1 = b / (s1 + eps)
        tl.store(hist + 2 * (t + 1), v0)
        tl.store(hist + 2 * (t + 1) + 1, v1)
        t += 1
    # plan = u K v with u from the last iteration (v_{iters - 1}) and v = v_iters.
    start = 0
    while start < P:
        p = start + tl.arange(0, BLOCK)
        m = p < P
        k0, k1 = _load_pair(K_img, p, m)
        u = a / (k0 * vp0 + k1 * vp1 + eps)
        tl.store(plan_ptr + img * P * 2 + 2 * p, u * k0 * v0, mask=m)
        tl.store(plan_ptr + img * P * 2 + 2 * p + 1, u * k1 * v1, mask=m)
        start += BLOCK


@triton.jit(do_not_specialize=["P", "iters"])
def _plain_sinkhorn_backward_kernel(
    K_ptr, G_ptr, hist_ptr, grad_ptr, params_ptr, P, iters, BLOCK: tl.constexpr
):  # fmt: skip
    img = tl.program_id(0).to(tl.int64)
    a = tl.load(params_ptr)
    b = tl.load(params_ptr + 1)
    eps = tl.load(params_ptr + 2)
    K_img = K_ptr + img * P * 2
    G_img = G_ptr + img * P * 2
    grad = grad_ptr + img * P * 2
    hist = hist_ptr + img * (iters + 1) * 2
    vT0 = tl.load(hist + 2 * iters)
    vT1 = tl.load(hist + 2 * iters + 1)
    vq0 = tl.load(hist + 2 * iters - 2)
    vq1 = tl.load(hist + 2 * iters - 1)
    # The plan's own term: grad_K = G u vT, and v_bar = sum_p G K u.
    vb0 = a * 0
    vb1 = a * 0
    start = 0
    while start < P:
        p = start + tl.arange(0, BLOCK)
        m = p < P
        k0, k1 = _load_pair(K_img, p, m)
        g0, g1 = _load_pair(G_img, p, m)
        u = tl.where(m, a / (k0 * vq0 + k1 * vq1 + eps), 0.0)
        tl.store(grad + 2 * p, g0 * u * vT0, mask=m)
        tl.store(grad + 2 * p + 1, g1 * u * vT1, mask=m)
        vb0 += tl.sum(g0 * k0 * u, 0)
        vb1 += tl.sum(g1 * k1 * u, 0)
        start += BLOCK
    # The reverse sweep through r_t = K v_{t-1} + eps, u_t = a / r_t, v_t = b / (K^T u_t + eps).
    step = 0
    while step < iters:
        t = iters - step
        vt0 = tl.load(hist + 2 * t)
        vt1 = tl.load(hist + 2 * t + 1)
        vp0 = tl.load(hist + 2 * t - 2)
        vp1 = tl.load(hist + 2 * t - 1)
        sb0 = -vb0 * vt0 * vt0 / b
        sb1 = -vb1 * vt1 * vt1 / b
        first = step == 0
        nb0 = a * 0
        nb1 = a * 0
        start = 0
        while start < P:
            p = start + tl.arange(0, BLOCK)
            m = p < P
            k0, k1 = _load_pair(K_img, p, m)
            # The plan's u_bar = sum_j G K vT joins at the last iteration only.
            g0, g1 = _load_pair(G_img, p, m & first)
            r = k0 * vp0 + k1 * vp1 + eps
            u = a / r
            u_bar = (g0 * k0 * vT0 + g1 * k1 * vT1) + (k0 * sb0 + k1 * sb1)
            r_bar = tl.where(m, -u_bar * u / r, 0.0)
            nb0 += tl.sum(k0 * r_bar, 0)
            nb1 += tl.sum(k1 * r_bar, 0)
            d0, d1 = _load_pair(grad, p, m)
            tl.store(grad + 2 * p, d0 + (u * sb0 + r_bar * vp0), mask=m)
            tl.store(grad + 2 * p + 1, d1 + (u * sb1 + r_bar * vp1), mask=m)
            start += BLOCK
        vb0 = nb0
        vb1 = nb1
        step += 1


def _params(K: torch.Tensor, eps: float) -> torch.Tensor:
    P = K.shape[1]
    return torch.tensor([1.0 / P, 0.5, eps], dtype=K.dtype, device=K.device)


def plain_sinkhorn_forward(K: torch.Tensor, iters: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(plan [B, P, 2], v_hist [B, iters + 1, 2])`` as :func:`topoot_gpu.head._torch.plain_sinkhorn_forward`,
    one launch."""
    B, P, _ = K.shape
    plan = torch.full_like(K, float("nan"))  # poisoned: an unwritten entry shows
    hist = torch.full((B, iters + 1, 2), float("nan"), dtype=K.dtype, device=K.device)
    _plain_sinkhorn_forward_kernel[(B,)](K, plan, hist, _params(K, eps), P, iters, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return plan, hist


def plain_sinkhorn_backward(K: torch.Tensor, v_hist: torch.Tensor, G: torch.Tensor, eps: float) -> torch.Tensor:
    """``grad_K`` as :func:`topoot_gpu.head._torch.plain_sinkhorn_backward`, one launch."""
    B, P, _ = K.shape
    grad = torch.full_like(K, float("nan"))
    _plain_sinkhorn_backward_kernel[(B,)](
        K, G, v_hist, grad, _params(K, eps), P, v_hist.shape[1] - 1, BLOCK=BLOCK, num_warps=NUM_WARPS
    )
    return grad


#: The plain Sinkhorn with the fused launches (the autograd wiring is the torch backend's).
_PlainSinkhorn = plain_sinkhorn_function(plain_sinkhorn_forward, plain_sinkhorn_backward)


def head_loss(
    e: torch.Tensor, y: torch.Tensor, partner: torch.Tensor, weight: torch.Tensor, config: HeadConfig, num_threads: int
) -> torch.Tensor:
    """The backend's entry (:func:`topoot_gpu.head.api.train_heads`), as the ``"torch"`` backend's
    with the fused Sinkhorn."""
    loss = config.ot_weight * ot_consistency(e, y.to(e.dtype), config, sinkhorn=_PlainSinkhorn.apply)
    return loss + contrastive(e, partner, weight, config)


#: The backend's entry (:func:`topoot_gpu.head.api.train_heads`): the batched training with this loss.
train_heads = trainer(head_loss)
