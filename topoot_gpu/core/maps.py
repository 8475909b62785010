"""Map utilities every stage shares: normalisation, level maps, the map's own feature stack."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .numerics import sqrt_rn
from .validation import check_maps


def normalise_maps(a: Any) -> Any:
    """Per image ``(A - min) / (max - min)`` of ``[B, H, W]`` in float64; constant images become zeros.
    A numpy array gives a numpy array; a tensor gives a tensor on its device (computed there, with
    no host synchronisation).

    A finite map whose range overflows float64 (``max - min > 1.8e308``, e.g. values near
    ``+-1.7e308``) is first divided by a power of two above its largest magnitude (exact), then
    normalised: values in ``[0, 1]``, never inf or NaN. Any other map gets the released formula's
    bits (multiplied by 1).
    """
    if isinstance(a, np.ndarray):
        return normalise_maps(torch.from_numpy(a.astype(np.float64))).numpy()
    a = a.to(torch.float64)
    lo = a.amin(dim=(1, 2), keepdim=True)
    hi = a.amax(dim=(1, 2), keepdim=True)
    huge = ~torch.isfinite(hi - lo)
    exponent = torch.frexp(torch.maximum(lo.abs(), hi.abs())).exponent
    scale = torch.ldexp(torch.ones_like(lo), torch.where(huge, -exponent, 0))  # 2**-e, exact
    lo, hi = lo * scale, hi * scale
    span = hi - lo
    out = a * scale  # a fresh tensor: the steps below run in place
    return out.sub_(lo).div_(torch.where(span > 0, span, 1.0)).masked_fill_(span <= 0, 0.0)


def quantised_level_maps(a: torch.Tensor, levels: tuple[float, ...]) -> torch.Tensor:
    """``[B, len(levels) + 1, H, W]`` of float64 maps ``a [B, H, W]``: each ``k`` gives
    ``round((a - min) / s) * s + min``, ``s = (max - min) / (k - 1)``, round half to even (``k <= 1``
    or a constant map: ``a``); the map itself last."""
    lo = a.amin(dim=(1, 2), keepdim=True)
    hi = a.amax(dim=(1, 2), keepdim=True)
    out = torch.empty((a.shape[0], len(levels) + 1, *a.shape[1:]), dtype=a.dtype, device=a.device)
    out[:, -1] = a
    for i, k in enumerate(levels):
        q = out[:, i]
        if k <= 1:
            q.copy_(a)
            continue
        s = (hi - lo) / (k - 1)
        torch.sub(a, lo, out=q).div_(torch.where(s > 0, s, 1.0)).round_().mul_(s).add_(lo)
        torch.where(hi > lo, q, a, out=q)
    return out


def map_features(maps: Any) -> Any:
    """The per-pixel features used when no backbone features are given.

    Args:
        maps: ``[B, H, W]`` or ``[H, W]`` finite real maps, numpy or torch (any device).

    Returns:
        float32 ``[B, 8, H, W]`` (``[8, H, W]`` for one map), numpy or torch on the maps' device
        like the input. From the normalised map ``a = (A - min) / (max - min)`` (per map,
        :func:`normalise_maps`; a constant map gives zeros): ``a``; Gaussian blurs of ``a`` at sigma
        1, 2, 4 and 8 pixels; the gradient magnitude (central differences) of the sigma-1 and
        sigma-4 blurs; and the local contrast ``a - blur_8(a)``. Borders are replicated. On CUDA
        the blurs run in full float32 (cuDNN's TF32 off for them), so the features are the CPU's
        up to float32 rounding.

    Raises:
        ValueError: ``maps`` not a real floating array or tensor of rank 2 or 3, with an empty
            dimension, or with NaN/inf values.
    """
    batch = check_maps(maps)
    a = torch.from_numpy(normalise_maps(batch.numpy())).to(batch.device)
    return batch.to_caller(normalised_map_features(a))


def normalised_map_features(a: torch.Tensor) -> torch.Tensor:
    """:func:`map_features` of maps ``[B, H, W]`` already normalised to ``[0, 1]``, map by map: the
    convolution libraries choose their algorithm by batch size, so a batched blur can round
    differently from the same map's blur alone, and SPEC 5 wants a batch's masks to be its maps'
    masks one by one (one pixel of a 64x64 mask flipped)."""
    return torch.cat([_features(a[i : i + 1]) for i in range(a.shape[0])])


def _features(a: torch.Tensor) -> torch.Tensor:
    a = a.to(torch.float32).unsqueeze(1)
    with _full_float32_convolutions():
        blurs = {s: _gaussian_blur(a, s) for s in (1, 2, 4, 8)}
    channels = [a, blurs[1], blurs[2], blurs[4], blurs[8], _gradient_magnitude(blurs[1]), _gradient_magnitude(blurs[4])]
    channels.append(a - blurs[8])
    return torch.cat(channels, dim=1)


@contextlib.contextmanager
def _full_float32_convolutions():
    """cuDNN convolutions in float32 run in TF32 (10-bit mantissa) by default; not inside."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


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
    return sqrt_rn(gx * gx + gy * gy)  # the same bits on every call (core/numerics.py)
