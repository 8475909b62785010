"""Differentiable persistence diagrams of batches of maps, and topological losses on them.

:func:`persistence_diagrams` returns every pair of every map as values gathered from the map at the
pair's birth and death pixels (computed by the exact union-find core, or the GPU kernels, through
``torch.ops.topoot.persistence_pixels``): each value is one entry of the map, so autograd scatters
its gradient into that pixel, the exact subgradient. At ties (several pixels with the value that
creates or kills a class) the gradient goes to the pixel the elder rule picked, the earliest in the
order ``(value, flat index)``, as GUDHI picks it.

The losses take a :class:`DiagramBatch` and reduce over its leading (batch) dimensions with
``reduction="mean"`` (default), ``"sum"`` or ``"none"``:

* :func:`total_persistence`: ``sum |d - b|^p`` over the finite pairs (of one dimension or all);
* :func:`betti_loss`: Clough et al. (IPMI 2019, "A topological loss function for deep-learning
  based image segmentation using persistent homology"): with ``k`` wanted classes,
  ``sum_{l <= k} (1 - pers_l^2) + sum_{l > k} pers_l^2`` over the finite pairs by decreasing
  persistence; the essential classes of the dimension count among the ``k``. Written for maps in
  ``[0, 1]`` (probabilities), as in the paper;
* :func:`partial_persistence`: the persistence of the diagram truncated at a threshold (the
  components born below it in a sublevel filtration, above it in a superlevel one, their deaths
  cut at the threshold; GUDHI issue 639's partial persistence);
* :func:`diagram_distance`: the partial-matching distance between two batches of diagrams
  (squared Euclidean ground cost, the diagonal as a sink), entropic through the batched
  :func:`topoot_gpu.sinkhorn`, or exact (Hungarian matching, SciPy) for small diagrams. The
  matching is held fixed for the gradient (the envelope theorem: at the optimum the gradient of
  the transport cost in the costs is the plan).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import backends
from ..core.validation import check_choice, check_int, check_number
from ..persistence.api import check_dims
from ..persistence.diagrams import CONSTRUCTIONS, FILTRATIONS
from ..transport.api import sinkhorn
from ..transport.padded import padded_diagram_costs
from . import op  # noqa: F401  (registers torch.ops.topoot.persistence_pixels)

REDUCTIONS = ("mean", "sum", "none")


@dataclass(frozen=True)
class DiagramBatch:
    """The persistence pairs of a batch of maps, padded to a common count ``K``.

    Attributes:
        values: ``[..., K, 2]`` (birth, death) in the maps' dtype, differentiable in the maps;
            padding NaN; an essential class dies at ``+inf`` (sublevel) or ``-inf`` (superlevel).
        pixels: ``[..., K, 2]`` int64 flat indices ``i * W + j`` of the birth and death pixels;
            padding -1, an essential death -1.
        dim: ``[..., K]`` int64 homology dimension; padding -1.
        counts: ``[...]`` int64 pairs per map.
        filtration: ``"sublevel"`` or ``"superlevel"``.

    The leading dimensions are the input's batch dimensions. Within a map the pairs run by
    dimension, then by decreasing persistence (essential classes first).
    """

    values: torch.Tensor
    pixels: torch.Tensor
    dim: torch.Tensor
    counts: torch.Tensor
    filtration: str

    def finite(self, dim: int | None = None) -> torch.Tensor:
        """bool ``[..., K]``: the finite pairs (of dimension ``dim``, or of every dimension)."""
        mask = (self.dim >= 0) & (self.pixels[..., 1] >= 0)
        return mask if dim is None else mask & (self.dim == dim)

    def essential(self, dim: int | None = None) -> torch.Tensor:
        """bool ``[..., K]``: the essential classes (of dimension ``dim``, or of every dimension)."""
        mask = (self.dim >= 0) & (self.pixels[..., 1] < 0)
        return mask if dim is None else mask & (self.dim == dim)

    def persistence(self, mask: torch.Tensor) -> torch.Tensor:
        """``|death - birth|`` where ``mask`` holds (finite pairs only), 0 elsewhere; gradients reach
        only the masked entries (padding NaN never meets a multiplication)."""
        b = torch.where(mask, self.values[..., 0], 0)
        d = torch.where(mask, self.values[..., 1], 0)
        return torch.where(mask, (d - b).abs(), 0)


def persistence_diagrams(
    x: torch.Tensor,
    *,
    dims: Iterable[int] = (0, 1),
    construction: str = "T",
    filtration: str = "sublevel",
    min_persistence: float = 0.0,
    backend: str = "auto",
    num_threads: int | None = None,
) -> DiagramBatch:
    """Differentiable persistence diagrams of ``[B, H, W]`` or ``[B, C, H, W]`` maps.

    Args:
        x: a floating tensor, ``[..., H, W]`` with one or two leading dimensions, finite, on the
            CPU or a CUDA device (may require grad).
        dims: homology dimensions, a non-empty subset of ``(0, 1)``.
        construction: ``"T"`` (pixels are top cells, GUDHI ``top_dimensional_cells=``) or ``"V"``
            (pixels are vertices, GUDHI ``vertices=``).
        filtration: ``"sublevel"`` or ``"superlevel"`` (see :func:`topoot_gpu.cubical_persistence`).
        min_persistence: keep the pairs whose persistence is above this (GUDHI's convention;
            essential classes are always kept; 0 keeps every pair, zero-length pairs are never
            reported).
        backend: the backend of :func:`topoot_gpu.cubical_persistence` that finds the pairs
            (``"auto"``: the C++ core, on a host copy of CUDA maps until the GPU backends have
            passed on hardware; ``"cuda"`` or ``"triton"`` keep CUDA maps on the device; only the
            basin graph travels to the host, see :mod:`topoot_gpu.persistence._basins`).
        num_threads: threads of the C++ core over the maps (default: every core).

    Returns:
        A :class:`DiagramBatch` whose ``values`` are differentiable in ``x``.

    Raises:
        ValueError: ``x`` not a floating tensor of rank 3 or 4 with non-empty dimensions, NaN or
            inf in it, or a bad option.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = f"{x.dtype} tensor" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected a floating tensor, got {got}")
    if x.dim() not in (3, 4) or 0 in x.shape:
        raise ValueError(f"x: expected a non-empty [B, H, W] or [B, C, H, W] tensor, got shape {tuple(x.shape)}")
    check_choice("construction", construction, CONSTRUCTIONS)
    check_choice("filtration", filtration, FILTRATIONS)
    wanted = [d for d, on in zip((0, 1), check_dims(dims)) if on]
    min_persistence = check_number("min_persistence", min_persistence)
    backend = backends.check_backend("cubical_persistence", backend)
    threads = 0 if num_threads is None else check_int("num_threads", num_threads, minimum=1)
    lead, (H, W) = x.shape[:-2], x.shape[-2:]
    flat = x.reshape(-1, H, W)
    N = flat.shape[0]
    pixels, dim, counts = torch.ops.topoot.persistence_pixels(
        flat.detach(), wanted, construction, filtration, min_persistence, backend, threads
    )
    K = pixels.shape[1]
    gathered = flat.reshape(N, H * W).gather(1, pixels.clamp(min=0).reshape(N, 2 * K)).reshape(N, K, 2)
    nan = torch.full_like(gathered, float("nan"))
    values = torch.where(pixels >= 0, gathered, nan)
    essential = (dim >= 0) & (pixels[..., 1] < 0)
    inf = float("inf") if filtration == "sublevel" else float("-inf")
    death = torch.where(essential, torch.full_like(values[..., 1], inf), values[..., 1])
    values = torch.stack([values[..., 0], death], -1)
    return DiagramBatch(
        values.reshape(*lead, K, 2),
        pixels.reshape(*lead, K, 2),
        dim.reshape(*lead, K),
        counts.reshape(lead),
        filtration,
    )


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    check_choice("reduction", reduction, REDUCTIONS)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def _check_diagrams(diagrams: Any, name: str = "diagrams") -> DiagramBatch:
    if not isinstance(diagrams, DiagramBatch):
        raise ValueError(f"{name}: expected a DiagramBatch (persistence_diagrams), got {type(diagrams).__name__}")
    return diagrams


