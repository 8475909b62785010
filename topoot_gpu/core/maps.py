"""Map utilities every stage shares: normalisation, level maps, the map's own feature stack."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .validation import check_maps


def normalise_maps(a: np.ndarray) -> np.ndarray:
    """Per image ``(A - min) / (max - min)`` of ``[B, H, W]`` in float64; constant images become zeros.

    A finite map whose range overflows float64 (``max - min > 1.8e308``, e.g. values near
    ``+-1.7e308``) is first divided by a power of two above its largest magnitude (``ldexp``, exact), then
    normalised: values in ``[0, 1]``, never inf or NaN. Any other map gets the released formula's
    bits.
    """
    a = a.astype(np.float64)
    lo = a.min(axis=(1, 2), keepdims=True)
    hi = a.max(axis=(1, 2), keepdims=True)
    with np.errstate(over="ignore", invalid="ignore"):
        span = hi - lo
        huge = ~np.isfinite(span)
        if huge.any():
            e = np.where(huge, np.frexp(np.maximum(np.abs(lo), np.abs(hi)))[1], 0)
            a, lo, hi = np.ldexp(a, -e), np.ldexp(lo, -e), np.ldexp(hi, -e)
            span = hi - lo
        return np.where(span > 0, (a - lo) / np.where(span > 0, span, 1.0), 0.0)


def quantised_level_maps(a: np.ndarray, levels: tuple[float, ...]) -> np.ndarray:
    """``[B, len(levels) + 1, H, W]``: each ``k`` gives ``round((a - min) / s) * s + min``,
    ``s = (max - min) / (k - 1)``, round half to even (``k <= 1`` or a constant map: ``a``); the map
    itself last."""
    lo = a.min(axis=(1, 2), keepdims=True)
    hi = a.max(axis=(1, 2), keepdims=True)
    out = []
    for k in levels:
        s = (hi - lo) / (k - 1) if k > 1 else np.ones_like(lo)
        q = np.round((a - lo) / np.where(s > 0, s, 1.0)) * s + lo
        out.append(np.where((k > 1) & (hi > lo), q, a))
    return np.stack(out + [a], axis=1)


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
    """:func:`map_features` of maps ``[B, H, W]`` already normalised to ``[0, 1]``."""
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
    return torch.sqrt(gx * gx + gy * gy)
