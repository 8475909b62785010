"""The released TopoOT pseudo-label (SPEC 4) written plainly with GUDHI and POT, one map at a time.

The ground truth the batched selection is checked and timed against (SPEC 6): one GUDHI
``CubicalComplex`` per level map and filtration (:mod:`topoot_gpu.persistence.reference`), one POT
``ot.sinkhorn`` per plan (:mod:`topoot_gpu.transport.reference`), float64 throughout. Imports no
fast path.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..core.validation import check_config, check_maps
from ..persistence.reference import diagram_fields
from ..transport.reference import stability_pot
from .candidates import Candidate, Selection
from .config import SelectionConfig


def normalise(anomaly_map: np.ndarray) -> np.ndarray:
    """``(A - min) / (max - min)`` in float64; a constant map becomes zeros. Where ``max - min``
    overflows, the map is divided by a power of two above its largest magnitude first (exactly, ``ldexp``) (the
    released code returns NaN there; SPEC 4 asks for finite maps in, a label out)."""
    a = np.asarray(anomaly_map, dtype=np.float64)
    lo, hi = a.min(), a.max()
    if hi == lo:
        return np.zeros_like(a)
    with np.errstate(over="ignore"):
        span = hi - lo
    if not np.isfinite(span):
        e = np.frexp(max(abs(lo), abs(hi)))[1]
        a, lo, hi = np.ldexp(a, -e), np.ldexp(lo, -e), np.ldexp(hi, -e)
    return (a - lo) / (hi - lo)


def level_maps(a: np.ndarray, levels) -> list[np.ndarray]:
    """The map quantised to each ``k`` of ``levels`` (round half to even), then the map itself."""
    out = []
    lo, hi = a.min(), a.max()
    for k in levels:
        if k <= 1 or hi == lo:
            out.append(a)
        else:
            s = (hi - lo) / (k - 1)
            out.append(np.round((a - lo) / s) * s + lo)
    return out + [a]


def candidates_gudhi(q: np.ndarray, filtration: str, dims, construction: str, tau=None) -> list[dict]:
    """Finite pairs of the wanted dimensions of one level map (GUDHI, one complex) as candidate
    dicts (filtration, dim, low, high, birth/death pixel), in increasing ``(low, high)`` order.

    ``tau``: the diagram truncated at that threshold (paper text): pairs born beyond ``tau`` are
    dropped and those dying beyond it become essential (so are no candidates).
    """
    superlevel = filtration == "superlevel"
    conn8_h0 = construction == "T"
    maps = np.atleast_2d(q)[None]  # GUDHI would also take a 1-D strip; the reading of its cells wants 2-D
    fields = diagram_fields(maps, superlevel=superlevel, conn8_h0=conn8_h0, dim0=0 in dims, dim1=1 in dims)
    rows = []
    for _, d, b, e, bp, dp in zip(*(f.tolist() for f in fields)):
        if dp < 0:
            continue
        if tau is not None and ((b < tau or e < tau) if superlevel else (b > tau or e > tau)):
            continue
        rows.append(
            {"filtration": filtration, "dim": d, "low": min(b, e), "high": max(b, e), "birth_pixel": bp,
             "death_pixel": dp}
        )  # fmt: skip
    # Exact ties in the ranking fall back on this order, which must not be GUDHI's internal one
    # (see topoot_gpu.selection.api).
    return sorted(rows, key=lambda c: (c["low"], c["high"]))


def _stability(P: list[dict], Q: list[dict], config: SelectionConfig) -> tuple[np.ndarray, np.ndarray]:
    points = [np.array([[c["low"], c["high"]] for c in side]) for side in (P, Q)]
    S, M, _ = stability_pot(
        *points, cost=config.cost, reg=config.reg, max_iter=config.max_iter, stop_thr=config.stop_thr
    )
    return S, M


def rank(cands: list[dict]) -> list[dict]:
    """``and_product`` ranking: score = S/S_max * persistence/P_max; stable sort by
    (-score, -S_best, C_best, -persistence)."""
    s_max = max((c["S"] for c in cands), default=0.0) or 1.0
    p_max = max((c["high"] - c["low"] for c in cands), default=0.0) or 1.0
    for c in cands:
        c["score"] = (c["S"] / s_max) * ((c["high"] - c["low"]) / p_max)
    return sorted(cands, key=lambda c: (-c["score"], -c["S"], c["C"], -(c["high"] - c["low"])))


def released_pseudo_label(anomaly_map: np.ndarray, config: SelectionConfig | None = None):
    """The released TopoOT pseudo-label of one map: ``(label, candidate, margin)``.

    ``label`` is a bool ``[H, W]`` array; ``candidate`` the chosen :class:`Candidate` or None;
    ``margin`` how far the choice is from a tie that matters: against the best candidate that
    would give another label (another filtration or peak level), the largest gap over the
    ranking's sort keys (score, S, C, persistence); ``inf`` without such a rival. Within 1e-9 on
    all of them, rounding decides the order.
    """
    config = config or SelectionConfig()
    a = normalise(anomaly_map)
    if config.level_mode == "quantise":
        maps = level_maps(a, [int(k) for k in config.levels])
        taus = [None] * len(maps)
    else:
        maps = [a] * (len(config.levels) + 1)
        taus = list(config.levels) + [None]
    kept = {}
    for filtration, dims in (("sublevel", config.sub_dims), ("superlevel", config.sup_dims)):
        per_level = []
        for level, (q, tau) in enumerate(zip(maps, taus)):
            rows = candidates_gudhi(q, filtration, dims, config.construction, tau) if dims else []
            per_level.append([{**c, "level": level, "S": 0.0, "C": np.inf} for c in rows])
        for k in range(len(per_level)):
            for j in range(k + 1, len(per_level)):
                A, B = per_level[k], per_level[j]
                if not A or not B:
                    continue
                S, M = _stability(A, B, config)
                for side, S_side, M_side in ((A, S, M), (B, S.T, M.T)):
                    for i, c in enumerate(side):
                        best = int(np.argmax(S_side[i]))
                        s, cost = S_side[i, best], M_side[i, best]
                        if s > c["S"] + 1e-12:
                            c["S"], c["C"] = s, cost
                        elif abs(s - c["S"]) <= 1e-12:
                            c["C"] = min(c["C"], cost)
        kept[filtration] = rank([c for level in per_level for c in level])[: config.top_m]
    sub, sup = kept["sublevel"], kept["superlevel"]
    if sub and sup:
        S, M = _stability(sub, sup, config)
        final = []
        for side, S_side, M_side in ((sub, S, M), (sup, S.T, M.T)):
            for i, c in enumerate(side):
                best = int(np.argmax(S_side[i]))
                final.append({**c, "S": S_side[i, best], "C": M_side[i, best]})
    else:
        # One list: no cross-filtration comparison, so S_best = 0 and C_best = +inf (the SPEC's
        # "never compared" values), which ranks by persistence.
        final = [{**c, "S": 0.0, "C": np.inf} for c in sub + sup]
    ranked = rank(final)
    label = np.zeros(a.shape, dtype=bool)
    for c in ranked[: config.top_k]:
        label |= a >= max(0.0, c["high"] - config.delta(c["filtration"]))
    if not ranked:
        return label, None, np.inf
    first = ranked[0]
    rival = next((c for c in ranked[1:] if (c["filtration"], c["high"]) != (first["filtration"], first["high"])), None)
    margin = np.inf
    if rival is not None:
        gaps = [abs(first[k] - rival[k]) if first[k] != rival[k] else 0.0 for k in ("score", "S", "C")]
        gaps.append(abs((first["high"] - first["low"]) - (rival["high"] - rival["low"])))
        margin = max(gaps)
    candidate = Candidate(
        first["filtration"], int(first["dim"]), float(first["low"]), float(first["high"]), int(first["birth_pixel"]),
        int(first["death_pixel"]), int(first["level"]), float(first["S"]), float(first["C"]), float(first["score"]),
    )  # fmt: skip
    return label, candidate, margin


def pseudo_labels(maps: Any, *, config: SelectionConfig | None = None) -> Selection:
    """:func:`topoot_gpu.pseudo_labels` computed by :func:`released_pseudo_label`, map by map (host
    inputs; the labels come back in the input's kind)."""
    config = check_config(config, SelectionConfig)
    batch = check_maps(maps)
    labels, candidates, thresholds = [], [], []
    for anomaly_map in batch.numpy():
        label, candidate, _ = released_pseudo_label(anomaly_map, config)
        labels.append(label)
        candidates.append(candidate)
        c = candidate
        thresholds.append(np.nan if c is None else max(0.0, c.high - config.delta(c.filtration)))
    labels_t = torch.from_numpy(np.stack(labels)).to(batch.device)
    return Selection(batch.to_caller(labels_t), candidates, np.array(thresholds))
