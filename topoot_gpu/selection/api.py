"""Pseudo-labels: the released TopoOT selection (SPEC 4), batched.

For a batch of maps: every level map of every image goes through
:func:`topoot_gpu.cubical_persistence` in one call per filtration; every transport problem of the
batch goes through one :func:`topoot_gpu.best_stability` call per step (all intra-filtration
comparisons, then all cross-filtration ones); ranking and back-projection are vectorised over the
batch. Both calls take the backends given to :func:`pseudo_labels`, so every backend of those
stages is reachable from here. :func:`topoot_gpu.selection.reference.released_pseudo_label` is the
same computation written plainly for one map with GUDHI and POT.

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

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core import backends
from ..core.maps import normalise_maps, quantised_level_maps
from ..core.validation import MapBatch, check_config, check_maps, check_threads
from ..persistence.api import cubical_persistence
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


@dataclass
class _Table:
    """Candidates of one filtration, one row each, ordered by (image, level, low, high)."""

    image: np.ndarray
    level: np.ndarray
    dim: np.ndarray
    low: np.ndarray
    high: np.ndarray
    birth_pixel: np.ndarray
    death_pixel: np.ndarray
    S: np.ndarray
    C: np.ndarray

    def take(self, idx: np.ndarray) -> _Table:
        return _Table(*(getattr(self, f)[idx] for f in self.__dataclass_fields__))

    @property
    def persistence(self) -> np.ndarray:
        return self.high - self.low


def _candidates(
    levels: np.ndarray, filtration: str, dims: tuple[int, ...], config: SelectionConfig, run: _Backends
) -> _Table:
    B, L = levels.shape[:2]
    flat = levels.reshape(B * L, *levels.shape[2:])
    d = cubical_persistence(
        torch.from_numpy(flat).to(run.persistence_device), filtration=filtration, construction=config.construction,
        dims=dims, backend=run.persistence,
    )  # fmt: skip
    keep = d.death_pixel >= 0  # finite pairs only
    image, level = np.divmod(d.image[keep], L)
    b, e = d.birth[keep], d.death[keep]
    rows = dict(
        image=image,
        level=level,
        dim=d.dim[keep],
        low=np.minimum(b, e),
        high=np.maximum(b, e),
        birth_pixel=d.birth_pixel[keep],
        death_pixel=d.death_pixel[keep],
    )
    if config.level_mode == "threshold":
        # One map per image; level t < len(levels) is its diagram truncated at levels[t].
        parts = []
        for t, tau in enumerate((*config.levels, None)):
            if tau is None:
                sel = np.ones(len(b), dtype=bool)
            elif filtration == "sublevel":
                sel = (b <= tau) & (e <= tau)
            else:
                sel = (b >= tau) & (e >= tau)
            parts.append({k: v[sel] for k, v in rows.items()} | {"level": np.full(int(sel.sum()), t)})
        rows = {k: np.concatenate([p[k] for p in parts]) for k in rows}
    order = np.lexsort((rows["high"], rows["low"], rows["level"], rows["image"]))
    n = len(order)
    return _Table(**{k: v[order] for k, v in rows.items()}, S=np.zeros(n), C=np.full(n, np.inf))


def _group_positions(group: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Sizes of the groups and each row's position within its group (rows sorted by group)."""
    sizes = np.bincount(group, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    return sizes, np.arange(len(group)) - starts[group]


def _ragged(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The table rows ``starts[k] .. starts[k] + sizes[k] - 1`` of every problem ``k``, in order."""
    prob = np.repeat(np.arange(len(sizes)), sizes)
    return starts[prob] + np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)


def _best_stabilities(P: np.ndarray, p_sizes: np.ndarray, Q: np.ndarray, q_sizes: np.ndarray, config, run: _Backends):
    """Every problem ``(P_k, Q_k)`` of a step in one :func:`topoot_gpu.best_stability` call: for every
    point of P its best stability over its row and the cost there, and the same for every point of
    Q over its column (SPEC 4.3 and 4.5), as host arrays."""
    dev = run.transport_device
    res = best_stability(
        torch.from_numpy(np.ascontiguousarray(P)).to(dev), torch.from_numpy(p_sizes).to(dev),
        torch.from_numpy(np.ascontiguousarray(Q)).to(dev), torch.from_numpy(q_sizes).to(dev), cost=config.cost,
        reg=config.reg, max_iter=config.max_iter, stop_thr=config.stop_thr, backend=run.transport,
        num_threads=check_threads(None), max_memory=config.max_memory,
    )  # fmt: skip
    return (res.s_row.cpu().numpy(), res.c_row.cpu().numpy()), (res.s_col.cpu().numpy(), res.c_col.cpu().numpy())


def _intra(tables: dict[str, _Table], B: int, L: int, config: SelectionConfig, run: _Backends) -> None:
    """SPEC 4.3: the comparisons of every pair of level maps k < l, both filtrations, all images,
    in one solver call; then the best-stability updates, comparison by comparison in order (a
    candidate's comparisons are ordered by (k, l); images are independent)."""
    jobs = []  # (filtration, rows of the k side, its problems' sizes, the same for the l side)
    for f, t in tables.items():
        sizes, _ = _group_positions(t.image * L + t.level, B * L)
        sizes = sizes.reshape(B, L)
        starts = (np.cumsum(sizes.ravel()) - sizes.ravel()).reshape(B, L)
        for k in range(L):
            for j in range(k + 1, L):
                imgs = np.flatnonzero((sizes[:, k] > 0) & (sizes[:, j] > 0))
                if len(imgs):
                    jobs.append(
                        (
                            f,
                            _ragged(starts[imgs, k], sizes[imgs, k]),
                            sizes[imgs, k],
                            _ragged(starts[imgs, j], sizes[imgs, j]),
                            sizes[imgs, j],
                        )
                    )
    if not jobs:
        return
    pts = {f: np.stack([t.low, t.high], 1) for f, t in tables.items()}
    (s_row, c_row), (s_col, c_col) = _best_stabilities(
        np.concatenate([pts[f][rk] for f, rk, _, _, _ in jobs]), np.concatenate([nk for _, _, nk, _, _ in jobs]),
        np.concatenate([pts[f][rl] for f, _, _, rl, _ in jobs]), np.concatenate([nl for _, _, _, _, nl in jobs]),
        config, run,
    )  # fmt: skip
    ro = co = 0
    for f, rk, _, rl, _ in jobs:
        t = tables[f]
        for rows, s, c in (
            (rk, s_row[ro : ro + len(rk)], c_row[ro : ro + len(rk)]),
            (rl, s_col[co : co + len(rl)], c_col[co : co + len(rl)]),
        ):
            better = s > t.S[rows] + TIE
            tie = np.abs(s - t.S[rows]) <= TIE
            t.C[rows] = np.where(better, c, np.where(tie, np.minimum(t.C[rows], c), t.C[rows]))
            t.S[rows] = np.where(better, s, t.S[rows])
        ro += len(rk)
        co += len(rl)


def _rank(group: np.ndarray, n_groups: int, S: np.ndarray, C: np.ndarray, pers: np.ndarray):
    """SPEC 4.4 within each group: score = S/S_max * pers/P_max (zero maxima count as 1), stable
    sort by (-score, -S, C, -pers). Returns the order (grouped) and the scores."""
    s_max = np.zeros(n_groups)
    p_max = np.zeros(n_groups)
    np.maximum.at(s_max, group, S)
    np.maximum.at(p_max, group, pers)
    s_max[s_max == 0] = 1.0
    p_max[p_max == 0] = 1.0
    score = (S / s_max[group]) * (pers / p_max[group])
    return np.lexsort((-pers, C, -S, -score, group)), score


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
    candidates and the thresholds."""
    labels, candidates, thresholds = _select(normalise_maps(batch.numpy()), config, run)
    return torch.from_numpy(labels).to(batch.device), candidates, thresholds


def _select(a: np.ndarray, config: SelectionConfig, run: _Backends):
    B = a.shape[0]
    if config.level_mode == "quantise":
        levels = quantised_level_maps(a, config.levels)
    else:
        levels = a[:, None]
    L = config.n_level_maps
    dims = {"sublevel": config.sub_dims, "superlevel": config.sup_dims}
    tables = {f: _candidates(levels, f, dims[f], config, run) for f in FILTRATIONS if dims[f]}
    _intra(tables, B, L, config, run)

    # SPEC 4.4: rank each (image, filtration) over all its level maps, keep the first top_m
    # (kept in ranked order, grouped by image).
    kept = {}
    for f, t in tables.items():
        order, _ = _rank(t.image, B, t.S, t.C, t.persistence)
        _, pos = _group_positions(t.image[order], B)
        kept[f] = t.take(order[pos < config.top_m])

    # SPEC 4.5: across filtrations, one solver call for the images with both lists. A list
    # with no partner is ranked with the "never compared" values S = 0, C = +inf.
    final_parts = list(kept.items())
    for _, t in final_parts:
        t.S[:] = 0.0
        t.C[:] = np.inf
    if len(final_parts) == 2:
        (_, sub), (_, sup) = final_parts
        n_sub, _ = _group_positions(sub.image, B)
        n_sup, _ = _group_positions(sup.image, B)
        both = np.flatnonzero((n_sub > 0) & (n_sup > 0))
        if len(both):
            rs = _ragged((np.cumsum(n_sub) - n_sub)[both], n_sub[both])
            rq = _ragged((np.cumsum(n_sup) - n_sup)[both], n_sup[both])
            (s_row, c_row), (s_col, c_col) = _best_stabilities(
                np.stack([sub.low, sub.high], 1)[rs], n_sub[both], np.stack([sup.low, sup.high], 1)[rq], n_sup[both],
                config, run,
            )
            sub.S[rs], sub.C[rs] = s_row, c_row
            sup.S[rq], sup.C[rq] = s_col, c_col

    # Final ranking per image over the union (sublevel list first, as in the reference).
    fil = np.concatenate([np.full(len(t.image), i) for i, (_, t) in enumerate(final_parts)] + [np.zeros(0, int)])
    union = _concat([t for _, t in final_parts])
    image_order = np.argsort(union.image, kind="stable")
    union, fil = union.take(image_order), fil[image_order]
    order, score = _rank(union.image, B, union.S, union.C, union.persistence)
    img_sorted = union.image[order]
    _, pos = _group_positions(img_sorted, B)
    names = [f for f, _ in final_parts]
    labels = np.zeros(a.shape, dtype=bool)
    candidates: list[Candidate | None] = [None] * B
    thresholds = np.full(B, np.nan)
    deltas = np.array([config.delta(f) for f in names])
    for r in range(config.top_k):
        chosen = order[pos == r]
        img = union.image[chosen]
        thr = np.maximum(0.0, union.high[chosen] - deltas[fil[chosen]])
        labels[img] |= a[img] >= thr[:, None, None]
        if r == 0:
            thresholds[img] = thr
            for j, i in zip(chosen, img):
                candidates[i] = Candidate(
                    names[fil[j]],
                    int(union.dim[j]),
                    float(union.low[j]),
                    float(union.high[j]),
                    int(union.birth_pixel[j]),
                    int(union.death_pixel[j]),
                    int(union.level[j]),
                    float(union.S[j]),
                    float(union.C[j]),
                    float(score[j]),
                )
    return labels, candidates, thresholds


def _concat(tables: list[_Table]) -> _Table:
    fields = _Table.__dataclass_fields__
    if not tables:
        return _Table(
            *(
                np.zeros(
                    0, dtype=np.int64 if f in ("image", "level", "dim", "birth_pixel", "death_pixel") else np.float64
                )
                for f in fields
            )
        )
    return _Table(*(np.concatenate([getattr(t, f) for t in tables]) for f in fields))
