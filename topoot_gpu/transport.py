"""Batched entropic optimal transport for many small ragged problems (SPEC section 3).

One solver call runs a whole batch of problems ``(a_k, b_k, M_k)``, padded to a common
``[B, n, m]``. Rows with ``a = 0`` and columns with ``b = 0`` are padding: they start at
``log u = -inf`` / ``log v = -inf`` and never change a real entry, so a padded problem gives the
plan of the same problem without its padding. (A real zero weight is treated the same way, which
equals POT on the problem with that row removed.)

The iterates are POT's ``ot.sinkhorn(a, b, M, reg)``: from ``u = v = 0`` (log scalings), each
iteration ::

    v = log b - LSE_i(-M / reg + u)
    u = log a - LSE_j(-M / reg + v)

and at iterations 0, 10, 20, ... a problem stops when ``||sum_i exp(-M/reg + u + v) - b||_2 <
stop_thr``; each problem stops on its own. ``plan = exp(-M/reg + u_i + v_j)``. Two domains compute
these iterates:

* ``"log"``: log-sum-exp per iteration (POT ``method="sinkhorn_log"``), safe for any ``reg``;
* ``"scaling"``: ``K = exp(-M/reg)`` once, then ``v = b / K^T u``, ``u = 1 / ((K / a) v)``
  (POT's default ``sinkhorn_knopp``, including its stop on numerical errors), two matrix-vector
  products per iteration. Only safe when ``K`` cannot underflow.

``domain="auto"`` takes the scaling domain for a batch when ``max |M| / reg`` of every problem is
at most 50 (float32) or 300 (float64), so that ``K >= e^-50`` and the scalings stay far inside the
floating range, and the log domain otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._validation import check_choice, check_threads

BACKENDS = ("auto", "cpu", "torch", "triton", "reference")
DOMAINS = ("auto", "scaling", "log")
#: max |M| / reg under which ``domain="auto"`` uses the scaling domain.
SCALING_LIMIT = {torch.float32: 50.0, torch.float64: 300.0}
#: Largest n, m the Triton kernel holds on chip; larger problems go to the torch path.
TRITON_MAX_SIZE = 256


@dataclass(frozen=True)
class SinkhornResult:
    """Solutions of a batch of problems.

    Attributes:
        plan: ``[B, n, m]`` transport plans (zero on padding).
        log_u, log_v: ``[B, n]``, ``[B, m]`` log scalings (``-inf`` on padding), POT's
            ``log_u``/``log_v`` in the log domain.
        n_iter: ``[B]`` int64, POT's ``log["niter"]``: the index of the last iteration run.
        err: ``[B]`` column-marginal error at the last check.
        domain: the domain that ran, ``"scaling"`` or ``"log"``.
    """

    plan: torch.Tensor
    log_u: torch.Tensor
    log_v: torch.Tensor
    n_iter: torch.Tensor
    err: torch.Tensor
    domain: str


def _as_tensor(x: Any, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch tensor or numpy array, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype, got {x.dtype}")
    return x


def _check_problem(a: Any, b: Any, M: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a, b, M = _as_tensor(a, "a"), _as_tensor(b, "b"), _as_tensor(M, "M")
    if M.dim() != 3:
        raise ValueError(f"M: expected shape [B, n, m], got {tuple(M.shape)}")
    B, n, m = M.shape
    if tuple(a.shape) != (B, n):
        raise ValueError(f"a: expected shape {(B, n)} to match M {tuple(M.shape)}, got {tuple(a.shape)}")
    if tuple(b.shape) != (B, m):
        raise ValueError(f"b: expected shape {(B, m)} to match M {tuple(M.shape)}, got {tuple(b.shape)}")
    if not (a.device == b.device == M.device):
        raise ValueError(f"a, b, M: expected one device, got {a.device}, {b.device}, {M.device}")
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), M.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    return a.to(dtype), b.to(dtype), M.to(dtype)


def _check_values(a: torch.Tensor, b: torch.Tensor, M: torch.Tensor) -> float:
    """Raise on NaN/inf or negative weights; return ``max |M|`` over the real entries.

    CPU tensors are checked in one fused C++ pass (the batch is streamed once, not per check).
    """
    if M.device.type == "cpu":
        from . import _C

        stats = _C.sinkhorn_stats_f64 if M.dtype == torch.float64 else _C.sinkhorn_stats_f32
        finite, a_ok, b_ok, worst = stats(*(x.contiguous().numpy() for x in (a, b, M)))
    else:
        finite = all(bool(torch.isfinite(x).all()) for x in (a, b, M))
        a_ok, b_ok = not bool((a < 0).any()), not bool((b < 0).any())
        real = (a > 0)[:, :, None] & (b > 0)[:, None, :]
        worst = float(torch.where(real, M.abs(), 0.0).max()) if finite and M.numel() else 0.0
    if not finite:
        for name, x in (("a", a), ("b", b), ("M", M)):
            if not torch.isfinite(x).all():
                raise ValueError(f"{name}: contains NaN or infinite values")
    if not a_ok:
        raise ValueError("a: weights must be non-negative")
    if not b_ok:
        raise ValueError("b: weights must be non-negative")
    return worst


def sinkhorn(
    a: Any,
    b: Any,
    M: Any,
    *,
    reg: float,
    max_iter: int = 1000,
    stop_thr: float = 1e-9,
    domain: str = "auto",
    backend: str = "auto",
    num_threads: int | None = None,
) -> SinkhornResult:
    """Entropic OT plans of a batch of (padded, ragged) problems, POT's iterates.

    Args:
        a: ``[B, n]`` row weights (``0`` marks a padding row).
        b: ``[B, m]`` column weights (``0`` marks a padding column).
        M: ``[B, n, m]`` costs; padding entries are ignored but must be finite.
        reg: entropic regularisation, ``> 0``.
        max_iter: at most this many iterations per problem (POT's ``numItermax``).
        stop_thr: stop threshold on the column-marginal error, checked every 10 iterations.
        domain: ``"auto"``, ``"scaling"`` or ``"log"`` (see the module doc).
        backend: ``"auto"`` (``"cpu"`` for CPU tensors, ``"torch"`` otherwise), ``"cpu"`` (the C++
            core: each problem solved start to finish in cache, threads over the batch),
            ``"torch"`` (vectorised over the batch, any device), ``"triton"`` (log domain, one
            program per problem; needs triton and, outside ``TRITON_INTERPRET=1``, a GPU),
            ``"reference"`` (POT in a loop; test extra).
        num_threads: worker threads of the ``"cpu"`` backend (default: all cores).

    Inputs are torch tensors or numpy arrays of one floating dtype family (the result is float64
    if any input is, else float32) on one device; the result is on that device.
    """
    check_choice("backend", backend, BACKENDS)
    check_choice("domain", domain, DOMAINS)
    a, b, M = _check_problem(a, b, M)
    worst = _check_values(a, b, M)
    reg = float(reg)
    if not np.isfinite(reg) or reg <= 0:
        raise ValueError(f"reg: expected a finite number > 0, got {reg}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter: expected an int >= 1, got {max_iter!r}")
    stop_thr = float(stop_thr)
    if not stop_thr >= 0:
        raise ValueError(f"stop_thr: expected a number >= 0, got {stop_thr}")
    max_iter = int(max_iter)

    if backend == "reference":
        from .reference import sinkhorn_pot

        return sinkhorn_pot(a, b, M, reg=reg, max_iter=max_iter, stop_thr=stop_thr, domain=domain)
    if backend == "triton":
        if domain == "scaling":
            raise ValueError("domain: the triton backend runs the log domain only")
        from .transport_triton import sinkhorn_log_triton

        return sinkhorn_log_triton(a, b, M, reg=reg, max_iter=max_iter, stop_thr=stop_thr)
    if domain == "auto":
        domain = "scaling" if worst / reg <= SCALING_LIMIT[M.dtype] else "log"
    if backend == "cpu" and M.device.type != "cpu":
        raise ValueError(f"backend: 'cpu' needs CPU tensors, got {M.device}")
    if backend == "cpu" or (backend == "auto" and M.device.type == "cpu"):
        return _sinkhorn_cpu(
            a,
            b,
            M,
            reg=reg,
            max_iter=max_iter,
            stop_thr=stop_thr,
            domain=domain,
            num_threads=check_threads(num_threads),
        )
    solve = _sinkhorn_scaling if domain == "scaling" else _sinkhorn_log
    return solve(a, b, M, reg=reg, max_iter=max_iter, stop_thr=stop_thr)


def _sinkhorn_cpu(a, b, M, *, reg, max_iter, stop_thr, domain, num_threads) -> SinkhornResult:
    from . import _C

    device = M.device
    arrays = [x.detach().contiguous().numpy() for x in (a, b, M)]
    kernel = _C.sinkhorn_f64 if M.dtype == torch.float64 else _C.sinkhorn_f32
    out = kernel(*arrays, reg, max_iter, stop_thr, domain == "log", num_threads)
    plan, log_u, log_v, n_iter, err = (torch.from_numpy(x).to(device) for x in out)
    return SinkhornResult(plan, log_u, log_v, n_iter, err, domain)


class _Batch:
    """Book-keeping of per-problem stopping: the problems still running are gathered into
    compact tensors, so finished ones cost nothing; their results are written back on finish."""

    def __init__(self, B: int, device: torch.device, dtype: torch.dtype, max_iter: int) -> None:
        self.active = torch.arange(B, device=device)
        self.n_iter = torch.full((B,), max_iter - 1, dtype=torch.int64, device=device)
        self.err = torch.ones(B, dtype=dtype, device=device)

    def finish(self, done: torch.Tensor, ii: int, outputs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Record the problems flagged in ``done`` (over the active set) and return the keep mask."""
        idx = self.active[done]
        self.n_iter[idx] = ii
        for full, part in outputs:
            full[idx] = part[done]
        keep = ~done
        self.active = self.active[keep]
        return keep


def _sinkhorn_log(a, b, M, *, reg, max_iter, stop_thr) -> SinkhornResult:
    B, n, m = M.shape
    neg_inf = torch.tensor(float("-inf"), dtype=M.dtype, device=M.device)
    row, col = a > 0, b > 0
    Mr_all = torch.where(row[:, :, None] & col[:, None, :], -M / reg, neg_inf)
    loga_all, logb_all = torch.where(row, a.log(), neg_inf), torch.where(col, b.log(), neg_inf)
    log_u = torch.where(row, 0.0, neg_inf)
    log_v = torch.where(col, 0.0, neg_inf)
    state = _Batch(B, M.device, M.dtype, max_iter)
    # Problems without a real row or column have a zero plan and stop at once.
    empty = ~row.any(1) | ~col.any(1)
    keep = state.finish(empty, 0, []) if empty.any() else None
    Mr, loga, logb, u, v, bb = Mr_all, loga_all, logb_all, log_u.clone(), log_v.clone(), b
    if keep is not None:
        Mr, loga, logb, u, v, bb = Mr[keep], loga[keep], logb[keep], u[keep], v[keep], b[keep]
    for ii in range(max_iter):
        if not len(state.active):
            break
        v = torch.where(logb > neg_inf, logb - torch.logsumexp(Mr + u[:, :, None], dim=1), neg_inf)
        u = torch.where(loga > neg_inf, loga - torch.logsumexp(Mr + v[:, None, :], dim=2), neg_inf)
        if ii % 10 == 0:
            err = torch.linalg.vector_norm(torch.exp(Mr + u[:, :, None] + v[:, None, :]).sum(1) - bb, dim=1)
            state.err[state.active] = err
            done = err < stop_thr
            if ii == max_iter - 1:
                done = torch.ones_like(done)
            if done.any():
                keep = state.finish(done, ii, [(log_u, u), (log_v, v)])
                Mr, loga, logb, u, v, bb = Mr[keep], loga[keep], logb[keep], u[keep], v[keep], bb[keep]
        elif ii == max_iter - 1:
            state.finish(torch.ones(len(state.active), dtype=torch.bool, device=M.device), ii, [(log_u, u), (log_v, v)])
    plan = torch.exp(Mr_all + log_u[:, :, None] + log_v[:, None, :])
    return SinkhornResult(plan, log_u, log_v, state.n_iter, state.err, "log")


def _sinkhorn_scaling(a, b, M, *, reg, max_iter, stop_thr) -> SinkhornResult:
    B, n, m = M.shape
    zero = torch.zeros((), dtype=M.dtype, device=M.device)
    row, col = a > 0, b > 0
    K_all = torch.where(row[:, :, None] & col[:, None, :], torch.exp(M / -reg), zero)
    inv_a = torch.where(row, 1.0 / torch.where(row, a, 1.0), zero)
    # POT starts from u = 1 / n (n real rows); the plan does not depend on that scale.
    n_real = row.sum(1, keepdim=True).clamp(min=1).to(M.dtype)
    u_all = torch.where(row, 1.0 / n_real, zero)
    v_all = torch.where(col, 1.0 / col.sum(1, keepdim=True).clamp(min=1).to(M.dtype), zero)
    state = _Batch(B, M.device, M.dtype, max_iter)
    empty = ~row.any(1) | ~col.any(1)
    K, Kp, bb, rr, cc, u, v = K_all, K_all * inv_a[:, :, None], b, row, col, u_all.clone(), v_all.clone()
    if empty.any():
        keep = state.finish(empty, 0, [])
        K, Kp, bb, rr, cc, u, v = K[keep], Kp[keep], bb[keep], rr[keep], cc[keep], u[keep], v[keep]
    for ii in range(max_iter):
        if not len(state.active):
            break
        u_prev, v_prev = u, v
        KtU = torch.einsum("bij,bi->bj", K, u)
        v = torch.where(cc, bb / torch.where(cc, KtU, 1.0), zero)
        u = torch.where(rr, 1.0 / torch.where(rr, torch.einsum("bij,bj->bi", Kp, v), 1.0), zero)
        # POT's guard: a zero or non-finite scaling reverts to the previous one and stops.
        bad = ((KtU == 0) & cc).any(1) | ~torch.isfinite(u).all(1) | ~torch.isfinite(v).all(1)
        if bad.any():
            u = torch.where(bad[:, None], u_prev, u)
            v = torch.where(bad[:, None], v_prev, v)
        done = bad
        if ii % 10 == 0:
            err = torch.linalg.vector_norm(torch.einsum("bi,bij,bj->bj", u, K, v) - bb, dim=1)
            state.err[state.active] = torch.where(bad, state.err[state.active], err)
            done = done | (err < stop_thr)
        if ii == max_iter - 1:
            done = torch.ones_like(done)
        if done.any():
            keep = state.finish(done, ii, [(u_all, u), (v_all, v)])
            K, Kp, bb, rr, cc, u, v = K[keep], Kp[keep], bb[keep], rr[keep], cc[keep], u[keep], v[keep]
    plan = u_all[:, :, None] * K_all * v_all[:, None, :]
    return SinkhornResult(plan, u_all.log(), v_all.log(), state.n_iter, state.err, "scaling")


def diagram_costs(P: Any, Q: Any, *, kind: str = "normalized") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Costs and weights between two ragged batches of diagrams (SPEC 3).

    Args:
        P, Q: the ``B`` diagrams on each side, each a sequence of ``[n_k, 2]`` arrays or tensors
            of ``(low, high)`` points (empty diagrams allowed).
        kind: ``"normalized"`` (released implementation): ``D`` the Euclidean distances,
            ``M = (D / (max D + 1e-12))^2``, weights ``1/n`` and ``1/m``; or ``"diagonal"``
            (paper text): an extra last row and column for the diagonal, ``M[i, j] = |p_i -
            q_j|^2``, ``M[i, diag] = (high - low)^2 / 2``, ``M[diag, diag] = 0``, weights
            ``[1, ..., 1, m] / (n + m)`` and ``[1, ..., 1, n] / (n + m)``.

    Returns:
        ``(M, a, b)`` padded to ``[B, n_max(+1), m_max(+1)]`` (float64; padding weight 0, padding
        cost 0), ready for :func:`sinkhorn`. With ``"diagonal"``, the diagonal is the last row
        and column, after the padding.
    """
    check_choice("kind", kind, ("normalized", "diagonal"))
    Ps, Qs = _diagram_list(P, "P"), _diagram_list(Q, "Q")
    if len(Ps) != len(Qs):
        raise ValueError(f"P, Q: expected the same number of diagrams, got {len(Ps)} and {len(Qs)}")
    B = len(Ps)
    n = torch.tensor([len(p) for p in Ps], dtype=torch.int64)
    m = torch.tensor([len(q) for q in Qs], dtype=torch.int64)
    N, Mx = int(n.max()) if B else 0, int(m.max()) if B else 0
    Pp = torch.zeros(B, N, 2, dtype=torch.float64)
    Qp = torch.zeros(B, Mx, 2, dtype=torch.float64)
    for k in range(B):
        Pp[k, : n[k]] = Ps[k]
        Qp[k, : m[k]] = Qs[k]
    return padded_diagram_costs(Pp, n, Qp, m, kind=kind)


def padded_diagram_costs(
    Pp: torch.Tensor, n: torch.Tensor, Qp: torch.Tensor, m: torch.Tensor, *, kind: str = "normalized"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`diagram_costs` of diagrams already padded: ``Pp [B, N, 2]`` with ``n [B]`` real
    points each, ``Qp [B, Mx, 2]`` with ``m [B]``."""
    B, N, Mx = Pp.shape[0], Pp.shape[1], Qp.shape[1]
    row = torch.arange(N)[None, :] < n[:, None]
    col = torch.arange(Mx)[None, :] < m[:, None]
    real = row[:, :, None] & col[:, None, :]
    sq = ((Pp[:, :, None, :] - Qp[:, None, :, :]) ** 2).sum(-1)
    if kind == "normalized":
        D = torch.where(real, sq.sqrt(), 0.0)
        Dmax = D.flatten(1).max(1).values if N * Mx else torch.zeros(B, dtype=torch.float64)
        M = torch.where(real, (D / (Dmax[:, None, None] + 1e-12)) ** 2, 0.0)
        a = torch.where(row, 1.0 / n.clamp(min=1)[:, None].double(), 0.0)
        b = torch.where(col, 1.0 / m.clamp(min=1)[:, None].double(), 0.0)
        return M, a, b
    M = torch.zeros(B, N + 1, Mx + 1, dtype=torch.float64)
    M[:, :N, :Mx] = torch.where(real, sq, 0.0)
    M[:, :N, Mx] = torch.where(row, (Pp[..., 1] - Pp[..., 0]) ** 2 / 2, 0.0)
    M[:, N, :Mx] = torch.where(col, (Qp[..., 1] - Qp[..., 0]) ** 2 / 2, 0.0)
    total = (n + m).clamp(min=1)[:, None].double()
    a = torch.cat([row.double(), m[:, None].double()], 1) / total
    b = torch.cat([col.double(), n[:, None].double()], 1) / total
    return M, a, b


def _diagram_list(X: Any, name: str) -> list[torch.Tensor]:
    if isinstance(X, (np.ndarray, torch.Tensor)) and getattr(X, "ndim", 0) != 1:
        raise ValueError(f"{name}: expected a sequence of [n, 2] diagrams, got an array of shape {tuple(X.shape)}")
    out = []
    for k, x in enumerate(X):
        t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach().cpu().double()
        if t.numel() == 0:
            t = t.reshape(0, 2)
        if t.dim() != 2 or t.shape[1] != 2:
            raise ValueError(f"{name}[{k}]: expected shape [n, 2], got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}[{k}]: contains NaN or infinite values")
        out.append(t)
    return out


def stability(plan: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``S = plan / (1 + sqrt(max(M, 0)))``: transported mass, discounted by its cost."""
    return plan / (1.0 + torch.sqrt(torch.clamp(M, min=0)))


def best_match(
    S: torch.Tensor, M: torch.Tensor, *, dim: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every row (``dim=2``) or column (``dim=1``) of ``[B, n, m]`` stabilities: the maximum of
    ``S``, the cost ``M`` at that entry and its index (the first one on ties). Entries outside
    ``mask`` (e.g. padding) are never chosen; a line with none gets ``(0, +inf, -1)``."""
    if dim not in (1, 2):
        raise ValueError(f"dim: expected 1 (best row per column) or 2 (best column per row), got {dim}")
    if mask is not None:
        S = torch.where(mask, S, torch.tensor(float("-inf"), dtype=S.dtype, device=S.device))
    idx = S.argmax(dim=dim, keepdim=True)
    s = S.gather(dim, idx).squeeze(dim)
    c = M.gather(dim, idx).squeeze(dim)
    idx = idx.squeeze(dim)
    none = torch.isneginf(s)
    s = torch.where(none, 0.0, s)
    c = torch.where(none, float("inf"), c)
    return s, c, torch.where(none, -1, idx)
