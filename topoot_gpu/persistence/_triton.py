"""The ``"triton"`` backend of cubical persistence: the basin algorithm (:mod:`._basins`) with its
data-parallel passes in Triton.

Three kernels over the pixels of a batch ``[B, H, W]``, each pixel independent:

* ``descent``: every pixel's steepest lower neighbour in the pass order ``(w, index)`` (itself
  for a local minimum); in the dual pass, border pixels descend to the outside node ``P``;
* ``jump``: pointer jumping in place, ``parent[x] = parent[parent[x]]``, for
  :func:`~._basins.jump_rounds` rounds launched without a host synchronisation (a round after
  one that changed nothing does no work), so every pixel points at its basin's minimum;
* ``boundary``: for every neighbour pair counted once (E, S and, 8-connected, SE, SW), the saddle
  of the pair (the later pixel in the order) when the two pixels lie in different basins, else -1;
* ``merge``: the elder rule along each image's basin graph in Kruskal's order, one program per
  image (a scalar union-find: the scan is ordered, the graph small).

Runs on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (set before this module is
imported), which is how CI tests it.
"""

from __future__ import annotations

import sys
from functools import partial

import torch

from ._basins import basin_persistence, output, round_flags

try:
    import triton
    import triton.language as tl
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("backend='triton' needs Triton: pip install 'topoot_gpu[triton]'") from e

BLOCK = 256


@triton.jit
def _pixels(n_pixels, H, W, BLOCK: tl.constexpr):
    """This program's flat indices ``x`` over ``[B, P]``, their mask, image, pixel, row and column."""
    x = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    p = x % (H * W)
    return x, x < n_pixels, x // (H * W), p, p // W, p % W


@triton.jit
def _descent_kernel(w_ptr, parent_ptr, H, W, n_pixels, OUTSIDE: tl.constexpr, CONN8: tl.constexpr,
                    BLOCK: tl.constexpr):  # fmt: skip
    x, valid, b, p, i, j = _pixels(n_pixels, H, W, BLOCK)
    P = H * W
    best = p
    best_w = tl.load(w_ptr + x, mask=valid, other=0.0)
    for k in tl.static_range(9):
        if k != 4 and (CONN8 or k % 2 == 1):
            di = k // 3 - 1
            dj = k % 3 - 1
            inside = (i + di >= 0) & (i + di < H) & (j + dj >= 0) & (j + dj < W)
            q = p + di * W + dj
            wq = tl.load(w_ptr + b * P + q, mask=valid & inside, other=0.0)
            earlier = inside & ((wq < best_w) | ((wq == best_w) & (q < best)))
            best = tl.where(earlier, q, best)
            best_w = tl.where(earlier, wq, best_w)
    if OUTSIDE:
        border = (i == 0) | (i == H - 1) | (j == 0) | (j == W - 1)
        best = tl.where(border, P, best)
    tl.store(parent_ptr + b * (P + 1) + p, best, mask=valid)


