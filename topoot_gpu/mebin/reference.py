"""MEBin restated plainly, one binary map per score: scale, binarise, erode the binary map, label it
with ``scipy.ndimage.label`` (8-connected) and count. No persistence, no grey erosion: what
:mod:`topoot_gpu.mebin.api` computes from one diagram is checked against this (extra ``test``)."""

from __future__ import annotations

import numpy as np
import torch

from .rule import stable_threshold, sweep_scores


def binary_erosion(mask: np.ndarray, kernel_size: int) -> np.ndarray:
    """Erosion of a binary ``[H, W]`` mask by a flat ``k x k`` square with origin ``(k // 2, k // 2)``:
    a pixel stays when every pixel of its window inside the image is set (kornia's geodesic border)."""
    k, o = kernel_size, kernel_size // 2
    H, W = mask.shape
    padded = np.ones((H + k - 1, W + k - 1), dtype=bool)
    padded[o : o + H, o : o + W] = mask
    out = np.ones_like(mask)
    for di in range(k):
        for dj in range(k):
            out &= padded[di : di + H, dj : dj + W]
    return out


def component_count(mask: np.ndarray) -> int:
    """8-connected components of a binary mask."""
    from scipy import ndimage

    return int(ndimage.label(mask, structure=np.ones((3, 3), dtype=int))[1])


def mebin_reference(maps: torch.Tensor, *, sample_rate: int = 4, min_interval_len: int = 4, erode: bool = True,
                    kernel_size: int = 6, per_image: bool = False):  # fmt: skip
    """``(masks, thresholds, counts)`` for float ``[B, H, W]`` CPU maps, one labelling per score."""
    a = maps
    peaks = a.amax(dim=(1, 2))
    if per_image:
        ranges = [(a[b].amin(), peaks[b] - a[b].amin(), peaks[b]) for b in range(a.shape[0])]
    else:
        s_max, s_min = peaks.max(), peaks.min()
        if s_max == s_min:
            s_min = a.amin()
        ranges = [(s_min, s_max - s_min, s_max)] * a.shape[0]
    scores = sweep_scores(sample_rate)
    masks = torch.zeros(a.shape, dtype=torch.bool)
    thresholds = torch.empty(a.shape[0], dtype=a.dtype)
    counts = np.zeros((a.shape[0], len(scores)), dtype=np.int64)
    for b, (lo, span, hi) in enumerate(ranges):
        if span == 0:
            thresholds[b] = hi
            continue
        norm = torch.where(a[b] < lo, torch.zeros_like(a[b]), ((a[b] - lo) / span * 255.0).clamp(0, 255)).numpy()
        for k, s in enumerate(scores):
            binary = norm > s
            counts[b, k] = component_count(binary_erosion(binary, kernel_size) if erode else binary)
        score, _ = stable_threshold(counts[b].tolist(), min_interval_len=min_interval_len, sample_rate=sample_rate)
        thresholds[b] = score / 255.0 * span + lo
        masks[b] = a[b] > thresholds[b]
    return masks, thresholds, counts
