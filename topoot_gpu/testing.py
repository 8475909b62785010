"""What tests and benchmarks share: the input dtypes, and generators of maps.

Generators take a ``numpy.random.Generator`` so that every caller controls (and can print)
its seed.
"""

from __future__ import annotations

import numpy as np
import torch

#: Input dtypes every entry point accepts.
numpy_float_dtypes = [np.float16, np.float32, np.float64]
torch_float_dtypes = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of the last two axes with reflected borders (numpy only)."""
    radius = max(1, int(round(3 * sigma)))
    t = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    for axis in (-2, -1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        xp = np.pad(x, pad, mode="reflect" if x.shape[axis] > radius else "edge")
        x = sum(w * np.take(xp, np.arange(i, i + x.shape[axis]), axis=axis) for i, w in enumerate(k))
    return x


def smooth_maps(rng: np.random.Generator, batch: int, height: int, width: int, *, sigma: float = 4.0) -> np.ndarray:
    """Gaussian-blurred uniform noise, float64 ``[batch, height, width]``."""
    return _blur(rng.random((batch, height, width)), sigma)


def blob_maps(rng: np.random.Generator, batch: int, height: int, width: int, *, max_blobs: int = 3) -> np.ndarray:
    """Anomaly-like maps: one to ``max_blobs`` Gaussian blobs (some touching the border) on smooth noise."""
    ii, jj = np.mgrid[0:height, 0:width]
    out = 0.3 * smooth_maps(rng, batch, height, width, sigma=max(1.0, min(height, width) / 16))
    for b in range(batch):
        for _ in range(rng.integers(1, max_blobs + 1)):
            ci, cj = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
            s = rng.uniform(0.03, 0.15) * min(height, width) + 0.5
            out[b] += rng.uniform(0.5, 1.0) * np.exp(-((ii - ci) ** 2 + (jj - cj) ** 2) / (2 * s * s))
    return out


def tied_maps(rng: np.random.Generator, batch: int, height: int, width: int, *, levels: int = 4) -> np.ndarray:
    """Integer-valued maps with heavy ties and plateaus (values in ``0 .. levels - 1``)."""
    coarse = rng.integers(0, levels, (batch, (height + 2) // 3, (width + 2) // 3))
    plateaus = np.repeat(np.repeat(coarse, 3, axis=1), 3, axis=2)[:, :height, :width]
    noisy = rng.integers(0, levels, (batch, height, width))
    return np.where(rng.random((batch, height, width)) < 0.5, plateaus, noisy).astype(np.float64)


def quantised_maps(rng: np.random.Generator, batch: int, height: int, width: int, *, levels: int = 1000) -> np.ndarray:
    """Smooth maps quantised to ``levels`` values in [0, 1] (many ties, as in TopoOT's level maps)."""
    m = smooth_maps(rng, batch, height, width, sigma=2.0)
    lo = m.min(axis=(1, 2), keepdims=True)
    hi = m.max(axis=(1, 2), keepdims=True)
    m = (m - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.round(m * (levels - 1)) / (levels - 1)


def ring_maps(rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
    """An island inside a hole inside a bright ring, on smooth noise: nested H0 and H1 structure."""
    ii, jj = np.mgrid[0:height, 0:width]
    out = 0.2 * smooth_maps(rng, batch, height, width, sigma=max(1.0, min(height, width) / 12))
    for b in range(batch):
        ci, cj = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        r = np.hypot(ii - ci, jj - cj) / (min(height, width) / 2)
        R = rng.uniform(0.4, 0.7)
        out[b] += np.exp(-(((r - R) / 0.08) ** 2)) + rng.uniform(0.3, 0.8) * np.exp(-((r / 0.12) ** 2))
    return out


def scratch_maps(rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
    """Thin bright line segments (one or two pixels wide) on smooth noise."""
    out = 0.3 * smooth_maps(rng, batch, height, width, sigma=max(1.0, min(height, width) / 16))
    for b in range(batch):
        for _ in range(rng.integers(1, 3)):
            i0, j0 = rng.integers(0, height), rng.integers(0, width)
            angle = rng.uniform(0, np.pi)
            length = rng.integers(max(2, min(height, width) // 4), max(3, min(height, width)))
            t = np.arange(length)
            i = np.clip(np.round(i0 + t * np.sin(angle)).astype(int), 0, height - 1)
            j = np.clip(np.round(j0 + t * np.cos(angle)).astype(int), 0, width - 1)
            out[b, i, j] += rng.uniform(0.6, 1.0)
    return out


def noise_maps(rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
    """Uniform noise: a minimum or saddle at about every fifth pixel."""
    return rng.random((batch, height, width))


#: Every kind of map the persistence parity tests run on, by name: ``f(rng, batch, height, width)``.
persistence_map_kinds = {
    "noise": noise_maps,
    "smooth": smooth_maps,
    "blobs": blob_maps,
    "ties": tied_maps,
    "binary": lambda rng, b, h, w: tied_maps(rng, b, h, w, levels=2),
    "quantised1000": quantised_maps,
}

#: Map shapes of the persistence parity tests: single pixels, lines, odd and square sizes.
persistence_shapes = [(1, 1), (1, 9), (9, 1), (2, 2), (3, 7), (17, 5), (32, 32), (41, 64)]
