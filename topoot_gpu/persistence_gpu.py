"""Cubical persistence on the GPU: basins in parallel, the elder rule on the small basin graph.

Each pass (H0, and H1 by duality; see :mod:`topoot_gpu.persistence`) of a batch ``[B, H, W]``:

1. ``descent``: every pixel points at its lowest neighbour in the strict pass order ``(w, index)``
   (``w`` = the value, negated for a descending pass), a local minimum at itself; in the dual pass
   the border pixels point at the outside node ``P``, which comes before every pixel;
2. ``jump``: pointer jumping until nothing changes: every pixel knows its basin (the minimum its
   steepest-descent path reaches);
3. ``boundary``: every neighbour pair that crosses two basins gives an edge whose saddle is the
   later of its two pixels;
4. the elder rule (Kruskal) on those edges in saddle order, in C++ on the host
   (``csrc/cpu/basin_merge_cpu.cpp``): only the edges travel, not the maps.

Exact: the component of a pixel in the sublevel set of any level is a union of basins (a pixel's
descent path stays below it), and two basins are joined at the lowest saddle of a chain of
crossing pairs, so the pairs, and their birth and death pixels, are those of the union-find over
all pixels in the same order, which is what the CPU core computes (ties included: the order is
strict). Why this design: steps 1-3 are one independent computation per pixel, the shape GPUs
are good at, and they shrink the problem to the basin graph, which is small on anomaly maps
(hundreds of minima) and at worst a fraction of the pixels on raw noise.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch

from ._validation import check_threads


def basin_persistence(
    maps: torch.Tensor, *, superlevel: bool, conn8_h0: bool, dim0: bool, dim1: bool, kernels: ModuleType
) -> tuple[np.ndarray, ...]:
    """The fields of :class:`~topoot_gpu.Diagrams` (image, dim, birth, death, birth_pixel,
    death_pixel) of ``maps [B, H, W]`` (float32/float64 on the kernels' device). ``conn8_h0``: H0
    is 8-connected (construction T; the dual pass is then 4-connected)."""
    B, H, W = maps.shape
    P = H * W
    v = maps.reshape(B, P).contiguous()
    parts = []
    if dim0:
        sign = -1.0 if superlevel else 1.0
        w = -v if superlevel else v
        parts.append(_pass(w, H, W, conn8_h0, False, 0, sign, kernels))
        # The essential class: the first pixel of the order.
        index = torch.arange(P, device=w.device).expand(B, P)
        first = torch.where(w == w.min(dim=1, keepdim=True).values, index, P).min(dim=1).values
        birth = v.gather(1, first[:, None])[:, 0].double()
        parts.append(
            (
                np.arange(B, dtype=np.int64),
                np.zeros(B, dtype=np.int64),
                birth.cpu().numpy(),
                np.full(B, -np.inf if superlevel else np.inf),
                first.cpu().numpy(),
                np.full(B, -1, dtype=np.int64),
            )
        )
    if dim1:
        # Dual pass: the other order and connectivity, with the outside node first.
        sign = 1.0 if superlevel else -1.0
        w = v if superlevel else -v
        parts.append(_pass(w, H, W, not conn8_h0, True, 1, sign, kernels))
    fields = [np.concatenate([p[k] for p in parts]) for k in range(6)]
    order = np.argsort(fields[0], kind="stable")  # per image: H0 pairs, essential, H1 pairs
    return tuple(f[order] for f in fields)


def _pass(w: torch.Tensor, H: int, W: int, conn8: bool, outside: bool, dim: int, sign: float, kernels):
    from . import _C

    B, P = w.shape
    parent = kernels.descent(w, H, W, conn8, outside)
    if bool((parent < 0).any()):
        raise RuntimeError("descent left entries unwritten")
    root = kernels.jump(parent)
    saddle = kernels.boundary(w, root, H, W, conn8)
    if bool((saddle < -1).any()):
        raise RuntimeError("boundary left entries unwritten")
    nd = 4 if conn8 else 2
    k = torch.nonzero(saddle >= 0).flatten()
    pixel = k // nd
    image = pixel // P
    p = pixel % P
    d = k % nd
    di = torch.tensor([0, 1, 1, 1], device=w.device)[d]
    dj = torch.tensor([1, 0, 1, -1], device=w.device)[d]
    q = p + di * W + dj
    s = saddle[k]
    ra = root[image, p]
    rb = root[image, q]
    offsets = torch.searchsorted(image, torch.arange(B + 1, device=w.device)).cpu().numpy()

    def w_at(node):  # the outside node P comes before every pixel
        return torch.where(node == P, float("-inf"), w[image, node.clamp(max=P - 1)].double())

    host = [t.cpu().numpy() for t in (s, ra, rb, w_at(s), w_at(ra), w_at(rb))]
    return _C.basin_merge(offsets, *host, P, outside, dim, sign, check_threads(None))