def _check_dim(dim: Any) -> int | None:
    return None if dim is None else check_int("dim", dim, minimum=0, maximum=1)


def total_persistence(
    diagrams: DiagramBatch, *, dim: int | None = None, p: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """``sum |d - b|^p`` over each map's finite pairs of dimension ``dim`` (None: every dimension),
    reduced over the batch dimensions (``"none"``: one value per map)."""
    d = _check_diagrams(diagrams)
    p = check_number("p", p, minimum=0, strict=True)
    mask = d.finite(_check_dim(dim))
    pers = d.persistence(mask)
    terms = torch.where(mask, torch.where(mask, pers, 1) ** p, 0)
    return _reduce(terms.sum(-1), reduction)


def betti_loss(diagrams: DiagramBatch, target: Any, *, dim: int, reduction: str = "mean") -> torch.Tensor:
    """Clough et al.'s Betti-number loss (module doc) for ``target`` classes of dimension ``dim``
    (an int, or an int tensor of the batch dimensions' shape)."""
    d = _check_diagrams(diagrams)
    dim = check_int("dim", dim, minimum=0, maximum=1)
    lead = d.counts.shape
    if isinstance(target, torch.Tensor):
        if target.dtype.is_floating_point or target.dtype == torch.bool or target.shape not in (lead, ()):
            raise ValueError(f"target: expected an int or an int tensor of shape {tuple(lead)}")
        if bool((target < 0).any()):
            raise ValueError("target: expected numbers of classes >= 0")
        k = target.to(d.counts.device).expand(lead)
    else:
        k = torch.full(lead, check_int("target", target, minimum=0), dtype=torch.int64, device=d.counts.device)
    mask = d.finite(dim)
    k = (k - d.essential(dim).sum(-1)).clamp(min=0)
    rank = torch.cumsum(mask.to(torch.int64), -1) - 1  # pairs come by decreasing persistence
    kept = mask & (rank < k[..., None])
    pers = d.persistence(mask)
    loss = torch.where(kept, 1 - pers**2, 0) + torch.where(mask & ~kept, pers**2, 0)
    return _reduce(loss.sum(-1), reduction)


def partial_persistence(
    diagrams: DiagramBatch, threshold: float, *, dim: int | None = None, p: float = 1.0, reduction: str = "mean"
) -> torch.Tensor:
    """``sum pers^p`` of the diagram truncated at ``threshold``: sublevel, the pairs born below it,
    ``pers = min(d, threshold) - b``; superlevel, the pairs born above it, ``pers = b - max(d,
    threshold)`` (essential classes included, cut at the threshold)."""
    d = _check_diagrams(diagrams)
    t = check_number("threshold", threshold)
    p = check_number("p", p, minimum=0, strict=True)
    dim = _check_dim(dim)
    real = d.dim >= 0 if dim is None else d.dim == dim
    b = torch.where(real, d.values[..., 0], t)
    death = torch.where(real, d.values[..., 1], t)
    if d.filtration == "sublevel":
        mask = real & (b < t)
        pers = torch.minimum(death, torch.full_like(death, t)) - b
    else:
        mask = real & (b > t)
        pers = b - torch.maximum(death, torch.full_like(death, t))
    terms = torch.where(mask, torch.where(mask, pers, 1) ** p, 0)
    return _reduce(terms.sum(-1), reduction)


def _packed(d: DiagramBatch, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(points [N, K, 2], n [N])``: each map's finite pairs of ``dim`` first (in order), as
    ``(low, high)``, the rest zero; differentiable in the values."""
    K = d.values.shape[-2]
    values, mask = d.values.reshape(-1, K, 2), d.finite(dim).reshape(-1, K)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    pts = values.gather(1, order[..., None].expand(-1, -1, 2))
    real = mask.gather(1, order)
    low = torch.minimum(pts[..., 0], pts[..., 1])
    high = torch.maximum(pts[..., 0], pts[..., 1])
    pts = torch.where(real[..., None], torch.stack([low, high], -1), 0)
    return pts, real.sum(1)


def diagram_distance(
    pred: DiagramBatch,
    target: DiagramBatch,
    *,
    dim: int,
    reg: float = 0.01,
    exact: bool = False,
    reduction: str = "mean",
) -> torch.Tensor:
    """The partial-matching distance between the finite pairs of dimension ``dim`` of ``pred`` and
    ``target`` (same batch shape; ``target`` is held fixed): ``sum`` over matched pairs of
    ``|p - q|^2``, over unmatched points of their squared distance to the diagonal ``(high - low)^2
    / 2``. ``exact=False``: the entropic plan (:func:`topoot_gpu.sinkhorn`, log domain, ``reg``
    on costs scaled by their largest entry) of the diagram costs with the diagonal
    (``diagram_costs(kind="diagonal")``), times ``n + m`` so that each point carries mass one;
    ``exact=True``: the optimal matching (SciPy's ``linear_sum_assignment`` on the augmented
    ``(n + m) x (n + m)`` costs; small diagrams). Differentiable in ``pred`` (the matching held
    fixed)."""
    pred, target = _check_diagrams(pred, "pred"), _check_diagrams(target, "target")
    dim = check_int("dim", dim, minimum=0, maximum=1)
    reg = check_number("reg", reg, minimum=0, strict=True)
    if pred.counts.shape != target.counts.shape:
        raise ValueError(f"target: batch shape {tuple(target.counts.shape)} != pred's {tuple(pred.counts.shape)}")
    P, n = _packed(pred, dim)
    Q, m = _packed(target, dim)
    Q = Q.detach().to(P.dtype)
    lead = pred.counts.shape
    if exact:
        loss = torch.stack([_exact_matching(P[k, : int(n[k])], Q[k, : int(m[k])]) for k in range(len(P))])
        return _reduce(loss.reshape(lead), reduction)
    M, a, b = padded_diagram_costs(P.double(), n, Q.double(), m, kind="diagonal")
    scale = M.detach().flatten(1).amax(1).clamp(min=1e-300)[:, None, None]
    plan = sinkhorn(a, b, (M / scale).detach(), reg=reg, domain="log", max_iter=10000, stop_thr=1e-7).plan
    total = (n + m).to(M.dtype)
    loss = (plan * M).flatten(1).sum(1) * total
    return _reduce(loss.to(P.dtype).reshape(lead), reduction)


def _exact_matching(P: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """The optimal partial matching cost of two small diagrams (module doc), differentiable in ``P``."""
    optimize = backends.require("scipy.optimize", "test", "scipy")
    n, m = len(P), len(Q)
    to_diag_p = (P[:, 1] - P[:, 0]) ** 2 / 2
    to_diag_q = (Q[:, 1] - Q[:, 0]) ** 2 / 2
    pair = ((P[:, None, :] - Q[None, :, :]) ** 2).sum(-1)
    big = np.inf
    C = np.zeros((n + m, m + n))
    C[:n, :m] = pair.detach().cpu().numpy()
    C[:n, m:] = big
    C[n:, :m] = big
    C[np.arange(n), m + np.arange(n)] = to_diag_p.detach().cpu().numpy()
    C[n + np.arange(m), np.arange(m)] = to_diag_q.detach().cpu().numpy()
    rows, cols = optimize.linear_sum_assignment(np.where(np.isinf(C), 1e300, C))
    total = P.new_zeros(())
    for r, c in zip(rows.tolist(), cols.tolist()):
        if r < n and c < m:
            total = total + pair[r, c]
        elif r < n:
            total = total + to_diag_p[r]
        elif c < m:
            total = total + to_diag_q[c]
    return total
