"""The ``"triton"`` backend of entropic transport: a fused log-domain Sinkhorn, one program per
problem, every iteration in one launch; ``best_stability`` fuses the stabilities and the best
matches into the same launch, so no plan reaches global memory.

Each program loads its padded problem (``n, m <= TRITON_MAX_SIZE``) once and iterates on chip: the
``v`` update, the ``u`` update and, every 10 iterations, the column-marginal check, exactly as
:func:`topoot_gpu.transport.api.sinkhorn` in the log domain (POT ``sinkhorn_log``). A larger
problem raises a ``ValueError`` (the ``"torch"`` backend takes it). Runs on CUDA tensors, or on CPU
tensors under ``TRITON_INTERPRET=1`` (set before this module is imported), which is how CI tests it.

The tile is held in registers: the warps per program grow with it (:func:`num_warps`) so that up to
64 x 64 (float32 and float64) it fits in sm_90's registers without spilling; larger tiles, up to
``TRITON_MAX_SIZE``, run correctly but spill to local memory (compiled ahead of time for sm_90 in
``tests/test_transport_triton.py``, which checks the first and records the second).
"""

from __future__ import annotations

import math

import torch

from ..core.host import to_host
from .padded import pad_points, padded_diagram_costs, ragged_slots
from .results import BestStability, SinkhornResult

try:
    import triton
    import triton.language as tl
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("backend='triton' needs Triton: pip install 'topoot_gpu[triton]'") from e

#: The domains this backend runs.
DOMAINS = ("log",)
#: Gets padded, checked batches and a domain from the api (see ``_cpp.FUSED``).
FUSED = False
#: Largest n, m the kernel takes (a padded tile up to 256 x 256; above 64 it spills, see above).
TRITON_MAX_SIZE = 256
#: Largest tile side that fits in registers without spilling (sm_90, float32 and float64).
REGISTER_TILE = 64


