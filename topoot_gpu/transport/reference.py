"""The ``"reference"`` backend of entropic transport: POT ``ot.sinkhorn``, one problem at a time, and
SPEC 3's costs written out for one pair of diagrams.

The ground truth the fast backends are checked against (SPEC 6). POT is a test extra, imported when
a function here is called. Imports no fast path.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..core.backends import require
from .results import BestStability, SinkhornResult

#: POT's two methods: ``"scaling"`` is its default ``sinkhorn_knopp``, ``"log"`` its ``sinkhorn_log``.
DOMAINS = ("scaling", "log")
#: Gets padded, checked batches and a domain from the api (see ``_cpp.FUSED``).
FUSED = False


def import_pot():
    return require("ot", "test", "POT")


def sinkhorn(
    a: torch.Tensor, b: torch.Tensor, M: torch.Tensor, *, reg: float, max_iter: int, stop_thr: float, domain: str,
    num_threads: int,
) -> SinkhornResult:  # fmt: skip
    """POT ``ot.sinkhorn`` on each problem of a padded batch (its real rows and columns), one by one."""
    ot = import_pot()
    method = "sinkhorn_log" if domain == "log" else "sinkhorn"
    B, n, m = M.shape
    dtype = M.dtype
    plan = torch.zeros(B, n, m, dtype=dtype)
    log_u = torch.full((B, n), float("-inf"), dtype=dtype)
    log_v = torch.full((B, m), float("-inf"), dtype=dtype)
    n_iter = torch.zeros(B, dtype=torch.int64)
    err = torch.ones(B, dtype=dtype)
    for k in range(B):
        rows = torch.nonzero(a[k] > 0).flatten()
        cols = torch.nonzero(b[k] > 0).flatten()
        if not len(rows) or not len(cols):
            continue
        ak, bk = a[k, rows].numpy(), b[k, cols].numpy()
        Mk = M[k][rows][:, cols].numpy()
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
    return SinkhornResult(plan, log_u, log_v, n_iter, err, domain)


def pot_costs(P: np.ndarray, Q: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def stability_pot(
    P: np.ndarray, Q: np.ndarray, *, cost: str, reg: float, max_iter: int, stop_thr: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """``S``, ``M`` and POT's ``niter`` between two non-empty candidate lists, the plan from POT
    ``ot.sinkhorn`` (its default method); with diagonal costs, only the real rows and columns (a
    match to the diagonal is no match)."""
    ot = import_pot()
    M, a, b = pot_costs(P, Q, cost)
    G, log = ot.sinkhorn(a, b, M, reg, numItermax=max_iter, stopThr=stop_thr, warn=False, log=True)
    S = G / (1.0 + np.sqrt(np.maximum(M, 0)))
    return S[: len(P), : len(Q)], M[: len(P), : len(Q)], int(log["niter"])


def best_stability(
    P: torch.Tensor, p_sizes: torch.Tensor, Q: torch.Tensor, q_sizes: torch.Tensor, *, cost: str, reg: float,
    max_iter: int, stop_thr: float, num_threads: int,
) -> BestStability:  # fmt: skip
    """Every point's best stability, problem by problem with :func:`stability_pot` (``np.argmax``: the
    first maximum on ties)."""
    p_off = np.concatenate([[0], np.cumsum(p_sizes.numpy())])
    q_off = np.concatenate([[0], np.cumsum(q_sizes.numpy())])
    Pn, Qn = P.numpy(), Q.numpy()
    s_row, c_row = np.zeros(len(Pn)), np.full(len(Pn), np.inf)
    s_col, c_col = np.zeros(len(Qn)), np.full(len(Qn), np.inf)
    n_iter = np.zeros(len(p_sizes), dtype=np.int64)
    for k in range(len(p_sizes)):
        rows, cols = slice(p_off[k], p_off[k + 1]), slice(q_off[k], q_off[k + 1])
        if p_off[k] == p_off[k + 1] or q_off[k] == q_off[k + 1]:
            continue
        S, M, n_iter[k] = stability_pot(Pn[rows], Qn[cols], cost=cost, reg=reg, max_iter=max_iter, stop_thr=stop_thr)
        i, j = S.argmax(1), S.argmax(0)
        s_row[rows], c_row[rows] = S[np.arange(len(i)), i], M[np.arange(len(i)), i]
        s_col[cols], c_col[cols] = S[j, np.arange(len(j))], M[j, np.arange(len(j))]
    return BestStability(*(torch.from_numpy(x) for x in (s_row, c_row, s_col, c_col, n_iter)))
