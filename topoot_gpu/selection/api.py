"""Pseudo-labels: the released TopoOT selection (SPEC 4), batched.

For a batch of maps: every level map of every image goes through
:func:`topoot_gpu.cubical_persistence` in one call per filtration; every transport problem of the
batch goes through one :func:`topoot_gpu.best_stability` call per step (all intra-filtration
comparisons, then all cross-filtration ones); ranking and back-projection are vectorised over the
batch. Both calls take the backends given to :func:`pseudo_labels`, so every backend of those
stages is reachable from here. It is torch code on the persistence backend's device: with the GPU
backends, CUDA maps stay on the GPU throughout and the host waits only for the reads
:func:`host_reads` lists (and those of the backends, each documented where it happens).
:func:`topoot_gpu.selection.reference.released_pseudo_label` is the same computation written
plainly for one map with GUDHI and POT.

Choices where the SPEC is silent (also in the reference):

* with ``cost="diagonal"``, a candidate's best stability is taken over the real points of the
  other diagram only (a match to the diagonal is no match);
* when only one filtration has candidates, they are ranked with the SPEC's "never compared"
  values ``S_best = 0`` and ``C_best = +inf``, i.e. by persistence;
* the ranking's sort is stable, so exact ties keep list order: level maps in order and, within a
  level map, candidates in increasing ``(low, high)``. The released code inherits GUDHI's internal
  pair order there, which no contract fixes; a canonical order makes the top-m cut and the choice
  independent of it (identical points are interchangeable: they get identical plan rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import backends
from ..core.host import to_host
from ..core.maps import normalise_maps, quantised_level_maps
from ..core.validation import MapBatch, check_config, check_maps, check_threads
from ..persistence.api import pairs_of_valid_maps
from ..transport.api import best_stability
from .candidates import Candidate, Selection
from .config import SelectionConfig

FILTRATIONS = ("sublevel", "superlevel")
TIE = 1e-12  # SPEC 4.3: stabilities within this are a tie


@dataclass(frozen=True)
class _Backends:
    """The resolved persistence and transport backends of one selection and where each runs."""

    persistence: str
    persistence_device: torch.device
    transport: str
    transport_device: torch.device


#: The selection's own host reads (sizes and the result) per filtration, besides its backends'
#: (:func:`host_reads`).
HOST_READS_PER_FILTRATION = 3


def host_reads(config: SelectionConfig) -> int:
    """How many times the selection's own code (not its persistence and transport calls) waits for
    the device, for any batch: per filtration with candidates, the number of finite pairs (one
    ``nonzero``), the candidate counts per image and level map (one ``[B, L]`` copy, which sizes
    every ragged index after it) and the top-m cut (one ``nonzero``), plus, with
    ``level_mode="threshold"``, one ``nonzero`` per truncation; then one copy of the chosen
    candidates and thresholds (``[B, 10]``) for the :class:`Selection`. Everything else (level
    maps, sorting, ranking, the best-stability updates, back-projection) is launched without
    waiting."""
    per = HOST_READS_PER_FILTRATION + (config.n_level_maps if config.level_mode == "threshold" else 0)
    return per * sum(1 for d in (config.sub_dims, config.sup_dims) if d) + 1


@dataclass
class _Table:
    """Candidates of one filtration, one row each, ordered by (image, level, low, high), as
    tensors on one device. ``sizes`` (host ``[B, L]``) counts each image's rows per level map."""

    image: torch.Tensor
    level: torch.Tensor
    dim: torch.Tensor
    low: torch.Tensor
    high: torch.Tensor
    birth_pixel: torch.Tensor
    death_pixel: torch.Tensor
    S: torch.Tensor
    C: torch.Tensor

    def take(self, idx: torch.Tensor) -> _Table:
        return _Table(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @property
    def persistence(self) -> torch.Tensor:
        return self.high - self.low


def _lexsort(*keys: torch.Tensor) -> torch.Tensor:
    """``numpy.lexsort`` on tensors (the last key primary): stable sorts, least significant first."""
    order = torch.argsort(keys[0], stable=True)
    for k in keys[1:]:
        order = order[torch.argsort(k[order], stable=True)]
    return order


def _counts(group: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Rows per group (``bincount`` without reading the largest group on the host)."""
    return torch.zeros(n_groups, dtype=torch.int64, device=group.device).index_add_(0, group, torch.ones_like(group))


def _positions(group: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each group's first row and each row's position within its group (rows sorted by group)."""
    sizes = _counts(group, n_groups)
    starts = torch.cumsum(sizes, 0) - sizes
    return starts, torch.arange(len(group), device=group.device) - starts[group]


def _candidates(levels: torch.Tensor, filtration: str, dims: tuple[int, ...], config: SelectionConfig, run: _Backends):
    """A filtration's candidates of every level map (:class:`_Table`) and their counts per image and
    level map (``[B, L]``, on the device and on the host)."""
    B, L = levels.shape[:2]
    d = pairs_of_valid_maps(
        levels.reshape(B * L, *levels.shape[2:]), filtration=filtration, construction=config.construction,
        dims=dims, backend=run.persistence,
    )  # fmt: skip
    dev = d.image.device
    finite = torch.nonzero(d.death_pixel >= 0).flatten()  # host read: the number of finite pairs
    b, e = d.birth[finite], d.death[finite]
    rows = dict(
        image=torch.div(d.image[finite], L, rounding_mode="floor"),
        level=d.image[finite] % L,
        dim=d.dim[finite],
        low=torch.minimum(b, e),
        high=torch.maximum(b, e),
        birth_pixel=d.birth_pixel[finite],
        death_pixel=d.death_pixel[finite],
    )
    if config.level_mode == "threshold":
        # One map per image; level t < len(levels) is its diagram truncated at levels[t].
        parts = []
        for t, tau in enumerate((*config.levels, None)):
            if tau is None:
                sel = torch.ones_like(b, dtype=torch.bool)
            elif filtration == "sublevel":
                sel = (b <= tau) & (e <= tau)
            else:
                sel = (b >= tau) & (e >= tau)
            idx = torch.nonzero(sel).flatten()  # host read: the truncation's size
            parts.append({k: v[idx] for k, v in rows.items()} | {"level": torch.full_like(idx, t)})
        rows = {k: torch.cat([p[k] for p in parts]) for k in rows}
    order = _lexsort(rows["high"], rows["low"], rows["level"], rows["image"])
    n = len(order)
    table = _Table(
        **{k: v[order] for k, v in rows.items()},
        S=torch.zeros(n, dtype=torch.float64, device=dev),
        C=torch.full((n,), math.inf, dtype=torch.float64, device=dev),
    )
    n_levels = config.n_level_maps  # threshold mode: L truncations of one map
    sizes = _counts(table.image * n_levels + table.level, B * n_levels).reshape(B, n_levels)
    return table, sizes, to_host(sizes)  # host read: the counts


def _rows(starts: torch.Tensor, sizes: torch.Tensor, total: int) -> torch.Tensor:
    """The table rows ``starts[k] .. starts[k] + sizes[k] - 1`` of every problem ``k``, in order
    (``total = sum(sizes)``, known on the host, so nothing waits for the device)."""
    prob = torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes, output_size=total)
    first = torch.cumsum(sizes, 0) - sizes
    return starts[prob] + torch.arange(total, device=sizes.device) - first[prob]


def _best_stabilities(P, p_sizes, Q, q_sizes, config: SelectionConfig, run: _Backends):
    """Every problem ``(P_k, Q_k)`` of a step in one :func:`topoot_gpu.best_stability` call: for every
    point of P its best stability over its row and the cost there, and the same for every point of
    Q over its column (SPEC 4.3 and 4.5); a point whose problem has no partner gets ``(0, +inf)``.
    Results on ``P``'s device."""
    dev, home = run.transport_device, P.device
    res = best_stability(
        P.to(dev), p_sizes.to(dev), Q.to(dev), q_sizes.to(dev), cost=config.cost, reg=config.reg,
        max_iter=config.max_iter, stop_thr=config.stop_thr, backend=run.transport, num_threads=check_threads(None),
        max_memory=config.max_memory,
    )  # fmt: skip
    return (res.s_row.to(home), res.c_row.to(home)), (res.s_col.to(home), res.c_col.to(home))


def _points(t: _Table, rows: torch.Tensor | None = None) -> torch.Tensor:
    pts = torch.stack([t.low, t.high], 1)
    return pts if rows is None else pts[rows]


def _intra(tables: dict[str, tuple[_Table, torch.Tensor, np.ndarray]], L: int, config, run: _Backends) -> None:
    """SPEC 4.3: the comparisons of every pair of level maps k < l, both filtrations, all images,
    in one solver call (an image with no candidates on one side is a problem of size 0, which
    changes nothing); then the best-stability updates, comparison by comparison in order (a
    candidate's comparisons are ordered by (k, l); images are independent)."""
    jobs = []  # (filtration, rows of the k side, its problems' sizes, the same for the l side)
    for f, (_, size, sizes) in tables.items():
        start = (torch.cumsum(size.flatten(), 0) - size.flatten()).reshape(size.shape)
        for k in range(L):
            for j in range(k + 1, L):
                if sizes[:, k].any() and sizes[:, j].any():
                    rk = _rows(start[:, k], size[:, k], int(sizes[:, k].sum()))
                    rj = _rows(start[:, j], size[:, j], int(sizes[:, j].sum()))
                    jobs.append((f, rk, size[:, k], rj, size[:, j]))
    if not jobs:
        return
    (s_row, c_row), (s_col, c_col) = _best_stabilities(
        torch.cat([_points(tables[f][0], rk) for f, rk, _, _, _ in jobs]), torch.cat([nk for _, _, nk, _, _ in jobs]),
        torch.cat([_points(tables[f][0], rl) for f, _, _, rl, _ in jobs]), torch.cat([nl for _, _, _, _, nl in jobs]),
        config, run,
    )  # fmt: skip
    ro = co = 0
    for f, rk, _, rl, _ in jobs:
        t = tables[f][0]
        for rows, s, c in (
            (rk, s_row[ro : ro + len(rk)], c_row[ro : ro + len(rk)]),
            (rl, s_col[co : co + len(rl)], c_col[co : co + len(rl)]),
        ):
            S, C = t.S[rows], t.C[rows]
            better = s > S + TIE
            tie = (s - S).abs() <= TIE
            t.C[rows] = torch.where(better, c, torch.where(tie, torch.minimum(C, c), C))
            t.S[rows] = torch.where(better, s, S)
        ro += len(rk)
        co += len(rl)


def _rank(group: torch.Tensor, n_groups: int, S: torch.Tensor, C: torch.Tensor, pers: torch.Tensor):
    """SPEC 4.4 within each group: score = S/S_max * pers/P_max (zero maxima count as 1), stable
    sort by (-score, -S, C, -pers). Returns the order (grouped) and the scores."""
    zeros = torch.zeros(n_groups, dtype=S.dtype, device=S.device)
    s_max = zeros.scatter_reduce(0, group, S, "amax")
    p_max = zeros.scatter_reduce(0, group, pers, "amax")
    s_max = torch.where(s_max == 0, 1.0, s_max)
    p_max = torch.where(p_max == 0, 1.0, p_max)
    score = (S / s_max[group]) * (pers / p_max[group])
    return _lexsort(-pers, C, -S, -score, group), score


def pseudo_labels(
    maps: Any,
    *,
    config: SelectionConfig | None = None,
    persistence_backend: str = "auto",
    transport_backend: str = "auto",
) -> Selection:
    """Pseudo-labels of a batch of anomaly maps, the released TopoOT selection (SPEC 4).

    Args:
        maps: ``[B, H, W]`` or ``[H, W]``, numpy or torch (CPU or CUDA), any floating dtype, finite.
        config: a :class:`SelectionConfig` (defaults: the released implementation).
        persistence_backend: the backend of :func:`topoot_gpu.cubical_persistence` that computes the
            level maps' diagrams (``"auto"``, ``"cpp"``, ``"cuda"``, ``"triton"``, ``"reference"``).
        transport_backend: the backend of :func:`topoot_gpu.best_stability` that solves the
            transport steps (``"auto"``, ``"cpp"``, ``"torch"``, ``"triton"``, ``"reference"``).
            Each backend runs on the maps' device (``"auto"``: see :mod:`topoot_gpu.core.backends`);
            one that does not take it raises a ``ValueError``.

    Returns:
        A :class:`Selection`: bool labels on the input's device and kind, the chosen candidate
        and the threshold of each image. :func:`topoot_gpu.selection.reference.pseudo_labels` is
        the same computation with GUDHI and POT, map by map.
    """
    config = check_config(config, SelectionConfig)
    batch = check_maps(maps)
    run = resolve_backends(persistence_backend, transport_backend, batch.device)
    labels, candidates, thresholds = select(batch, config, run)
    return Selection(batch.to_caller(labels), candidates, thresholds)


def resolve_backends(persistence_backend: str, transport_backend: str, device: torch.device) -> _Backends:
    """The selection's two backends for maps on ``device`` (``ValueError`` naming the argument)."""
    persistence = backends.resolve("cubical_persistence", persistence_backend, device, "persistence_backend")
    transport = backends.resolve("best_stability", transport_backend, device, "transport_backend")
    return _Backends(*persistence, *transport)


def select(batch: MapBatch, config: SelectionConfig, run: _Backends) -> tuple[torch.Tensor, list, np.ndarray]:
    """The selection of validated maps: bool labels ``[B, H, W]`` on the maps' device, the chosen
    candidates and the thresholds. Runs on the persistence backend's device (the maps' device for
    a GPU backend: nothing but :func:`host_reads` sizes and the result leaves it)."""
    dev = run.persistence_device
    a = normalise_maps(batch.tensor.to(dev))
    B = a.shape[0]
    if config.level_mode == "quantise":
        levels = quantised_level_maps(a, config.levels)
    else:
        levels = a[:, None]
    L = config.n_level_maps
    dims = {"sublevel": config.sub_dims, "superlevel": config.sup_dims}
    tables = {f: _candidates(levels, f, dims[f], config, run) for f in FILTRATIONS if dims[f]}
    _intra(tables, L, config, run)

    # SPEC 4.4: rank each (image, filtration) over all its level maps, keep the first top_m
    # (kept in ranked order, grouped by image).
    kept = {}
    for f, (t, _, _) in tables.items():
        order, _ = _rank(t.image, B, t.S, t.C, t.persistence)
        _, pos = _positions(t.image[order], B)
        kept[f] = t.take(order[torch.nonzero(pos < config.top_m).flatten()])  # host read: the cut

    # SPEC 4.5: across filtrations, one solver call over every image; an image with one list
    # empty is a problem of size 0, whose points get the "never compared" S = 0, C = +inf.
    final_parts = list(kept.items())
    for _, t in final_parts:
        t.S.zero_()
        t.C.fill_(math.inf)
    if len(final_parts) == 2:
        (_, sub), (_, sup) = final_parts
        (sub.S, sub.C), (sup.S, sup.C) = _best_stabilities(
            _points(sub), _counts(sub.image, B), _points(sup), _counts(sup.image, B), config, run
        )

    # Final ranking per image over the union (sublevel list first, as in the reference).
    names = [f for f, _ in final_parts]
    union = _Table(*(torch.cat([getattr(t, f) for _, t in final_parts]) for f in _Table.__dataclass_fields__))
    fil = torch.cat([torch.full_like(t.image, i) for i, (_, t) in enumerate(final_parts)])
    image_order = torch.argsort(union.image, stable=True)
    union, fil = union.take(image_order), fil[image_order]
    order, score = _rank(union.image, B, union.S, union.C, union.persistence)
    labels = torch.zeros(a.shape, dtype=torch.bool, device=dev)
    if not len(order):
        return labels.to(batch.device), [None] * B, np.full(B, np.nan)
    first, _ = _positions(union.image[order], B)
    count = _counts(union.image, B)
    for r in range(config.top_k):
        has = count > r
        j = order[(first + r).clamp(max=len(order) - 1)]
        high = union.high[j]
        delta = torch.where(fil[j] == 0, torch.full_like(high, config.delta(names[0])), config.delta(names[-1]))
        thr = torch.where(has, (high - delta).clamp(min=0.0), math.nan)
        labels |= has[:, None, None] & (a >= thr[:, None, None])
        if r == 0:
            candidates, thresholds = _chosen(union, fil, score, names, has, j, thr)
    return labels.to(batch.device), candidates, thresholds


def _chosen(union: _Table, fil, score, names, has, j, thr) -> tuple[list[Candidate | None], np.ndarray]:
    """The first-ranked candidate of each image (``has``: whether it has one, ``j``: its row) and its
    threshold ``thr``, in one host read."""
    fields = (union.dim, union.low, union.high, union.birth_pixel, union.death_pixel, union.level, union.S, union.C)
    table = torch.stack([has.double(), thr, fil[j].double(), score[j], *(x[j].double() for x in fields)], 1)
    host = to_host(table)  # host read: the result (indices below 2**53 are exact in float64)
    candidates: list[Candidate | None] = []
    for row in host:
        if not row[0]:
            candidates.append(None)
            continue
        _, _, f, sc, dim, low, high, bp, dp, level, S, C = row
        ints = (int(dim), *map(float, (low, high)), int(bp), int(dp), int(level))
        candidates.append(Candidate(names[int(f)], *ints, float(S), float(C), float(sc)))
    return candidates, np.where(host[:, 0] > 0, host[:, 1], np.nan)