def num_warps(block_n: int, block_m: int) -> int:
    """Warps per program for a ``block_n x block_m`` tile: 4 up to 32 x 32, then twice as many per
    doubling of the side (8 at 64, 16 at 128, 32 at 256), so each thread holds a bounded share."""
    side = max(block_n, block_m)
    return 4 if side <= 32 else min(32, 8 * (side // 64))


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
def _sqrt_rn(x):
    """The correctly rounded square root, as the other backends take it (``tl.sqrt`` is an
    approximation in fp32, and ``tl.sqrt_rn`` takes fp32 only)."""
    if x.dtype == tl.float32:
        return tl.sqrt_rn(x)
    else:
        return tl.sqrt(x)


@triton.jit
def _load_problem(M_ptr, a_ptr, b_ptr, params_ptr, pid, n, m, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's padded problem: the tile of M, the log kernel Mr, log weights and masks."""
    reg = tl.load(params_ptr)
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_M)
    a = tl.load(a_ptr + pid * n + rows, mask=rows < n, other=0.0)
    b = tl.load(b_ptr + pid * m + cols, mask=cols < m, other=0.0)
    row_real = a > 0
    col_real = b > 0
    real = row_real[:, None] & col_real[None, :]
    offs = pid * n * m + rows[:, None] * m + cols[None, :]
    inside = (rows[:, None] < n) & (cols[None, :] < m)
    M = tl.load(M_ptr + offs, mask=inside, other=0.0)
    Mr = tl.where(real, -M / reg, float("-inf"))  # as POT and the other backends write it
    loga = tl.where(row_real, tl.log(tl.where(row_real, a, 1.0)), float("-inf"))
    logb = tl.where(col_real, tl.log(tl.where(col_real, b, 1.0)), float("-inf"))
    return M, Mr, b, loga, logb, row_real, col_real, offs, inside


@triton.jit
def _solve(Mr, b, loga, logb, row_real, col_real, m, stop_thr, max_iter, BLOCK_M: tl.constexpr):
    """POT's log-domain iterates on one tile: ``(u, v, n_iter, err)``."""
    cols = tl.arange(0, BLOCK_M)
    u = tl.where(row_real, 0.0, float("-inf")).to(Mr.dtype)
    v = tl.where(col_real, 0.0, float("-inf")).to(Mr.dtype)
    # A problem without a real row or column has a zero plan: it stops at once.
    go = (tl.sum(row_real.to(tl.int32), 0) > 0) & (tl.sum(col_real.to(tl.int32), 0) > 0)
    niter = tl.where(go, max_iter - 1, 0)
    err = tl.sum(tl.zeros([BLOCK_M], dtype=Mr.dtype), 0) + 1.0
    it = 0
    while go:
        # Padding lines have log weight -inf and an LSE of -inf: keep them at -inf without
        # forming -inf - -inf.
        v = tl.where(col_real, tl.where(col_real, logb, 0.0) - _lse(Mr + u[:, None], 0), float("-inf"))
        u = tl.where(row_real, tl.where(row_real, loga, 0.0) - _lse(Mr + v[None, :], 1), float("-inf"))
        if it % 10 == 0:
            colsum = tl.sum(tl.exp(Mr + u[:, None] + v[None, :]), 0)
            d = tl.where(cols < m, colsum - b, 0.0)
            err = _sqrt_rn(tl.sum(d * d, 0))
            if err < stop_thr:
                go = False
                niter = it
        it += 1
        if it >= max_iter:
            go = False
    return u, v, niter, err


@triton.jit
def _solved_problem(M_ptr, a_ptr, b_ptr, params_ptr, pid, n, m, max_iter, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's problem loaded and solved: ``(M, Mr, u, v, n_iter, err, offs, inside)``."""
    M, Mr, b, loga, logb, row_real, col_real, offs, inside = _load_problem(
        M_ptr, a_ptr, b_ptr, params_ptr, pid, n, m, BLOCK_N, BLOCK_M
    )
    u, v, niter, err = _solve(Mr, b, loga, logb, row_real, col_real, m, tl.load(params_ptr + 1), max_iter, BLOCK_M)
    return M, Mr, u, v, niter, err, offs, inside


# Sizes and the iteration count are not specialised on (one compile per tile serves every shape).
# reg and stop_thr come in a tensor of the problem's dtype: Triton passes Python floats as fp32
# scalars, which would round 0.3 and move a float64 plan by ~1e-10.
@triton.jit(do_not_specialize=["n", "m", "max_iter"])
def _sinkhorn_log_kernel(
    M_ptr, a_ptr, b_ptr, plan_ptr, u_ptr, v_ptr, niter_ptr, err_ptr, params_ptr,
    n, m, max_iter,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    pid = tl.program_id(0).to(tl.int64)
    M, Mr, u, v, niter, err, offs, inside = _solved_problem(
        M_ptr, a_ptr, b_ptr, params_ptr, pid, n, m, max_iter, BLOCK_N, BLOCK_M
    )
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_M)
    tl.store(plan_ptr + offs, tl.exp(Mr + u[:, None] + v[None, :]), mask=inside)
    tl.store(u_ptr + pid * n + rows, u, mask=rows < n)
    tl.store(v_ptr + pid * m + cols, v, mask=cols < m)
    tl.store(niter_ptr + pid, niter.to(tl.int64))
    tl.store(err_ptr + pid, err)


@triton.jit
def _best(S, M, real, idx, AXIS: tl.constexpr):
    """Along ``AXIS``: the largest ``S`` over ``real`` entries, ``M`` at its first index, as
    :func:`~topoot_gpu.transport.padded.best_match` (a line with none: ``(0, +inf)``)."""
    S = tl.where(real, S, float("-inf"))
    s = tl.max(S, AXIS)
    if AXIS == 1:
        first = tl.min(tl.where(S == s[:, None], idx[None, :], 1 << 30), 1)
        c = tl.sum(tl.where(idx[None, :] == first[:, None], M, 0.0), 1)
    else:
        first = tl.min(tl.where(S == s[None, :], idx[:, None], 1 << 30), 0)
        c = tl.sum(tl.where(idx[:, None] == first[None, :], M, 0.0), 0)
    none = s == float("-inf")
    return tl.where(none, 0.0, s), tl.where(none, float("inf"), c)


@triton.jit(do_not_specialize=["n", "m", "max_iter"])
def _best_stability_kernel(
    M_ptr, a_ptr, b_ptr, p_sizes_ptr, q_sizes_ptr, s_row_ptr, c_row_ptr, s_col_ptr, c_col_ptr, niter_ptr, params_ptr,
    n, m, max_iter,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
):  # fmt: skip
    # The solve of _sinkhorn_log_kernel, then S = plan / (1 + sqrt(max(M, 0))) and each real line's
    # best match, all on chip: only the per-point results reach global memory.
    pid = tl.program_id(0).to(tl.int64)
    M, Mr, u, v, niter, err, offs, inside = _solved_problem(
        M_ptr, a_ptr, b_ptr, params_ptr, pid, n, m, max_iter, BLOCK_N, BLOCK_M
    )
    rows = tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_M)
    S = tl.exp(Mr + u[:, None] + v[None, :]) / (1.0 + _sqrt_rn(tl.maximum(M, 0.0)))
    # Real points only: the padding and, with diagonal costs, the diagonal (after the points).
    real = (rows[:, None] < tl.load(p_sizes_ptr + pid)) & (cols[None, :] < tl.load(q_sizes_ptr + pid))
    s_row, c_row = _best(S, M, real, cols, 1)
    s_col, c_col = _best(S, M, real, rows, 0)
    tl.store(s_row_ptr + pid * n + rows, s_row, mask=rows < n)
    tl.store(c_row_ptr + pid * n + rows, c_row, mask=rows < n)
    tl.store(s_col_ptr + pid * m + cols, s_col, mask=cols < m)
    tl.store(c_col_ptr + pid * m + cols, c_col, mask=cols < m)
    tl.store(niter_ptr + pid, niter.to(tl.int64))


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
    params = torch.tensor([reg, stop_thr], dtype=M.dtype, device=M.device)
    block_n, block_m = max(16, triton.next_power_of_2(n)), max(16, triton.next_power_of_2(m))
    if B:
        _sinkhorn_log_kernel[(B,)](
            M, a, b, plan, log_u, log_v, n_iter, err, params,
            n, m, max_iter,
            BLOCK_N=block_n, BLOCK_M=block_m, num_warps=num_warps(block_n, block_m),
        )  # fmt: skip
    return SinkhornResult(plan, log_u, log_v, n_iter, err, "log")


def best_stability(
    P: torch.Tensor, p_sizes: torch.Tensor, Q: torch.Tensor, q_sizes: torch.Tensor, *, cost: str, reg: float,
    max_iter: int, stop_thr: float, num_threads: int,
) -> BestStability:  # fmt: skip
    """The backend's ``best_stability`` (:func:`topoot_gpu.transport.api.best_stability`): the padded
    costs (:func:`~topoot_gpu.transport.padded.padded_diagram_costs`), then one launch that solves
    every problem, forms its stabilities and reduces them to each point's best match on chip: no
    plan is written to global memory. The same iterates and results as :func:`sinkhorn` followed
    by :func:`~topoot_gpu.transport.padded.stability` and
    :func:`~topoot_gpu.transport.padded.best_match`, to the bit (both take correctly rounded square
    roots). One host read: the largest sizes (the tile)."""
    n, m = (int(x) for x in to_host(torch.stack([p_sizes.amax(), q_sizes.amax()]))) if len(p_sizes) else (0, 0)
    p_slots = ragged_slots(p_sizes, total=len(P))
    q_slots = ragged_slots(q_sizes, total=len(Q))
    M, a, b = padded_diagram_costs(
        pad_points(P, p_sizes, width=n, slots=p_slots), p_sizes, pad_points(Q, q_sizes, width=m, slots=q_slots),
        q_sizes, kind=cost,
    )  # fmt: skip
    B, n, m = M.shape
    if max(n, m) > TRITON_MAX_SIZE:
        raise ValueError(
            f"P, Q: backend 'triton' solves problems up to {TRITON_MAX_SIZE} points a side on chip, got "
            f"{n} x {m} (with the diagonal); use backend='torch' (or 'cpp' on the host)"
        )
    # Poisoned outputs: an entry the kernel fails to write shows up as NaN (or -1).
    s_row, c_row = (torch.full((B, n), math.nan, dtype=M.dtype, device=M.device) for _ in range(2))
    s_col, c_col = (torch.full((B, m), math.nan, dtype=M.dtype, device=M.device) for _ in range(2))
    n_iter = torch.full((B,), -1, dtype=torch.int64, device=M.device)
    params = torch.tensor([reg, stop_thr], dtype=M.dtype, device=M.device)
    block_n, block_m = max(16, triton.next_power_of_2(n)), max(16, triton.next_power_of_2(m))
    if B:
        _best_stability_kernel[(B,)](
            M, a, b, p_sizes, q_sizes, s_row, c_row, s_col, c_col, n_iter, params,
            n, m, max_iter,
            BLOCK_N=block_n, BLOCK_M=block_m, num_warps=num_warps(block_n, block_m),
        )  # fmt: skip
    (p_problem, p_slot), (q_problem, q_slot) = p_slots, q_slots
    return BestStability(
        s_row[p_problem, p_slot], c_row[p_problem, p_slot], s_col[q_problem, q_slot], c_col[q_problem, q_slot], n_iter
    )
