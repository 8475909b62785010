"""The released TopoOT pipeline written plainly with GUDHI, POT and PyTorch (SPEC section 6).

Everything here is the ground truth the fast paths are checked and timed against. It is slow on
purpose: one GUDHI ``CubicalComplex`` per map and filtration, one POT call per plan. GUDHI and
POT are test extras, imported when a function here is called.
"""

from __future__ import annotations

import numpy as np


def _import_gudhi():
    try:
        import gudhi
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "backend='reference' needs GUDHI: pip install 'topoot_gpu[test]' (or pip install gudhi)"
        ) from e
    return gudhi


def gudhi_diagram(a: np.ndarray, construction: str, dim0: bool, dim1: bool):
    """Sublevel pairs of one 2-D map from GUDHI, with the pixels GUDHI reports.

    Returns rows ``(dim, birth_pixel, death_pixel)`` (flat C-order indices, ``-1`` for an
    essential death). GUDHI numbers the cells of a 2-D array in Fortran order; the indices are
    converted here.
    """
    gudhi = _import_gudhi()
    H, W = a.shape
    if construction == "T":
        cc = gudhi.CubicalComplex(top_dimensional_cells=a)
    else:
        cc = gudhi.CubicalComplex(vertices=a)
    cc.compute_persistence(homology_coeff_field=2, min_persistence=0)
    regular, essential = (
        cc.cofaces_of_persistence_pairs() if construction == "T" else cc.vertices_of_persistence_pairs()
    )

    def c_order(k: np.ndarray) -> np.ndarray:
        return (k % H) * W + k // H

    rows = []
    for d, wanted in ((0, dim0), (1, dim1)):
        if not wanted:
            continue
        if d < len(regular) and len(regular[d]):
            pairs = c_order(np.asarray(regular[d], dtype=np.int64).reshape(-1, 2))
            pairs = pairs[a.flat[pairs[:, 0]] != a.flat[pairs[:, 1]]]
            rows += [(d, int(b), int(e)) for b, e in pairs]
        if d < len(essential) and len(essential[d]):
            rows += [(d, int(b), -1) for b in c_order(np.asarray(essential[d], dtype=np.int64))]
    return rows


def cubical_persistence_gudhi(maps: np.ndarray, filtration: str, construction: str, dim0: bool, dim1: bool):
    """GUDHI's diagrams of a ``[B, H, W]`` batch as the field arrays of ``Diagrams``."""
    sign = 1.0 if filtration == "sublevel" else -1.0
    fields: list[list] = [[] for _ in range(6)]
    for b, a in enumerate(maps):
        a64 = np.asarray(a, dtype=np.float64)
        for d, bp, dp in gudhi_diagram(sign * a64, construction, dim0, dim1):
            death = a64.flat[dp] if dp >= 0 else sign * np.inf
            for f, v in zip(fields, (b, d, a64.flat[bp], death, bp, dp)):
                f.append(v)
    dtypes = (np.int64, np.int64, np.float64, np.float64, np.int64, np.int64)
    return tuple(np.asarray(f, dtype=t) for f, t in zip(fields, dtypes))


def _import_pot():
    try:
        import ot
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("backend='reference' needs POT: pip install 'topoot_gpu[test]' (or pip install POT)") from e
    return ot


def sinkhorn_pot(a, b, M, *, reg: float, max_iter: int, stop_thr: float, domain: str):
    """POT ``ot.sinkhorn`` on each problem of a padded batch (its real rows and columns), one by
    one, as a :class:`~topoot_gpu.transport.SinkhornResult`. ``domain="log"`` uses
    ``method="sinkhorn_log"``, otherwise POT's default (``sinkhorn_knopp``)."""
    import warnings

    import torch

    from .transport import SinkhornResult

    ot = _import_pot()
    method = "sinkhorn_log" if domain == "log" else "sinkhorn"
    B, n, m = M.shape
    dtype = M.dtype
    plan = torch.zeros(B, n, m, dtype=dtype)
    log_u = torch.full((B, n), float("-inf"), dtype=dtype)
    log_v = torch.full((B, m), float("-inf"), dtype=dtype)
    n_iter = torch.zeros(B, dtype=torch.int64)
    err = torch.ones(B, dtype=dtype)
    for k in range(B):
        rows = torch.nonzero(a[k] > 0).flatten().cpu()
        cols = torch.nonzero(b[k] > 0).flatten().cpu()
        if not len(rows) or not len(cols):
            continue
        ak = a[k, rows].cpu().numpy()
        bk = b[k, cols].cpu().numpy()
        Mk = M[k][rows][:, cols].cpu().numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            G, log = ot.sinkhorn(ak, bk, Mk, reg, method=method, numItermax=max_iter, stopThr=stop_thr, log=True)
        plan[k, rows[:, None], cols[None, :]] = torch.as_tensor(G, dtype=dtype)
        lu = log["log_u"] if "log_u" in log else np.log(log["u"])
        lv = log["log_v"] if "log_v" in log else np.log(log["v"])
        log_u[k, rows] = torch.as_tensor(lu, dtype=dtype)
        log_v[k, cols] = torch.as_tensor(lv, dtype=dtype)
        n_iter[k] = int(log["niter"])
        err[k] = float(log["err"][-1]) if log["err"] else 1.0
    dev = M.device
    return SinkhornResult(
        plan.to(dev), log_u.to(dev), log_v.to(dev), n_iter.to(dev), err.to(dev), "log" if domain == "log" else "scaling"
    )


