"""The basin algorithm shared by the ``"cuda"`` and ``"triton"`` persistence backends: basins in
parallel, the elder rule on the small basin graph. Backend-neutral torch code (CI runs it on CPU
tensors, with the Triton interpreter or the CUDA source compiled for the host); the kernels come
from the backend's module (``descent``, ``jump``, ``boundary``, ``merge``).

Each pass (H0, and H1 by duality; see :mod:`topoot_gpu.persistence.api`) of a batch ``[B, H, W]``:

1. ``descent``: every pixel points at its lowest neighbour in the strict pass order ``(w, index)``
   (``w`` = the value, negated for a descending pass), a local minimum at itself; in the dual pass
   the border pixels point at the outside node ``P``, which comes before every pixel;
2. ``jump``: pointer jumping, a fixed number of rounds (:func:`jump_rounds`) launched back to back
   with no host synchronisation, each returning at once when the round before changed nothing:
   every pixel knows its basin (the minimum its steepest-descent path reaches);
3. ``boundary``: every neighbour pair that crosses two basins gives an edge whose saddle is the
   later of its two pixels;
4. the basin graph (torch ops on the device, :func:`basin_graph`): the lowest saddle of each pair
   of adjacent basins (a segmented minimum), sorted in saddle order;
5. ``merge``: the elder rule (Kruskal's union-find) along those edges, one thread per image on the
   device; then the pairs are gathered with torch ops. Nothing goes to the host but three sizes
   per pass (:func:`basin_persistence`). How small the graph is on smooth and noisy maps:
   ``benchmarks/basin_stats.py`` and its results.

Exact: the component of a pixel in the sublevel set of any level is a union of basins (a pixel's
descent path stays below it), and two basins are joined at the lowest saddle of a chain of
crossing pairs, so the pairs, and their birth and death pixels, are those of the union-find over
all pixels in the same order, which is what the CPU core computes (ties included: the order is
strict). Why this design: steps 1-3 are one independent computation per pixel, the shape GPUs
are good at, and steps 3-4 shrink the problem to the basin graph, which is small on anomaly maps
(hundreds of minima) and at worst a fraction of the pixels on raw noise; the ordered union-find is
then linear in that graph, one sequential scan per image, the images in parallel.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from types import ModuleType

import torch

# Pixels per chunk of the batch: a pass holds parents, four saddle slots, the crossing pairs and
# their sort (peak bytes per pixel: benchmarks/basin_stats.py and its results), so a chunk stays
# far below a GPU's memory while still filling it (2**25 pixels: 668 maps of 224x224, 128 of
# 512x512).
CHUNK_PIXELS = 1 << 25

#: Poison the kernels' outputs and check that every entry was written, at the price of a device
#: synchronisation per check: on with ``TOPOOT_CHECK_KERNELS=1`` (the tests set it), off on the hot
#: path otherwise.
CHECK_KERNELS = os.environ.get("TOPOOT_CHECK_KERNELS") == "1"


def output(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """An int64 output buffer of a kernel, poisoned with -7 (never a valid entry) under
    :data:`CHECK_KERNELS`."""
    if CHECK_KERNELS:
        return torch.full(shape, -7, dtype=torch.int64, device=device)
    return torch.empty(shape, dtype=torch.int64, device=device)


def _check_written(x: torch.Tensor, lowest: int, kernel: str) -> None:
    if CHECK_KERNELS and bool((x < lowest).any()):
        raise RuntimeError(f"{kernel} left entries unwritten")


def jump_rounds(n_pixels: int) -> int:
    """Rounds of pointer jumping that reach every root of a pass over ``n_pixels`` pixels.

    A descent path visits each pixel at most once, then perhaps the outside node, so it has at most
    ``n_pixels`` steps. After round ``k`` every node points at least ``min(2**k, depth)`` steps up
    its path: true for synchronous doubling, and an in-place read of a parent rewritten in the same
    round is further up still (each thread writes only its own node). So ``ceil(log2(n_pixels))``
    rounds suffice (224x224: 16). The backends launch them all without reading a flag on the host;
    a round whose predecessor changed nothing returns at once (a device-side flag per round), so
    the rounds past convergence cost a launch each (smooth 224x224 maps converge in about 8).
    """
    return max(1, (n_pixels - 1).bit_length())


def round_flags(n_pixels: int, device: torch.device) -> torch.Tensor:
    """``int32 [jump_rounds + 1]``: entry ``r`` says whether round ``r - 1`` changed a parent (entry 0
    is set: round 0 always runs). Round ``r`` gets the view ``flags[r:]`` and reads entry 0 of it,
    writes entry 1."""
    flags = torch.zeros(jump_rounds(n_pixels) + 1, dtype=torch.int32, device=device)
    flags[0] = 1
    return flags


def _check_roots(root: torch.Tensor) -> None:
    """Under :data:`CHECK_KERNELS`: every node's parent is a root after the last round."""
    if CHECK_KERNELS and not bool((root.gather(1, root) == root).all()):
        raise RuntimeError("jump left nodes short of their roots")


