"""The ``"triton"`` backend of entropic transport: a fused log-domain Sinkhorn, one program per
problem, every iteration in one launch.

Each program loads its padded problem (``n, m <= TRITON_MAX_SIZE``) once and iterates on chip: the
``v`` update, the ``u`` update and, every 10 iterations, the column-marginal check, exactly as
:func:`topoot_gpu.transport.api.sinkhorn` in the log domain (POT ``sinkhorn_log``). A larger
problem raises a ``ValueError`` (it would not fit on chip; the ``"torch"`` backend takes it). Runs
on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (set before this module is
imported), which is how CI tests it.
"""

from __future__ import annotations

import torch

from .padded import best_stability_through
from .results import SinkhornResult

try:
    import triton
    import triton.language as tl
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("backend='triton' needs Triton: pip install 'topoot_gpu[triton]'") from e

#: The domains this backend runs.
DOMAINS = ("log",)
#: Largest n, m the kernel holds on chip.
TRITON_MAX_SIZE = 256


@triton.jit
def _lse(x, axis: tl.constexpr):
    """log-sum-exp along ``axis`` of a tile whose masked entries are -inf (all -inf gives -inf)."""
    mx = tl.max(x, axis)
    empty = mx == float("-inf")
    safe = tl.where(empty, 0.0, mx)
    if axis == 0:
        s = tl.sum(tl.exp(x - safe[None, :]), 0)
    else:
        s = tl.sum(tl.exp(x - safe[:, None]), 1)
    return tl.where(empty, float("-inf"), safe + tl.log(tl.where(empty, 1.0, s)))


@triton.jit
def _sinkhorn_log_kernel(
    M_ptr, a_ptr, b_ptr, plan_ptr, u_ptr, v_ptr, niter_ptr, err_ptr,
    n, m, inv_reg, max_iter, stop_thr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_M)
    a = tl.load(a_ptr + pid * n + rows, mask=rows < n, other=0.0)
    b = tl.load(b_ptr + pid * m + cols, mask=cols < m, other=0.0)
    row_real = a > 0
    col_real = b > 0
    real = row_real[:, None] & col_real[None, :]
    offs = pid * n * m + rows[:, None] * m + cols[None, :]
    M = tl.load(M_ptr + offs, mask=(rows[:, None] < n) & (cols[None, :] < m), other=0.0)
    Mr = tl.where(real, -M * inv_reg, float("-inf"))
    loga = tl.where(row_real, tl.log(tl.where(row_real, a, 1.0)), float("-inf"))
    logb = tl.where(col_real, tl.log(tl.where(col_real, b, 1.0)), float("-inf"))
    u = tl.where(row_real, 0.0, float("-inf")).to(M.dtype)
    v = tl.where(col_real, 0.0, float("-inf")).to(M.dtype)
    # A problem without a real row or column has a zero plan: it stops at once.
    go = (tl.sum(row_real.to(tl.int32), 0) > 0) & (tl.sum(col_real.to(tl.int32), 0) > 0)
    niter = tl.where(go, max_iter - 1, 0)
    err = tl.sum(tl.zeros([BLOCK_M], dtype=M.dtype), 0) + 1.0
    it = 0
    while go:
        # Padding lines have log weight -inf and an LSE of -inf: keep them at -inf without
        # forming -inf - -inf.
        v = tl.where(col_real, tl.where(col_real, logb, 0.0) - _lse(Mr + u[:, None], 0), float("-inf"))
        u = tl.where(row_real, tl.where(row_real, loga, 0.0) - _lse(Mr + v[None, :], 1), float("-inf"))
        if it % 10 == 0:
            colsum = tl.sum(tl.exp(Mr + u[:, None] + v[None, :]), 0)
            d = tl.where(cols < m, colsum - b, 0.0)
            err = tl.sqrt(tl.sum(d * d, 0))
            if err < stop_thr:
                go = False
                niter = it
        it += 1
        if it >= max_iter:
            go = False
    plan = tl.exp(Mr + u[:, None] + v[None, :])
    tl.store(plan_ptr + offs, plan, mask=(rows[:, None] < n) & (cols[None, :] < m))
    tl.store(u_ptr + pid * n + rows, u, mask=rows < n)
    tl.store(v_ptr + pid * m + cols, v, mask=cols < m)
    tl.store(niter_ptr + pid, niter.to(tl.int64))
    tl.store(err_ptr + pid, err)


def sinkhorn(
    a: torch.Tensor, b: torch.Tensor, M: torch.Tensor, *, reg: float, max_iter: int, stop_thr: float, domain: str,
    num_threads: int,
) -> SinkhornResult:  # fmt: skip
    """The backend's entry (:func:`topoot_gpu.transport.api.sinkhorn`, validated inputs, log domain):
    one Triton launch for the whole batch."""
    B, n, m = M.shape
    if max(n, m) > TRITON_MAX_SIZE:
        raise ValueError(
            f"M: backend 'triton' solves problems up to {TRITON_MAX_SIZE} x {TRITON_MAX_SIZE} on chip, got "
            f"{n} x {m}; use backend='torch' (or 'cpp' on the host)"
        )
    a, b, M = a.contiguous(), b.contiguous(), M.contiguous()
    # Poisoned outputs: an entry the kernel fails to write shows up as NaN (or -1).
    plan = torch.full_like(M, float("nan"))
    log_u = torch.full_like(a, float("nan"))
    log_v = torch.full_like(b, float("nan"))
    n_iter = torch.full((B,), -1, dtype=torch.int64, device=M.device)
    err = torch.full((B,), float("nan"), dtype=M.dtype, device=M.device)
    if B:
        _sinkhorn_log_kernel[(B,)](
            M, a, b, plan, log_u, log_v, n_iter, err,
            n, m, 1.0 / reg, max_iter, stop_thr,
            BLOCK_N=max(16, triton.next_power_of_2(n)), BLOCK_M=max(16, triton.next_power_of_2(m)),
        )  # fmt: skip
    return SinkhornResult(plan, log_u, log_v, n_iter, err, "log")


#: The backend's ``best_stability`` (:func:`topoot_gpu.transport.api.best_stability`): costs, this
#: backend's solver, stability and best match on the padded batch.
best_stability = best_stability_through(sinkhorn, DOMAINS)