# --- Pseudo-labels (SPEC 4), one map at a time, as the released implementation does ---------


def normalise(anomaly_map: np.ndarray) -> np.ndarray:
    """``(A - min) / (max - min)`` in float64; a constant map becomes zeros."""
    a = np.asarray(anomaly_map, dtype=np.float64)
    lo, hi = a.min(), a.max()
    return np.zeros_like(a) if hi == lo else (a - lo) / (hi - lo)


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


def candidates_gudhi(q: np.ndarray, filtration: str, dims, construction: str, tau=None) -> np.ndarray:
    """Finite pairs of the wanted dimensions as ``(low, high)`` rows (GUDHI, one complex).

    ``tau``: the diagram truncated at that threshold (paper text): pairs born beyond ``tau`` are
    dropped and those dying beyond it become essential (so are no candidates).
    """
    gudhi = _import_gudhi()
    sign = 1.0 if filtration == "sublevel" else -1.0
    x = sign * q
    cc = gudhi.CubicalComplex(top_dimensional_cells=x) if construction == "T" else gudhi.CubicalComplex(vertices=x)
    cc.compute_persistence(homology_coeff_field=2, min_persistence=0)
    rows = []
    for d in dims:
        for b, e in cc.persistence_intervals_in_dimension(d):
            if not np.isfinite(e) or b == e:
                continue
            b, e = sign * b, sign * e  # the map's units
            if tau is not None:
                if (b > tau) if filtration == "sublevel" else (b < tau):
                    continue
                if (e > tau) if filtration == "sublevel" else (e < tau):
                    continue
            rows.append((min(b, e), max(b, e)))
    rows = np.asarray(rows, dtype=np.float64).reshape(-1, 2)
    # A level map's candidates in (low, high) order: exact ties in the ranking fall back on this
    # order, which must not be GUDHI's internal one (see topoot_gpu.selection).
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))]


def pot_costs(P: np.ndarray, Q: np.ndarray, kind: str):
    """SPEC 3 costs and weights between two diagrams, written out for one pair."""
    n, m = len(P), len(Q)
    if kind == "normalized":
        D = np.sqrt(((P[:, None, :] - Q[None, :, :]) ** 2).sum(-1))
        M = (D / (D.max() + 1e-12)) ** 2
        return M, np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    M = np.zeros((n + 1, m + 1))
    M[:n, :m] = ((P[:, None, :] - Q[None, :, :]) ** 2).sum(-1)
    M[:n, m] = (P[:, 1] - P[:, 0]) ** 2 / 2
    M[n, :m] = (Q[:, 1] - Q[:, 0]) ** 2 / 2
    a = np.r_[np.ones(n), m] / (n + m)
    b = np.r_[np.ones(m), n] / (n + m)
    return M, a, b


def stability_pot(P: np.ndarray, Q: np.ndarray, config):
    """``S`` and ``M`` between two candidate lists, the plan from POT ``ot.sinkhorn``; with
    diagonal costs, only the real rows and columns (a match to the diagonal is no match)."""
    ot = _import_pot()
    M, a, b = pot_costs(P, Q, config.cost)
    G = ot.sinkhorn(a, b, M, config.reg, numItermax=config.max_iter, stopThr=config.stop_thr, warn=False)
    S = G / (1.0 + np.sqrt(np.maximum(M, 0)))
    return S[: len(P), : len(Q)], M[: len(P), : len(Q)]


def rank(cands: list[dict]) -> list[dict]:
    """``and_product`` ranking: score = S/S_max * persistence/P_max; stable sort by
    (-score, -S_best, C_best, -persistence)."""
    s_max = max((c["S"] for c in cands), default=0.0) or 1.0
    p_max = max((c["high"] - c["low"] for c in cands), default=0.0) or 1.0
    for c in cands:
        c["score"] = (c["S"] / s_max) * ((c["high"] - c["low"]) / p_max)
    return sorted(cands, key=lambda c: (-c["score"], -c["S"], c["C"], -(c["high"] - c["low"])))


