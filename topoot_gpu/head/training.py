"""The batched training of SPEC 5's heads, backend-neutral (torch operations, any device): stacked
parameters, one forward and backward pass over all pixels of all images per epoch, the loss and
its gradient from the backend's ``head_loss`` (see :mod:`topoot_gpu.head.api`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..core import random
from .config import HeadConfig


def trainer(head_loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """A backend's ``train_heads`` (:func:`topoot_gpu.head.api.train_heads`): the batched training
    below with the backend's ``head_loss(e, y, partner, weight, config, num_threads)``."""

    def train_heads(
        features: torch.Tensor, labels: torch.Tensor, *, config: HeadConfig, seed: int, num_threads: int
    ) -> torch.Tensor:
        B, H, W = labels.shape
        return _train(features, labels.reshape(B, H * W), (H, W), config, seed, head_loss, num_threads).view(B, H, W)

    return train_heads


def _train(
    x: torch.Tensor, y: torch.Tensor, size: tuple[int, int], config: HeadConfig, seed: int, head_loss, threads: int
) -> torch.Tensor:
    """Masks ``[B, P]`` of features ``x [B, C, h, w]`` and labels ``y [B, P]`` (both classes present)."""
    B, C, h, w = x.shape
    H, W = size
    P = H * W
    dtype, device = x.dtype, x.device
    grid = None if (h, w) == (H, W) else _Resize(h, w, H, W, dtype, device)
    rows = x.permute(0, 2, 3, 1).reshape(B, h * w, C)
    hid = config.hidden(C)
    init = random.head_parameters(seed, C, hid, config.embed_dim, dtype, device)
    # Stacked [B, in, out] weights and [B, out] biases, identical initial values for every image.
    params = [
        (p.t() if p.dim() == 2 else p).unsqueeze(0).repeat(B, *([1] * p.dim())).requires_grad_(True) for p in init
    ]
    opt = torch.optim.Adam(params, lr=config.lr)
    same, other = random.pair_partners(y, seed)
    partner = torch.stack([same, other], 2).reshape(B, 2 * P)
    yf = y.to(dtype)
    for epoch in range(config.epochs):
        weight = _pair_weights(seed, epoch, 2 * P, config.pair_batch, device)
        weight = (config.contrastive_weight * weight).to(dtype).expand(B, 2 * P)
        opt.zero_grad(set_to_none=True)
        with _products(config.precision, device):
            e = _embed(params, rows, grid)
        loss = head_loss(e.to(dtype), y, partner, weight, config, threads)
        loss.sum().backward()
        opt.step()
    with torch.no_grad():
        with _products(config.precision, device):
            e = _embed(params, rows, grid)
        return nearest_prototype(e.to(dtype), yf)


def _products(precision: str, device: torch.device):
    """The MLP's products in ``precision`` (:attr:`HeadConfig.precision`): ``"bf16"`` is autocast to
    bfloat16 (products, GELU and resizing; float32 accumulation inside the products), the losses
    and Adam stay in the features' dtype; ``"fp32"`` changes nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _pair_weights(seed: int, epoch: int, n_pairs: int, pair_batch: int, device) -> torch.Tensor:
    """Each pair's weight in the mean over batches of the batch means: ``1 / (n_batches * size of
    its batch)``; only the last batch is shorter, so only which pairs it holds matters."""
    n_batches = -(-n_pairs // pair_batch)
    last = n_pairs - (n_batches - 1) * pair_batch
    order = random.epoch_order(seed, epoch, n_pairs, device)
    w = torch.full((n_pairs,), 1.0 / (n_batches * pair_batch), dtype=torch.float64, device=device)
    w[order[(n_batches - 1) * pair_batch :]] = 1.0 / (n_batches * last)
    return w


class _Resize:
    """Bilinear resizing (``align_corners=False``, as ``F.interpolate``) of ``[B, h * w, C]`` rows to
    ``[B, H * W, C]`` as two products with fixed ``[H, h]`` and ``[W, w]`` interpolation matrices.
    Its gradient is two products too: deterministic on CUDA, where ``F.interpolate``'s backward
    accumulates with atomics (non-deterministic per torch's documentation)."""

    def __init__(self, h: int, w: int, H: int, W: int, dtype: torch.dtype, device: torch.device) -> None:
        self.h, self.w, self.H, self.W = h, w, H, W
        self.rows = _linear_interpolation(H, h).to(dtype=dtype, device=device)
        self.cols = _linear_interpolation(W, w).to(dtype=dtype, device=device)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        B, _, C = z.shape
        z = torch.matmul(self.rows, z.view(B, self.h, self.w * C))  # [B, H, w * C]
        z = torch.matmul(self.cols, z.view(B, self.H, self.w, C))  # [B, H, W, C]
        return z.reshape(B, self.H * self.W, C)


def _linear_interpolation(n_out: int, n_in: int) -> torch.Tensor:
    """``[n_out, n_in]`` float64 weights of 1-D linear interpolation, ``align_corners=False``: output
    ``i`` reads the input at ``(i + 0.5) * n_in / n_out - 0.5`` (clamped at 0), PyTorch's rule."""
    i = torch.arange(n_out, dtype=torch.float64)
    src = ((i + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    hi = (lo + 1).clamp(max=n_in - 1)
    frac = src - lo
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    weights.index_put_((i.long(), lo), 1 - frac, accumulate=True)
    weights.index_put_((i.long(), hi), frac, accumulate=True)
    return weights


def _embed(params: list[torch.Tensor], x: torch.Tensor, resize: _Resize | None) -> torch.Tensor:
    """``[B, rows, C] -> [B, P, E]``; with ``resize`` the rows are an ``h x w`` grid whose first layer
    output is resized bilinearly (``align_corners=False``) to ``H x W``."""
    w1, b1, w2, b2, w3, b3 = params
    z = _linear(x, w1, b1)
    if resize is not None:
        z = resize(z)
    return _linear(F.gelu(_linear(F.gelu(z), w2, b2)), w3, b3)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.baddbmm(b.unsqueeze(1), x, w)


def nearest_prototype(e: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SPEC 5's decision: ``|e - proto_fg| < |e - proto_bg|``, prototypes the normalised class means."""
    onehot = torch.stack([1 - y, y], 1).to(e.dtype)
    protos = F.normalize(torch.bmm(onehot, e) / onehot.sum(2, keepdim=True), dim=2)
    d_bg = torch.linalg.vector_norm(e - protos[:, :1], dim=2)
    d_fg = torch.linalg.vector_norm(e - protos[:, 1:], dim=2)
    return d_fg < d_bg
