"""The head: test-time training of one small MLP per image on its pseudo-label (SPEC 5), batched.

For ``B`` images at once: the heads' parameters are stacked (``[B, in, out]``) and applied with
batched matrix products, Adam runs on the stacks (it is elementwise, so this is Adam on each head),
and each epoch is one forward and one backward pass over all pixels of all images:

* embeddings ``e = W3 gelu(W2 gelu(W1 x + b1) + b2) + b3`` of every pixel, once per epoch (the
  released code evaluates the head again on both pixels of every pair: ``4P`` extra rows);
* when the features come at the backbone's resolution ``h x w < H x W``, the first layer runs
  there and its output is resized instead: a linear map commutes with bilinear interpolation
  (whose weights sum to one), so this is the same function, computed on ``h w`` rows instead of
  ``H W``;
* contrastive loss: pairs drawn once per image (:func:`topoot_gpu._random.pair_partners`), each
  epoch's batches of ``pair_batch`` shuffled pairs reduce to a weight per pair (``1 / (n_batches *
  size of its batch)``), so ``L = sum_k w_k l_k`` without a loop over batches;
* OT-consistency loss: normalised embeddings against the two class prototypes, 200 plain
  Sinkhorn iterations on ``[P, 2]`` with the gradient through every iteration. Only ``v_t`` (two
  numbers per iteration) is kept and ``u_t`` is recomputed on the way back, instead of 200
  autograd nodes of size ``P``; on the CPU both losses and their gradient are one C++ call.

The draws (initial weights, partners, shuffles) are counter-based hashes of the seed
(:mod:`topoot_gpu._random`), the same in :func:`topoot_gpu.reference.train_head`, on every device and
for every batch composition: a head trained in a batch gives the mask it gives alone.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import _random
from ._validation import check_choice, check_config, check_seed, check_threads
from .head_config import HeadConfig

BACKENDS = ("auto", "cpu", "torch", "reference")


def map_features(maps: torch.Tensor) -> torch.Tensor:
    """The per-pixel features used when no backbone features are given: ``[B, 8, H, W]`` float32.

    From the normalised map ``a`` (``[B, H, W]``, values in ``[0, 1]``): ``a``; Gaussian blurs of
    ``a`` at sigma 1, 2, 4 and 8 pixels; the gradient magnitude (central differences) of the
    sigma-1 and sigma-4 blurs; and the local contrast ``a - blur_8(a)``. Borders are replicated.
    """
    a = maps.to(torch.float32).unsqueeze(1)
    blurs = {s: _gaussian_blur(a, s) for s in (1, 2, 4, 8)}
    channels = [a, blurs[1], blurs[2], blurs[4], blurs[8], _gradient_magnitude(blurs[1]), _gradient_magnitude(blurs[4])]
    channels.append(a - blurs[8])
    return torch.cat(channels, dim=1)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))


def _gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    p = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gy = (p[:, :, 2:, 1:-1] - p[:, :, :-2, 1:-1]) * 0.5
    gx = (p[:, :, 1:-1, 2:] - p[:, :, 1:-1, :-2]) * 0.5
    return torch.sqrt(gx * gx + gy * gy)


def check_features(features: Any, batch: int, height: int, width: int, device: torch.device, squeezed: bool):
    """Validate backbone features for maps ``[batch, height, width]``: a floating tensor (or numpy
    array) ``[B, C, h, w]`` (``[C, h, w]`` for a single ``[H, W]`` map), finite, on the maps'
    device. Returns ``[B, C, h, w]`` in float32 or float64 (float16/bfloat16 are widened)."""
    if isinstance(features, np.ndarray):
        if features.dtype.kind != "f":
            raise ValueError(f"features: expected a floating dtype, got {features.dtype}")
        features = torch.from_numpy(np.ascontiguousarray(features))
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"features: expected a torch tensor or numpy array, got {type(features).__name__}")
    if not features.is_floating_point():
        raise ValueError(f"features: expected a floating dtype, got {features.dtype}")
    want = 3 if squeezed else 4
    if features.dim() != want:
        shape = "[C, h, w] for one [H, W] map" if squeezed else "[B, C, h, w] for maps [B, H, W]"
        raise ValueError(f"features: expected {shape}, got shape {tuple(features.shape)}")
    if squeezed:
        features = features.unsqueeze(0)
    if features.shape[0] != batch:
        raise ValueError(f"features: batch size {features.shape[0]} does not match the maps' {batch}")
    if 0 in features.shape:
        raise ValueError(f"features: empty dimension in shape {tuple(features.shape)}")
    if features.device != device:
        raise ValueError(f"features: on {features.device}, the maps are on {device}")
    if features.dtype in (torch.float16, torch.bfloat16):
        features = features.float()
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features: contains NaN or infinite values")
    return features


class _HeadSinkhorn(torch.autograd.Function):
    """``plan = u K v`` after ``iters`` plain Sinkhorn iterations on ``K [B, P, 2]`` (SPEC 5), with
    the exact gradient through the iterations, as batched torch ops (any device). Only the
    ``v_t`` (two numbers per iteration) are kept; ``u_t`` is recomputed on the way back."""

    @staticmethod
    def forward(ctx, K: torch.Tensor, iters: int, eps: float):
        K = K.detach().contiguous()
        plan, v_hist = _sinkhorn_forward_torch(K, iters, eps)
        ctx.save_for_backward(K, v_hist)
        ctx.eps = eps
        return plan

    @staticmethod
    def backward(ctx, grad_plan: torch.Tensor):
        K, v_hist = ctx.saved_tensors
        return _sinkhorn_backward_torch(K, v_hist, grad_plan.contiguous(), ctx.eps), None, None


class _HeadLossCpp(torch.autograd.Function):
    """``ot_weight * L_OT + L_contrastive`` per image in one C++ call (CPU tensors): both losses
    (:func:`_ot_consistency_torch` and :class:`_Contrastive` are the same maths in torch ops) and
    the gradient of their sum, computed with them into one buffer and handed back as it is when
    the incoming gradient is all ones (the training loop's ``loss.sum().backward()``)."""

    @staticmethod
    def forward(ctx, e, y, partner, weight, config: HeadConfig, threads: int):
        from . import _C

        e = e.detach().contiguous()
        fn = _C.head_loss_f32 if e.dtype == torch.float32 else _C.head_loss_f64
        loss_ot, loss_con, grad = fn(
            e.numpy(),
            y.to(torch.uint8).numpy(),
            partner.numpy(),
            weight.contiguous().numpy(),
            config.ot_reg,
            config.ot_iter,
            config.ot_eps,
            config.entropy_base,
            config.ot_weight,
            config.margin,
            config.pair_eps,
            threads,
        )
        ctx.save_for_backward(torch.from_numpy(grad))
        return torch.from_numpy(config.ot_weight * loss_ot + loss_con).to(e.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        if not bool((grad_loss == 1).all()):
            grad = grad_loss[:, None, None] * grad
        return grad, None, None, None, None, None


def _sinkhorn_forward_torch(K: torch.Tensor, iters: int, eps: float):
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


def _sinkhorn_backward_torch(K: torch.Tensor, v_hist: torch.Tensor, G: torch.Tensor, eps: float) -> torch.Tensor:
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


def _pair_weights(seed: int, epoch: int, n_pairs: int, pair_batch: int, device) -> torch.Tensor:
    """Each pair's weight in the mean over batches of the batch means: ``1 / (n_batches * size of
    its batch)``; only the last batch is shorter, so only which pairs it holds matters."""
    n_batches = -(-n_pairs // pair_batch)
    last = n_pairs - (n_batches - 1) * pair_batch
    order = _random.epoch_order(seed, epoch, n_pairs, device)
    w = torch.full((n_pairs,), 1.0 / (n_batches * pair_batch), dtype=torch.float64, device=device)
    w[order[(n_batches - 1) * pair_batch :]] = 1.0 / (n_batches * last)
    return w


def _embed(params: list[torch.Tensor], x: torch.Tensor, size: tuple[int, int, int, int] | None) -> torch.Tensor:
    """``[B, rows, C] -> [B, P, E]``; with ``size = (H, W, h, w)`` the rows are an ``h x w`` grid
    whose first layer output is resized bilinearly (``align_corners=False``) to ``H x W``."""
    w1, b1, w2, b2, w3, b3 = params
    z = _linear(x, w1, b1)
    if size is not None:
        H, W, h, w = size
        B = z.shape[0]
        grid = z.view(B, h, w, -1).permute(0, 3, 1, 2)  # channels-last strides, no copy
        z = F.interpolate(grid, size=(H, W), mode="bilinear", align_corners=False)
        z = z.permute(0, 2, 3, 1).reshape(B, H * W, -1)
    return _linear(F.gelu(_linear(F.gelu(z), w2, b2)), w3, b3)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.baddbmm(b.unsqueeze(1), x, w)


def _ot_consistency_torch(e: torch.Tensor, y: torch.Tensor, config: HeadConfig) -> torch.Tensor:
    """SPEC 5's OT-consistency loss per image, ``e [B, P, E]``, ``y [B, P]`` in {0, 1} (both present)."""
    B, P, _ = e.shape
    eps = config.ot_eps
    n = F.normalize(e, dim=2)
    onehot = torch.stack([1 - y, y], 1)  # [B, 2, P]
    protos = F.normalize(torch.bmm(onehot, n) / onehot.sum(2, keepdim=True), dim=2)
    cos = torch.bmm(n, protos.transpose(1, 2))  # [B, P, 2]
    m_prot = (cos.clamp(-1, 1) + 1) * 0.5
    m_cls = onehot.transpose(1, 2)
    K = torch.exp(-(1 - cos).clamp_min(0) / config.ot_reg).clamp_min(eps)
    plan = _HeadSinkhorn.apply(K, config.ot_iter, eps)
    g = plan / (plan.sum(2, keepdim=True) + eps)
    entropy = -(g * g.clamp_min(eps).log()).sum(2, keepdim=True)
    w = (1 - entropy / math.log(config.entropy_base)).clamp_min(0) * g
    return (w * (m_prot - m_cls).abs()).sum((1, 2)) / (2 * P + eps)


def nearest_prototype(e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SPEC 5's decision: ``|e - proto_fg| < |e - proto_bg|``, prototypes the normalised class means."""
    onehot = torch.stack([1 - y, y], 1).to(e.dtype)
    protos = F.normalize(torch.bmm(onehot, e) / onehot.sum(2, keepdim=True), dim=2)
    d_bg = torch.linalg.vector_norm(e - protos[:, :1], dim=2)
    d_fg = torch.linalg.vector_norm(e - protos[:, 1:], dim=2)
    return d_fg < d_bg


def train_heads(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: HeadConfig | None = None,
    seed: int = 0,
    backend: str = "auto",
    num_threads: int | None = None,
) -> torch.Tensor:
    """Masks of ``B`` images from their pseudo-labels, one freshly trained head each (SPEC 5).

    Args:
        features: ``[B, C, h, w]`` float32/float64 per-pixel features; ``h x w`` other than the
            labels' ``H x W`` is resized bilinearly (``align_corners=False``), as the released code
            resizes backbone features.
        labels: bool ``[B, H, W]`` pseudo-labels on the features' device.
        config: a :class:`HeadConfig`.
        seed: a non-negative int; the same seed gives the same heads, alone or in any batch.
        backend: ``"auto"`` (``"cpu"`` for CPU tensors, ``"torch"`` otherwise), ``"cpu"`` (both losses
            and their gradient in one C++ call per step, CPU tensors only), ``"torch"`` (torch
            ops only, any device), ``"reference"`` (:func:`topoot_gpu.reference.train_head` image
            by image).
        num_threads: threads of the C++ kernels (default: all cores).

    Returns:
        bool ``[B, H, W]`` masks: ``|e - proto_fg| < |e - proto_bg|`` after training; an image
        whose pseudo-label is constant gets it back untrained.
    """
    config = check_config(config, HeadConfig)
    check_choice("backend", backend, BACKENDS)
    check_seed(seed)
    threads = check_threads(num_threads)
    if labels.dtype != torch.bool or labels.dim() != 3:
        raise ValueError(f"labels: expected a bool [B, H, W] tensor, got {labels.dtype} {tuple(labels.shape)}")
    features = check_features(features, labels.shape[0], labels.shape[1], labels.shape[2], labels.device, False)
    if backend == "auto":
        backend = "cpu" if features.device.type == "cpu" else "torch"
    if backend == "cpu" and features.device.type != "cpu":
        raise ValueError(f"backend: 'cpu' needs CPU tensors, got {features.device}")
    masks = labels.clone()
    B, H, W = labels.shape
    flat = labels.reshape(B, H * W)
    n_fg = flat.sum(1)
    trained = torch.nonzero((n_fg > 0) & (n_fg < H * W)).flatten()
    if len(trained) == 0:
        return masks
    if backend == "reference":
        from .reference import train_head

        for b in trained.tolist():
            masks[b] = torch.as_tensor(train_head(features[b], labels[b], seed=seed, config=config)).to(masks.device)
        return masks
    with torch.inference_mode(False), torch.enable_grad():
        # Inputs made under inference_mode cannot be saved for backward: work on copies.
        x = features.index_select(0, trained).clone()
        y = flat.index_select(0, trained).clone()
        masks_t = _train(x, y, (H, W), config, seed, backend == "cpu", threads)
    masks[trained] = masks_t.view(-1, H, W)
    return masks


def _train(
    x: torch.Tensor, y: torch.Tensor, size: tuple[int, int], config: HeadConfig, seed: int, use_cpp: bool, threads: int
):
    B, C, h, w = x.shape
    H, W = size
    P = H * W
    dtype, device = x.dtype, x.device
    grid = None if (h, w) == (H, W) else (H, W, h, w)
    rows = x.permute(0, 2, 3, 1).reshape(B, h * w, C)
    hid = config.hidden(C)
    init = _random.head_parameters(seed, C, hid, config.embed_dim, dtype, device)
    # Stacked [B, in, out] weights and [B, out] biases, identical initial values for every image.
    params = [
        (p.t() if p.dim() == 2 else p).unsqueeze(0).repeat(B, *([1] * p.dim())).requires_grad_(True) for p in init
    ]
    opt = torch.optim.Adam(params, lr=config.lr)
    same, other = _random.pair_partners(y, seed)
    partner = torch.stack([same, other], 2).reshape(B, 2 * P)
    yf = y.to(dtype)
    for epoch in range(config.epochs):
        weight = _pair_weights(seed, epoch, 2 * P, config.pair_batch, device)
        weight = (config.contrastive_weight * weight).to(dtype).expand(B, 2 * P)
        opt.zero_grad(set_to_none=True)
        e = _embed(params, rows, grid)
        if use_cpp:
            loss = _HeadLossCpp.apply(e, y, partner, weight, config, threads)
        else:
            loss = config.ot_weight * _ot_consistency_torch(e, yf, config)
            loss = loss + _Contrastive.apply(e, partner, weight, config.margin, config.pair_eps)
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        return nearest_prototype(_embed(params, rows, grid), yf)