def pseudo_label(anomaly_map: np.ndarray, config=None):
    """The released TopoOT pseudo-label of one map: ``(label, candidate)``.

    ``label`` is a bool ``[H, W]`` array; ``candidate`` the chosen dict (filtration, low, high,
    S, C, score, and margin: how far it is from a candidate giving another label, the largest gap
    over the ranking's sort keys) or None. Every diagram from one GUDHI ``CubicalComplex`` per
    level map and filtration, every plan from one POT ``ot.sinkhorn`` call, float64 throughout.
    """
    from .selection_config import SelectionConfig

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
        for q, tau in zip(maps, taus):
            rows = candidates_gudhi(q, filtration, dims, config.construction, tau)
            per_level.append(
                [{"filtration": filtration, "low": lo, "high": hi, "S": 0.0, "C": np.inf} for lo, hi in rows]
            )
        for k in range(len(per_level)):
            for j in range(k + 1, len(per_level)):
                A, B = per_level[k], per_level[j]
                if not A or not B:
                    continue
                P = np.array([[c["low"], c["high"]] for c in A])
                Q = np.array([[c["low"], c["high"]] for c in B])
                S, M = stability_pot(P, Q, config)
                for side, S_side, M_side in ((A, S, M), (B, S.T, M.T)):
                    for i, c in enumerate(side):
                        j = int(np.argmax(S_side[i]))
                        s, cost = S_side[i, j], M_side[i, j]
                        if s > c["S"] + 1e-12:
                            c["S"], c["C"] = s, cost
                        elif abs(s - c["S"]) <= 1e-12:
                            c["C"] = min(c["C"], cost)
        kept[filtration] = rank([c for level in per_level for c in level])[: config.top_m]
    sub, sup = kept["sublevel"], kept["superlevel"]
    if sub and sup:
        P = np.array([[c["low"], c["high"]] for c in sub])
        Q = np.array([[c["low"], c["high"]] for c in sup])
        S, M = stability_pot(P, Q, config)
        final = []
        for side, S_side, M_side in ((sub, S, M), (sup, S.T, M.T)):
            for i, c in enumerate(side):
                j = int(np.argmax(S_side[i]))
                final.append({**c, "S": S_side[i, j], "C": M_side[i, j]})
    else:
        # One list: no cross-filtration comparison, so S_best = 0 and C_best = +inf (the SPEC's
        # "never compared" values), which ranks by persistence.
        final = [{**c, "S": 0.0, "C": np.inf} for c in sub + sup]
    ranked = rank(final)
    label = np.zeros(a.shape, dtype=bool)
    for c in ranked[: config.top_k]:
        label |= a >= max(0.0, c["high"] - config.delta(c["filtration"]))
    if not ranked:
        return label, None
    # How far the choice is from a tie that matters: against the best candidate that would give
    # another label (another filtration or peak level), the largest gap over the sort keys
    # (score, S, C, persistence). Within 1e-9 on all of them, rounding decides the order.
    first = ranked[0]
    rival = next((c for c in ranked[1:] if (c["filtration"], c["high"]) != (first["filtration"], first["high"])), None)
    margin = np.inf
    if rival is not None:
        gaps = [abs(first[k] - rival[k]) if first[k] != rival[k] else 0.0 for k in ("score", "S", "C")]
        gaps.append(abs((first["high"] - first["low"]) - (rival["high"] - rival["low"])))
        margin = max(gaps)
    return label, {**ranked[0], "margin": margin}


# --- The head (SPEC 5), as the released code trains it: one image, pairs built pixel by pixel,
# a DataLoader over the stored pairs, the head evaluated again on both pixels of every pair. ---


class _EpochShuffle:
    """The pair order of each epoch (a DataLoader sampler): a new shuffle every time it is iterated."""

    def __init__(self, seed: int, n: int):
        self.seed, self.n, self.epoch = seed, n, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        from ._random import epoch_order

        order = epoch_order(self.seed, self.epoch, self.n, "cpu")
        self.epoch += 1
        return iter(order.tolist())


def _head_module(channels: int, seed: int, config, dtype):
    import torch

    from ._random import head_parameters

    hid = config.hidden(channels)
    head = torch.nn.Sequential(
        torch.nn.Linear(channels, hid),
        torch.nn.GELU(),
        torch.nn.Linear(hid, hid),
        torch.nn.GELU(),
        torch.nn.Linear(hid, config.embed_dim),
    ).to(dtype)
    init = head_parameters(seed, channels, hid, config.embed_dim, dtype, "cpu")
    with torch.no_grad():
        for layer, (w, b) in zip((head[0], head[2], head[4]), zip(init[::2], init[1::2])):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    return head


