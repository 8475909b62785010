"""The ``"torch"`` backend of entropic transport: POT's iterates vectorised over a padded batch in
torch operations, on any device. Each problem stops on its own: the problems still running are
gathered into compact tensors, so finished ones cost nothing.

On a GPU that stopping rule is paid in host waits: at each convergence check (every 10 iterations)
the host reads whether any problem has finished and, when one has, compacts the batch (bool-mask
indexing); ``best_stability`` adds the padded widths and the per-problem domain choice
(:func:`~topoot_gpu.transport.padded.padded_best_stability`). The ``"triton"`` backend is the one
whose transport step waits once."""

from __future__ import annotations

import torch

from .padded import best_stability_through
from .results import SinkhornResult

#: The domains this backend runs.
DOMAINS = ("scaling", "log")
#: Gets padded, checked batches and a domain from the api (see ``_cpp.FUSED``).
FUSED = False


def sinkhorn(
    a: torch.Tensor, b: torch.Tensor, M: torch.Tensor, *, reg: float, max_iter: int, stop_thr: float, domain: str,
    num_threads: int,
) -> SinkhornResult:  # fmt: skip
    """The backend's entry (:func:`topoot_gpu.transport.api.sinkhorn`, validated inputs);
    ``num_threads`` is torch's own setting, not this argument."""
    solve = sinkhorn_scaling if domain == "scaling" else sinkhorn_log
    return solve(a, b, M, reg=reg, max_iter=max_iter, stop_thr=stop_thr)


class _Batch:
    """Book-keeping of per-problem stopping: the problems still running are gathered into
    compact tensors, so finished ones cost nothing; their results are written back on finish."""

    def __init__(self, B: int, device: torch.device, dtype: torch.dtype, max_iter: int) -> None:
        self.active = torch.arange(B, device=device)
        self.n_iter = torch.full((B,), max_iter - 1, dtype=torch.int64, device=device)
        self.err = torch.ones(B, dtype=dtype, device=device)

    def finish(
        self, done: torch.Tensor, ii: int | torch.Tensor, outputs: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor:
        """Record the problems flagged in ``done`` (over the active set) as stopped at iteration ``ii``
        (one for all, or a tensor over the active set) and return the keep mask."""
        idx = self.active[done]
        self.n_iter[idx] = ii[done] if isinstance(ii, torch.Tensor) else ii
        for full, part in outputs:
            full[idx] = part[done]
        keep = ~done
        self.active = self.active[keep]
        return keep


def sinkhorn_log(a, b, M, *, reg, max_iter, stop_thr) -> SinkhornResult:
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


def sinkhorn_scaling(a, b, M, *, reg, max_iter, stop_thr) -> SinkhornResult:
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
    # Both products as vector-matrix bmm's, [B, 1, n] x [B, n, m]: on the CPU several times faster
    # than einsum's (which copies the matrix) or a matrix-vector bmm; so (K / a) is kept transposed.
    KpT = (K_all * inv_a[:, :, None]).transpose(1, 2).contiguous()
    K, bb, rr, cc, u, v = K_all, b, row, col, u_all.clone(), v_all.clone()
    if empty.any():
        keep = state.finish(empty, 0, [])
        K, KpT, bb, rr, cc, u, v = K[keep], KpT[keep], bb[keep], rr[keep], cc[keep], u[keep], v[keep]
    # POT's guard: a zero or non-finite scaling reverts to the previous ones and stops. A problem
    # that stops so is frozen on the device (its scalings kept, its iteration noted) and leaves the
    # batch at the next check, so the host synchronises once per check, not once per iteration.
    stopped = torch.zeros(len(state.active), dtype=torch.bool, device=M.device)
    stop_iter = torch.zeros(len(state.active), dtype=torch.int64, device=M.device)
    for ii in range(max_iter):
        if not len(state.active):
            break
        u_prev, v_prev = u, v
        KtU = torch.bmm(u[:, None, :], K)[:, 0]
        v = torch.where(cc, bb / torch.where(cc, KtU, 1.0), zero)
        u = torch.where(rr, 1.0 / torch.where(rr, torch.bmm(v[:, None, :], KpT)[:, 0], 1.0), zero)
        bad = ~stopped & (((KtU == 0) & cc).any(1) | ~torch.isfinite(u).all(1) | ~torch.isfinite(v).all(1))
        stop_iter = torch.where(bad, ii, stop_iter)
        stopped = stopped | bad
        u = torch.where(stopped[:, None], u_prev, u)
        v = torch.where(stopped[:, None], v_prev, v)
        check, last = ii % 10 == 0, ii == max_iter - 1
        if not (check or last):
            continue
        done = stopped
        if check:
            err = torch.linalg.vector_norm(torch.bmm(u[:, None, :], K)[:, 0] * v - bb, dim=1)
            state.err[state.active] = torch.where(stopped, state.err[state.active], err)
            done = done | (err < stop_thr)
        if last:
            done = torch.ones_like(done)
        if done.any():  # the check's one synchronisation
            keep = state.finish(done, torch.where(stopped, stop_iter, ii), [(u_all, u), (v_all, v)])
            K, KpT, bb, rr, cc, u, v = K[keep], KpT[keep], bb[keep], rr[keep], cc[keep], u[keep], v[keep]
            stopped, stop_iter = stopped[keep], stop_iter[keep]
    plan = u_all[:, :, None] * K_all * v_all[:, None, :]
    return SinkhornResult(plan, u_all.log(), v_all.log(), state.n_iter, state.err, "scaling")


#: The backend's ``best_stability`` (:func:`topoot_gpu.transport.api.best_stability`): costs, this
#: backend's solver, stability and best match on the padded batch.
best_stability = best_stability_through(sinkhorn, DOMAINS)
