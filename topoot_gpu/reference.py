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