def ot_consistency_loss(e, y, config):
    """SPEC 5's OT-consistency loss of one image: embeddings ``e [P, E]``, pseudo-label ``y [P]``
    in {0, 1}; 200 plain Sinkhorn iterations written out, autograd through all of them."""
    import torch
    import torch.nn.functional as F

    P = e.shape[0]
    eps = config.ot_eps
    n = F.normalize(e, dim=1)
    proto_bg = F.normalize(n[y == 0].mean(0), dim=0)
    proto_fg = F.normalize(n[y == 1].mean(0), dim=0)
    cos = n @ torch.stack([proto_bg, proto_fg], 1)  # [P, 2]
    m_prot = (cos.clamp(-1, 1) + 1) * 0.5
    m_cls = torch.stack([1 - y, y], 1)
    K = torch.exp(-(1 - cos).clamp_min(0) / config.ot_reg).clamp_min(eps)
    u = torch.full((P, 1), 1.0 / P, dtype=e.dtype)
    v = torch.full((2, 1), 0.5, dtype=e.dtype)
    for _ in range(config.ot_iter):
        u = (1.0 / P) / (K @ v + eps)
        v = 0.5 / (K.t() @ u + eps)
    plan = u * K * v.t()
    g = plan / (plan.sum(1, keepdim=True) + eps)
    entropy = -(g * g.clamp_min(eps).log()).sum(1, keepdim=True)
    w = (1 - entropy / np.log(config.entropy_base)).clamp_min(0) * g
    return (w * (m_prot - m_cls).abs()).sum() / (2 * P + eps)


def train_head(features, label, seed: int = 0, config=None) -> np.ndarray:
    """The released head on one image (SPEC 5), in plain PyTorch on the CPU.

    Args:
        features: ``[C, h, w]`` (torch or numpy, float32/float64), resized bilinearly
            (``align_corners=False``) to the label's size when it differs.
        label: ``[H, W]`` bool pseudo-label.
        seed: the draws of :mod:`topoot_gpu._random` (initial weights, partners, shuffles).
        config: a :class:`topoot_gpu.HeadConfig`.

    Returns:
        The bool ``[H, W]`` mask; a constant label is returned untrained.
    """
    import torch
    import torch.nn.functional as F

    from ._random import OTHER_PARTNER, SAME_PARTNER, random_u32
    from .head_config import HeadConfig

    config = HeadConfig() if config is None else config
    label = np.asarray(torch.as_tensor(label).cpu(), dtype=bool)
    if label.all() or not label.any():
        return label.copy()
    f = torch.as_tensor(features).detach().cpu()
    H, W = label.shape
    if f.shape[1:] != (H, W):
        f = F.interpolate(f[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    feats = f.permute(1, 2, 0).reshape(H * W, -1).contiguous()
    y = torch.from_numpy(label.reshape(-1).astype(np.float64)).to(feats.dtype)
    P = H * W

    # Pairs, pixel by pixel: one partner of the same label, one of the other (SPEC 5).
    members = [np.flatnonzero(label.reshape(-1) == c).tolist() for c in (0, 1)]
    u_same = random_u32(seed, SAME_PARTNER, P).tolist()
    u_other = random_u32(seed, OTHER_PARTNER, P).tolist()
    first, second, pair_label = [], [], []
    for i in range(P):
        own = int(label.flat[i])
        same, other = members[own], members[1 - own]
        j = same[(u_same[i] * len(same)) >> 32]
        k = other[(u_other[i] * len(other)) >> 32]
        first += [feats[i], feats[i]]
        second += [feats[j], feats[k]]
        pair_label += [0.0, 1.0]
    pairs = torch.utils.data.TensorDataset(
        torch.stack(first), torch.stack(second), torch.tensor(pair_label, dtype=feats.dtype)
    )
    loader = torch.utils.data.DataLoader(pairs, batch_size=config.pair_batch, sampler=_EpochShuffle(seed, 2 * P))

    head = _head_module(feats.shape[1], seed, config, feats.dtype)
    opt = torch.optim.Adam(head.parameters(), lr=config.lr)
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(config.epochs):
            opt.zero_grad()
            (config.ot_weight * ot_consistency_loss(head(feats), y, config)).backward()
            n_batches = len(loader)
            for x1, x2, t in loader:
                d = F.pairwise_distance(head(x1), head(x2), eps=config.pair_eps)
                loss = torch.mean((1 - t) * d.pow(2) + t * torch.clamp(config.margin - d, min=0).pow(2))
                (config.contrastive_weight / n_batches * loss).backward()
            opt.step()
        with torch.no_grad():
            e = head(feats)
            protos = [F.normalize(e[y == c].mean(0), dim=0) for c in (0, 1)]
            mask = torch.linalg.vector_norm(e - protos[1], dim=1) < torch.linalg.vector_norm(e - protos[0], dim=1)
    return mask.reshape(H, W).numpy()
