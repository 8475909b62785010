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
        self, done: torch.Tensor | None, ii: int | torch.Tensor, outputs: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> torch.Tensor | None:
        """Record the problems flagged in ``done`` (over the active set; ``None``: all of them) as
        stopped at iteration ``ii`` (one for all, or a tensor over the active set) and return the
        keep mask (``None`` when none is left)."""
        if done is None:
            self.n_iter[self.active] = ii
            for full, part in outputs:
                full[self.active] = part
            self.active = self.active[:0]
            return None
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
    dtype, device = M.dtype, M.device
    zero = torch.zeros((), dtype=dtype, device=device)
    row, col = a > 0, b > 0
    inv_a = torch.where(row, 1.0 / torch.where(row, a, 1.0), zero)
    if bool(row.all()) and bool(col.all()):  # one host read: no padding
        K_all = torch.div(M, -reg).exp_()
        Kp = K_all * inv_a[:, :, None]
    else:
        # Padding needs no masking in the loop: K is 1 on (real row, padding column) and K / a is 1
        # on padding rows, 0 elsewhere off the real block. A padding column's K^T u is then the sum
        # of the real u (zero only when every real column's is: POT's own stop), so its v is 0 /
        # that = 0; likewise a padding row's u = 0 / (sum of the real v), and v = 0 there makes
        # (K / a) on (real row, padding column) count for nothing. Padding costs (any value, NaN
        # included) are replaced by 0 first (exp(-0 / reg) = 1); the real entries keep their bits:
        # those are POT's, exactly.
        rows = row.to(dtype)[:, :, None]
        K_all = torch.where(row[:, :, None] & col[:, None, :], M, zero).div_(-reg).exp_().mul_(rows)
        Kp = (K_all * inv_a[:, :, None]).add_(1 - rows)
    # The scalings are kept as [B, 1, n] and [B, 1, m] rows, so that every product is a
    # vector-matrix bmm with no reshaping: K^T u as u^T K, and (K / a) v as v^T (K / a)^T through a
    # transposed view (BLAS reads it in place; on the CPU several times faster than a matrix-vector
    # bmm). POT starts from u = 1 / n (n real rows); the plan does not depend on that scale.
    row_one = row.to(dtype)[:, None, :]  # u = row_one / (K / a) v: 1 / that on real rows, 0 on padding
    u_all = row_one / row.sum(1).clamp(min=1).to(dtype)[:, None, None]
    v_all = col.to(dtype)[:, None, :] / col.sum(1).clamp(min=1).to(dtype)[:, None, None]
    state = _Batch(B, device, dtype, max_iter)
    empty = ~row.any(1) | ~col.any(1)
    K, KpT, bb, ro, u, v = K_all, Kp.transpose(1, 2), b[:, None, :], row_one, u_all.clone(), v_all.clone()
    if empty.any():
        keep = state.finish(empty, 0, [])
        K, Kp, bb, ro, u, v = K[keep], Kp[keep], bb[keep], ro[keep], u[keep], v[keep]
        KpT = Kp.transpose(1, 2)
    # POT's guard (a zero K^T u or a non-finite scaling: keep the previous scalings and stop) is
    # read once per convergence check, from the scalings of the iterations since the last one: a
    # zero K^T u makes v infinite, and a padding scaling turns non-finite only after a real one.
    # Between checks an iteration is three products and two divisions.
    err = torch.ones(len(state.active), dtype=dtype, device=device)  # the active problems' last check
    ktu = torch.bmm(u, K)  # K^T u of the current u: the next v's denominator
    start, us, vs = 0, [u], [v]
    for ii in range(max_iter):
        v = bb / ktu
        u = ro / torch.bmm(v, KpT)
        ktu = torch.bmm(u, K)  # the check's column sums, and the next iteration's
        us.append(u)
        vs.append(v)
        check, last = ii % 10 == 0, ii == max_iter - 1
        if not (check or last):
            continue
        Su, Sv = torch.stack(us), torch.stack(vs)  # [iterations since the last check + 1, active, 1, n]
        finite = (torch.isfinite(Su[1:]).all(3) & torch.isfinite(Sv[1:]).all(3))[:, :, 0]  # [iterations, active]
        bad = ~finite.all(0)  # [active]: stopped on numerical errors since the last check
        done = bad
        if check:
            now = torch.linalg.vector_norm(ktu * v - bb, dim=(1, 2))
            err = torch.where(bad, err, now)
            done = done | (now < stop_thr)
        if last:
            done = torch.ones_like(done)
        any_done, any_bad, all_done = torch.stack([done.any(), bad.any(), done.all()]).tolist()  # the one sync
        if any_bad:
            first = torch.argmin(finite.to(torch.uint8), 0)  # the first bad iteration
            pick = torch.arange(len(first), device=device)
            u = torch.where(bad[:, None, None], Su[first, pick], u)
            v = torch.where(bad[:, None, None], Sv[first, pick], v)
        stop = torch.where(bad, start + first, ii) if any_bad else ii
        if all_done:
            state.finish(None, stop, [(u_all, u), (v_all, v), (state.err, err)])
            break
        if any_done:
            keep = state.finish(done, stop, [(u_all, u), (v_all, v), (state.err, err)])
            K, Kp, bb, ro, u, v = K[keep], Kp[keep], bb[keep], ro[keep], u[keep], v[keep]
            KpT, ktu, err = Kp.transpose(1, 2), ktu[keep], err[keep]
        start, us, vs = ii + 1, [u], [v]
    plan = K_all.mul_(u_all.transpose(1, 2)).mul_(v_all)  # (u K) v, in place: K is done
    return SinkhornResult(plan, u_all[:, 0].log(), v_all[:, 0].log(), state.n_iter, state.err, "scaling")


#: The backend's ``best_stability`` (:func:`topoot_gpu.transport.api.best_stability`): costs, this
#: backend's solver, stability and best match on the padded batch.
best_stability = best_stability_through(sinkhorn, DOMAINS)