def basin_persistence(
    maps: torch.Tensor,
    *,
    superlevel: bool,
    conn8_h0: bool,
    dim0: bool,
    dim1: bool,
    kernels: ModuleType,
    num_threads: int = 0,
    on_stage: Callable[[str], None] | None = None,
) -> tuple[torch.Tensor, ...]:
    """The fields of :class:`~topoot_gpu.Diagrams` (image, dim, birth, death, birth_pixel,
    death_pixel) of ``maps [B, H, W]`` (float32/float64 on the kernels' device), as tensors on that
    device. ``conn8_h0``: H0 is 8-connected (construction T; the dual pass is then 4-connected).
    ``num_threads`` is not used (every stage runs on the device). ``on_stage(name)``, if given, is
    called at the end of every stage of every pass (``STAGES``), for profiling. Batches of more
    than ``CHUNK_PIXELS`` pixels run in chunks of whole maps, to bound device memory.

    Host synchronisations (:data:`HOST_READS_PER_PASS` per pass and chunk): the number of crossing
    pairs (``nonzero``), of distinct basin pairs (``unique``) and of pairs found (``nonzero``),
    each a size that allocates the next ragged buffer; nothing else leaves the device."""
    B, H, W = maps.shape
    per_chunk = max(1, CHUNK_PIXELS // (H * W))
    chunks = []
    for start in range(0, B, per_chunk):
        image, *rest = _chunk_persistence(
            maps[start : start + per_chunk], superlevel, conn8_h0, dim0, dim1, kernels, on_stage
        )
        chunks.append((image + start, *rest))
    if len(chunks) == 1:
        return chunks[0]
    return tuple(torch.cat([c[k] for c in chunks]) for k in range(6))


#: Sizes read on the host by one pass of one chunk (see :func:`basin_persistence`).
HOST_READS_PER_PASS = 3


def _chunk_persistence(maps, superlevel, conn8_h0, dim0, dim1, kernels, on_stage) -> tuple[torch.Tensor, ...]:
    B, H, W = maps.shape
    P = H * W
    v = maps.reshape(B, P).contiguous()
    dev = v.device
    parts = []
    if dim0:
        sign = -1.0 if superlevel else 1.0
        w = -v if superlevel else v
        parts.append(_pass(w, H, W, conn8_h0, False, 0, sign, kernels, on_stage))
        # The essential class: the first pixel of the order.
        index = torch.arange(P, device=dev).expand(B, P)
        first = torch.where(w == w.min(dim=1, keepdim=True).values, index, P).min(dim=1).values
        parts.append(
            (
                torch.arange(B, device=dev),
                torch.zeros(B, dtype=torch.int64, device=dev),
                v.gather(1, first[:, None])[:, 0].double(),
                torch.full((B,), -math.inf if superlevel else math.inf, dtype=torch.float64, device=dev),
                first,
                torch.full((B,), -1, dtype=torch.int64, device=dev),
            )
        )
    if dim1:
        # Dual pass: the other order and connectivity, with the outside node first.
        sign = 1.0 if superlevel else -1.0
        w = v if superlevel else -v
        parts.append(_pass(w, H, W, not conn8_h0, True, 1, sign, kernels, on_stage))
    fields = [torch.cat([p[k] for p in parts]) for k in range(6)]
    order = torch.argsort(fields[0], stable=True)  # per image: H0 pairs, essential, H1 pairs
    return tuple(f[order] for f in fields)


# The stages of a pass, in order, as named to ``on_stage``.
STAGES = ("descent", "jump", "boundary", "basin_graph", "merge")


def _pass(w: torch.Tensor, H: int, W: int, conn8: bool, outside: bool, dim: int, sign: float, kernels, on_stage):
    """One pass's pairs (the six fields), in edge order within each image."""
    stage = on_stage or (lambda name: None)
    B, P = w.shape
    image, s, lo, hi = basin_edges(w, H, W, conn8, outside, kernels, stage)
    offsets = torch.searchsorted(image, torch.arange(B + 1, device=w.device))
    uf = torch.empty((B, P + 1), dtype=torch.int64, device=w.device)
    uf[image, lo] = lo
    uf[image, hi] = hi
    young = kernels.merge(w, offsets, s, lo, hi, uf, outside)
    _check_written(young, -1, "merge")
    k = torch.nonzero(young >= 0).flatten()
    image, s, young = image[k], s[k], young[k]
    w_saddle = sign * w[image, s].double()
    w_young = sign * w[image, young].double()
    stage("merge")
    # The dual pass reads (b', d') of -a as (-d', -b'): the saddle gives the birth.
    birth, death = (w_saddle, w_young) if outside else (w_young, w_saddle)
    birth_pixel, death_pixel = (s, young) if outside else (young, s)
    return image, torch.full_like(image, dim), birth, death, birth_pixel, death_pixel


def basin_edges(
    w: torch.Tensor, H: int, W: int, conn8: bool, outside: bool, kernels: ModuleType, stage: Callable[[str], None]
) -> tuple[torch.Tensor, ...]:
    """Steps 1-4 of one pass on ``w [B, P]`` (pass-order values): the basin graph's edges in
    Kruskal's order, on the device (:func:`basin_graph`)."""
    parent = kernels.descent(w, H, W, conn8, outside)
    _check_written(parent, 0, "descent")
    stage("descent")
    root = kernels.jump(parent)
    _check_roots(root)
    stage("jump")
    saddle = kernels.boundary(w, root, H, W, conn8)
    _check_written(saddle, -1, "boundary")
    stage("boundary")
    edges = basin_graph(w, saddle, root, W, conn8)
    stage("basin_graph")
    return edges


def basin_graph(w: torch.Tensor, saddle: torch.Tensor, root: torch.Tensor, W: int, conn8: bool):
    """The basin graph's edges, on the device, in Kruskal's order: ``(image, s, lo, hi)``, with
    ``lo < hi`` two adjacent basins (their roots; ``P`` is the outside node) and ``s`` the lowest
    saddle between them, sorted by image, then by ``s`` in the pass order ``(w, index)``.

    Only the lowest crossing pair between two basins can merge them (when a later one comes, the
    two basins are one component already), so this segmented minimum loses nothing and leaves the
    host a graph the size of the basins' adjacency, not of their boundaries, already sorted.
    """
    B, P = w.shape
    n_nodes = P + 1
    nd = 4 if conn8 else 2
    if B * n_nodes * n_nodes >= 2**62:  # the pair key below; far beyond any batch that fits in memory
        raise ValueError(f"maps: a batch of {B} maps of {P} pixels is too large for one call")
    k = torch.nonzero(saddle >= 0).flatten()
    s = saddle[k]
    pixel = k // nd
    image = pixel // P
    p = pixel % P
    d = k % nd
    # Directions 0..3: E (0, 1), S (1, 0), SE (1, 1), SW (1, -1), as the boundary kernels number them.
    q = p + (d > 0) * W + 1 - (d == 1).long() - 2 * (d == 3).long()
    ra = root[image, p]
    rb = root[image, q]
    key = (image * n_nodes + torch.minimum(ra, rb)) * n_nodes + torch.maximum(ra, rb)
    keys, group = torch.unique(key, return_inverse=True)
    # Segmented minimum in the order (w, index): the least w of each group, then the least index
    # among the edges at that w (exact: two integer-valued or equal-float reductions).
    ws = w[image, s]
    group_w = torch.full(keys.shape, float("inf"), dtype=w.dtype, device=w.device)
    group_w = group_w.scatter_reduce(0, group, ws, "amin")
    at_min = torch.where(ws == group_w[group], s, P)
    group_s = torch.full(keys.shape, P, dtype=torch.int64, device=w.device).scatter_reduce(0, group, at_min, "amin")
    image, rest = keys // (n_nodes * n_nodes), keys % (n_nodes * n_nodes)
    lo, hi = rest // n_nodes, rest % n_nodes
    # Kruskal's order by three stable sorts (least significant key first): s, w(s), image.
    order = torch.argsort(group_s, stable=True)
    order = order[torch.argsort(group_w[order], stable=True)]
    order = order[torch.argsort(image[order], stable=True)]
    return image[order], group_s[order], lo[order], hi[order]