@triton.jit
def _jump_kernel(parent_ptr, flags_ptr, stride, n_nodes, BLOCK: tl.constexpr):
    # In place, as the CUDA kernel (any ancestor is a valid parent to read); a round whose
    # predecessor changed nothing (flags_ptr[0] == 0) loads and stores nothing.
    x = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = (x < n_nodes) & (tl.load(flags_ptr) != 0)
    base = (x // stride) * stride
    par = tl.load(parent_ptr + x, mask=valid, other=0)
    grand = tl.load(parent_ptr + base + par, mask=valid, other=0)
    moved = valid & (grand != par)
    tl.store(parent_ptr + x, grand, mask=moved)
    # One flag update per program, only where something moved.
    changed = tl.max(moved.to(tl.int32), 0)
    if changed > 0:
        tl.atomic_max(flags_ptr + 1, changed)


@triton.jit
def _boundary_kernel(w_ptr, root_ptr, saddle_ptr, H, W, n_pixels, ND: tl.constexpr, BLOCK: tl.constexpr):
    x, valid, b, p, i, j = _pixels(n_pixels, H, W, BLOCK)
    P = H * W
    wp = tl.load(w_ptr + x, mask=valid, other=0.0)
    rp = tl.load(root_ptr + b * (P + 1) + p, mask=valid, other=0)
    # Directions: E (0, 1), S (1, 0), then SE (1, 1) and SW (1, -1) when 8-connected (ND = 4).
    for d in tl.static_range(ND):
        di = 0 if d == 0 else 1
        dj = 1 if d == 0 else (0 if d == 1 else (1 if d == 2 else -1))
        inside = (i + di < H) & (j + dj >= 0) & (j + dj < W)
        q = p + di * W + dj
        m = valid & inside
        wq = tl.load(w_ptr + b * P + q, mask=m, other=0.0)
        rq = tl.load(root_ptr + b * (P + 1) + q, mask=m, other=0)
        q_later = (wq > wp) | ((wq == wp) & (q > p))
        saddle = tl.where(q_later, q, p)
        saddle = tl.where(m & (rq != rp), saddle, -1)
        tl.store(saddle_ptr + x * ND + d, saddle, mask=valid)


@triton.jit
def _find(uf_ptr, x):
    """The root of ``x`` with path halving."""
    parent = tl.load(uf_ptr + x)
    while parent != x:
        grand = tl.load(uf_ptr + parent)
        tl.store(uf_ptr + x, grand)
        x = grand
        parent = tl.load(uf_ptr + x)
    return x


@triton.jit
def _merge_kernel(w_ptr, offsets_ptr, saddle_ptr, lo_ptr, hi_ptr, uf_ptr, young_ptr, P, OUTSIDE: tl.constexpr):
    # As merge in csrc/cuda/persistence_cuda.cu: young[e] is the root dying at edge e, else -1.
    b = tl.program_id(0).to(tl.int64)
    wb_ptr = w_ptr + b * P
    u_ptr = uf_ptr + b * (P + 1)
    start = tl.load(offsets_ptr + b)
    end = tl.load(offsets_ptr + b + 1)
    e = start
    while e < end:
        ra = _find(u_ptr, tl.load(lo_ptr + e))
        rb = _find(u_ptr, tl.load(hi_ptr + e))
        joins = ra != rb
        wa = tl.load(wb_ptr + ra, mask=ra < P, other=0.0)
        wr = tl.load(wb_ptr + rb, mask=rb < P, other=0.0)
        a_older = (wa < wr) | ((wa == wr) & (ra < rb))
        if OUTSIDE:
            a_older = tl.where((ra == P) | (rb == P), ra == P, a_older)
        young = tl.where(a_older, rb, ra)  # never the outside node
        tl.store(u_ptr + young, tl.where(a_older, ra, rb), mask=joins)
        ws = tl.load(wb_ptr + tl.load(saddle_ptr + e))
        dies = tl.where(joins & (tl.where(a_older, wr, wa) != ws), young, -1)
        tl.store(young_ptr + e, dies)
        e += 1


def _grid(n: int):
    return (triton.cdiv(n, BLOCK),)


def descent(w: torch.Tensor, H: int, W: int, conn8: bool, outside: bool) -> torch.Tensor:
    """``[B, P + 1]`` int64: each pixel's steepest lower neighbour; entry ``P`` is the outside node."""
    B, P = w.shape
    parent = output((B, P + 1), w.device)
    parent[:, P] = P
    _descent_kernel[_grid(B * P)](w, parent, H, W, B * P, OUTSIDE=outside, CONN8=conn8, BLOCK=BLOCK)
    return parent


def jump(parent: torch.Tensor) -> torch.Tensor:
    """Pointer jumping in place on ``[B, P + 1]``: :func:`~topoot_gpu.persistence._basins.jump_rounds`
    launches, no host synchronisation; every node's root."""
    flags = round_flags(parent.shape[1] - 1, parent.device)
    for r in range(len(flags) - 1):
        _jump_kernel[_grid(parent.numel())](parent, flags[r:], parent.shape[1], parent.numel(), BLOCK=BLOCK)
    return parent


def boundary(w: torch.Tensor, root: torch.Tensor, H: int, W: int, conn8: bool) -> torch.Tensor:
    """``[B * P * ND]`` int64: the saddle of each (pixel, direction) pair across two basins, else -1."""
    B, P = w.shape
    nd = 4 if conn8 else 2
    saddle = output((B * P * nd,), w.device)
    _boundary_kernel[_grid(B * P)](w, root, saddle, H, W, B * P, ND=nd, BLOCK=BLOCK)
    return saddle


def merge(
    w: torch.Tensor, offsets: torch.Tensor, saddle: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
    uf: torch.Tensor, outside: bool,
) -> torch.Tensor:  # fmt: skip
    """``[E]`` int64: the root dying at each basin-graph edge by the elder rule, else -1; one program
    per image, ``uf [B, P + 1]`` its union-find (edge nodes at themselves on entry)."""
    B, P = w.shape
    young = output(saddle.shape, w.device)
    if B:
        _merge_kernel[(B,)](w, offsets, saddle, lo, hi, uf, young, P, OUTSIDE=outside, num_warps=1)
    return young


#: The backend's entry (:mod:`topoot_gpu.persistence.api`): the basin algorithm with these kernels.
cubical_persistence = partial(basin_persistence, kernels=sys.modules[__name__])
