"""Batched entropic optimal transport for many small ragged problems (SPEC section 3).

One solver call runs a whole batch of problems ``(a_k, b_k, M_k)``, padded to a common
``[B, n, m]``. Rows with ``a = 0`` and columns with ``b = 0`` are padding: they start at
``log u = -inf`` / ``log v = -inf`` and never change a real entry, so a padded problem gives the
plan of the same problem without its padding. Padding costs are ignored, whatever their value:
only real entries are checked finite. (A real zero weight is treated the same way, which
equals POT on the problem with that row removed.) A batch may also come packed, the problems end
to end with their sizes (``sizes=``; SPEC 3 speaks of padded batches only, packed ones are this
library's extension): each problem then costs its own size in the ``"cpp"`` backend, and the
result is the padded batch's real entries.

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

:func:`best_stability` is the step the pseudo-label selection takes (SPEC 4.3 and 4.5): for a
ragged batch of pairs of diagrams, the costs, the plans and every point's best stability.

This module checks the arguments once and dispatches through the backend table
(:mod:`topoot_gpu.core.backends`) to one module per backend with the same two functions: ``_cpp``,
``_torch``, ``_triton`` and ``reference`` (POT).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import torch

from .. import _C
from ..core import backends
from ..core.allocator import gib, memory_budget
from ..core.host import to_host
from ..core.validation import (
    check_choice,
    check_finite,
    check_flag,
    check_int,
    check_number,
    check_threads,
    floating_tensor,
)
from .padded import (
    best_match,
    diagram_costs,
    flat_layout,
    packed_real_costs,
    padded_diagram_costs,
    solve_packed,
    solve_padded,
    stability,
)
from .results import (
    BestStability,
    SinkhornResult,
    auto_domain,
    check_inputs,
    check_overflow,
    non_finite_plan_error,
)

__all__ = [
    "BestStability",
    "SinkhornResult",
    "best_match",
    "best_stability",
    "diagram_costs",
    "padded_diagram_costs",
    "sinkhorn",
    "stability",
]

DOMAINS = ("auto", "scaling", "log")
COSTS = ("normalized", "diagonal")


def _check_problem(a: Any, b: Any, M: Any, sizes: Any) -> tuple[torch.Tensor, ...]:
    """Shapes, dtype and device of a padded batch, or of a packed one (``sizes``: then also the
    sizes, int64 host tensors)."""
    a, b, M = floating_tensor(a, "a"), floating_tensor(b, "b"), floating_tensor(M, "M")
    if sizes is None:
        if M.dim() != 3:
            raise ValueError(f"M: expected shape [B, n, m], got {tuple(M.shape)}")
        B, n, m = M.shape
        if tuple(a.shape) != (B, n):
            raise ValueError(f"a: expected shape {(B, n)} to match M {tuple(M.shape)}, got {tuple(a.shape)}")
        if tuple(b.shape) != (B, m):
            raise ValueError(f"b: expected shape {(B, m)} to match M {tuple(M.shape)}, got {tuple(b.shape)}")
        n_sizes = m_sizes = None
    else:
        n_sizes, m_sizes = _check_sizes(sizes)
        for name, x, want in (("a", a, n_sizes.sum()), ("b", b, m_sizes.sum()), ("M", M, (n_sizes * m_sizes).sum())):
            if x.dim() != 1 or len(x) != int(want):
                raise ValueError(
                    f"{name}: a packed batch needs a 1-D tensor of {int(want)} entries (from sizes), "
                    f"got shape {tuple(x.shape)}"
                )
    if not (a.device == b.device == M.device):
        raise ValueError(f"a, b, M: expected one device, got {a.device}, {b.device}, {M.device}")
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), M.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    return a.to(dtype), b.to(dtype), M.to(dtype), n_sizes, m_sizes


def _check_sizes(sizes: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(sizes, (tuple, list)) or len(sizes) != 2:
        raise ValueError(f"sizes: expected (n_sizes, m_sizes), got {type(sizes).__name__}")
    out = []
    for x in sizes:
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).detach()
        if x.dim() != 1 or x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise ValueError(f"sizes: expected two 1-D integer arrays, got dtype {x.dtype}, shape {tuple(x.shape)}")
        out.append(x.cpu().to(torch.int64))
    if len(out[0]) != len(out[1]):
        raise ValueError(f"sizes: n_sizes and m_sizes differ in length ({len(out[0])} and {len(out[1])})")
    if bool((out[0] < 0).any()) or bool((out[1] < 0).any()):
        raise ValueError("sizes: expected non-negative sizes")
    return out[0], out[1]


def _check_values(a: torch.Tensor, b: torch.Tensor, M: torch.Tensor, num_threads: int, sizes: tuple | None) -> float:
    """Raise on NaN/inf weights or real costs, or negative weights, in a padded or packed
    (``sizes``) batch (padding costs may be anything); return ``max |M|`` over the real entries. CPU
    tensors are checked in one C++ pass over the real costs, threaded over the problems."""
    if M.device.type == "cpu":
        check = _C.sinkhorn_check_f64 if M.dtype == torch.float64 else _C.sinkhorn_check_f32
        finite, a_ok, b_ok, worst = check(*flat_layout(a, b, M, sizes), num_threads)
    else:
        real = packed_real_costs(a, b, M, *sizes) if sizes else (a > 0)[:, :, None] & (b > 0)[:, None, :]
        real_M = torch.where(real, M, 0.0)
        finite = all(bool(torch.isfinite(x).all()) for x in (a, b, real_M))
        a_ok, b_ok = not bool((a < 0).any()), not bool((b < 0).any())
        worst = float(real_M.abs().max()) if finite and M.numel() else 0.0
    check_inputs(finite, a_ok, b_ok, a, b, M)
    return worst


def _check_solver(reg: Any, max_iter: Any, stop_thr: Any) -> tuple[float, int, float]:
    reg = check_number("reg", reg, minimum=0, strict=True)
    max_iter = check_int("max_iter", max_iter, minimum=1)
    stop_thr = check_number("stop_thr", stop_thr, minimum=0, finite=False)
    return reg, max_iter, stop_thr


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
    sizes: Any = None,
    return_plan: bool = True,
) -> SinkhornResult:
    """Entropic OT plans of a batch of (padded or packed, ragged) problems, POT's iterates.

    Args:
        a: ``[B, n]`` row weights (``0`` marks a padding row); packed: ``[sum n_sizes]``.
        b: ``[B, m]`` column weights (``0`` marks a padding column); packed: ``[sum m_sizes]``.
        M: ``[B, n, m]`` costs; padding entries are ignored, whatever their value (NaN and inf
            included; the ``"cpp"`` backend reads no padding row and no column past a problem's
            last real one, so a padded batch costs about what the packed one does). Packed: ``[sum
            n_sizes * m_sizes]``, each problem's ``[n_k, m_k]`` costs row-major, problem after
            problem (:func:`diagram_costs` with ``packed=True`` builds them).
        reg: entropic regularisation, ``> 0``.
        max_iter: at most this many iterations per problem (POT's ``numItermax``).
        stop_thr: stop threshold on the column-marginal error, checked every 10 iterations.
        domain: ``"auto"``, ``"scaling"`` or ``"log"`` (see the module doc; ``"triton"`` runs the
            log domain only, which ``"auto"`` picks for it).
        backend: ``"auto"`` (``"cpp"`` for CPU tensors, ``"torch"`` for CUDA tensors), ``"cpp"`` (the
            C++ core: each problem solved start to finish in cache, threads over the batch; host
            tensors), ``"torch"`` (vectorised over the batch, any device), ``"triton"`` (one
            program per problem, n, m <= 256; CUDA tensors, or CPU tensors under
            ``TRITON_INTERPRET=1``; extra ``triton``), ``"reference"`` (POT in a loop; host tensors;
            extra ``test``). A backend that does not take the inputs' device raises a
            ``ValueError``.
        num_threads: worker threads of the ``"cpp"`` backend and of the C++ input check of CPU
            tensors (default: all cores).
        sizes: ``None`` (a padded batch) or ``(n_sizes, m_sizes)``, int ``[B]`` each: a packed
            batch, whose problem ``k`` has ``n_sizes[k]`` rows and ``m_sizes[k]`` columns (read on
            the host). The ``"cpp"`` backend solves each at its own size and touches nothing
            else; the other backends solve it in groups of similar sizes, each padded to its own
            largest problem (on a GPU ``padded.size_classes``: no side beyond twice a problem's
            larger one; on the CPU ``padded.cache_groups``, which also split a padded batch into
            groups whose matrices stay in cache). The result is packed the same way: ``plan [sum
            n_k m_k]``, ``log_u [sum n_k]``, ``log_v [sum m_k]``, ``n_iter``, ``err [B]``; its
            values are the padded batch's real entries (bit for bit with ``"cpp"``; the torch
            backend's vectorised reductions depend on the padded width, so there equal to
            rounding).
        return_plan: ``False``: ``result.plan`` is ``None`` and the ``"cpp"`` backend never
            allocates or writes it (the plan is ``exp(-M/reg + log_u_i + log_v_j)``).

    Inputs are torch tensors or numpy arrays of one floating dtype family (the result is float64
    if any input is, else float32) on one device, any strides; the result is on that device.
    The solver is not differentiable: inputs that require grad are read detached.

    Warns:
        RuntimeWarning: once per call, naming how many problems ended without reaching
            ``stop_thr`` (``max_iter`` hit, or stopped on numerical errors), as POT warns.

    Raises:
        ValueError: bad shapes, dtypes, devices or options; NaN/inf or negative weights; costs
            whose ``max |M| / reg`` overflows the dtype (the plan depends on ``M / reg`` only:
            rescale both); a plan that is not finite although the inputs are (never returned).
    """
    backend = backends.check_backend("sinkhorn", backend)
    check_choice("domain", domain, DOMAINS)
    return_plan = check_flag("return_plan", return_plan)
    num_threads = check_threads(num_threads)
    a, b, M, n_sizes, m_sizes = _check_problem(a, b, M, sizes)
    reg, max_iter, stop_thr = _check_solver(reg, max_iter, stop_thr)
    name, _ = backends.resolve("sinkhorn", backend, M.device)
    module = backends.load("sinkhorn", name)
    if domain != "auto" and domain not in module.DOMAINS:
        raise ValueError(f"domain: backend {name!r} runs {module.DOMAINS}, got {domain!r}")
    packed = n_sizes is not None
    solver = {"reg": reg, "max_iter": max_iter, "stop_thr": stop_thr, "num_threads": num_threads}
    # Every backend "auto" picks here takes the inputs' device (core.backends), so nothing moves.
    if module.FUSED:
        sizes = (n_sizes, m_sizes) if packed else None
        result = module.sinkhorn(a, b, M, domain=domain, sizes=sizes, return_plan=return_plan, **solver)
    else:
        sizes = (n_sizes.to(M.device), m_sizes.to(M.device)) if packed else None
        worst = _check_values(a, b, M, num_threads, sizes)
        check_overflow(worst, reg, M.dtype)
        if domain == "auto":  # one rule for the whole batch, before it is split by size
            domain = auto_domain(worst, reg, M.dtype)
            domain = domain if domain in module.DOMAINS else module.DOMAINS[0]

        def solve(a: torch.Tensor, b: torch.Tensor, M: torch.Tensor) -> SinkhornResult:
            return module.sinkhorn(a, b, M, domain=domain, **solver)

        result = solve_packed(solve, a, b, M, *sizes) if packed else solve_padded(solve, a, b, M)
        if not return_plan:
            result = dataclasses.replace(result, plan=None)
    _check_result(result, stop_thr, plan_checked=module.FUSED)
    return result


def _check_result(result: SinkhornResult, stop_thr: float, *, plan_checked: bool) -> None:
    """Raise on a non-finite plan (finite inputs), warn once about problems that did not converge.
    ``plan_checked``: the backend checked the plan as it wrote it (``"cpp"``)."""
    plan = result.plan
    if plan is not None and not plan_checked:
        if plan.device.type == "cpu":  # one C++ pass; torch.isfinite is four kernels and temporaries
            all_finite = _C.all_finite_f64 if plan.dtype == torch.float64 else _C.all_finite_f32
            finite = all_finite(plan.contiguous().numpy())
        else:
            finite = bool(torch.isfinite(plan).all())
        if not finite:
            raise non_finite_plan_error()
    missed = int((~(result.err < stop_thr)).sum())
    if missed:
        warnings.warn(
            f"sinkhorn: {missed} of {len(result.err)} problems did not reach stop_thr={stop_thr:g} "
            "(max_iter reached or numerical errors); their plans are not converged",
            RuntimeWarning,
            stacklevel=3,
        )


def _check_side(points: Any, sizes: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    points = floating_tensor(points, name)
    if points.dim() != 2 or points.shape[1] != 2:
        raise ValueError(f"{name}: expected [N, 2] (low, high) points, got shape {tuple(points.shape)}")
    size_name = f"{name.lower()}_sizes"
    if not isinstance(sizes, torch.Tensor):
        if isinstance(sizes, np.ndarray):
            sizes = sizes.copy()  # torch refuses negative strides, even on a one-element view
        try:
            sizes = torch.as_tensor(sizes, device=points.device)
        except (TypeError, RuntimeError, ValueError) as e:
            raise ValueError(f"{size_name}: expected a 1-D integer tensor or array, got {sizes!r}") from e
    if sizes.dim() != 1 or sizes.dtype.is_floating_point or sizes.dtype == torch.bool or sizes.is_complex():
        raise ValueError(f"{size_name}: expected a 1-D integer tensor, got {sizes.dtype} {tuple(sizes.shape)}")
    if sizes.device != points.device:
        raise ValueError(f"{size_name}: on {sizes.device}, {name} is on {points.device}")
    return points.double().contiguous(), sizes.to(torch.int64)


def _check_sides_values(P: torch.Tensor, p_sizes: torch.Tensor, Q: torch.Tensor, q_sizes: torch.Tensor):
    """The sizes on the host (one read for both sides) after checking them, and the points checked
    finite (one read for both unless one is not): ``ValueError`` naming the argument."""
    sizes = to_host(torch.cat([p_sizes, q_sizes]))
    n, m = sizes[: len(p_sizes)], sizes[len(p_sizes) :]
    for name, points, k in (("P", P, n), ("Q", Q, m)):
        if (k < 0).any() or int(k.sum()) != len(points):
            what = f"non-negative sizes adding up to {len(points)} points of {name}"
            raise ValueError(f"{name.lower()}_sizes: expected {what}")
    if not bool(torch.isfinite(P.sum() + Q.sum())):
        check_finite(P, "P")
        check_finite(Q, "Q")
    return n, m


def best_stability(
    P: Any,
    p_sizes: Any,
    Q: Any,
    q_sizes: Any,
    *,
    cost: str = "normalized",
    reg: float,
    max_iter: int = 1000,
    stop_thr: float = 1e-9,
    backend: str = "auto",
    num_threads: int | None = None,
    max_memory: int | None = None,
) -> BestStability:
    """Every point's best stability in a batch of ragged diagram problems (SPEC 3, 4.3, 4.5).

    Problem ``k`` transports the ``p_sizes[k]`` points of its ``P`` diagram to the ``q_sizes[k]``
    points of its ``Q`` diagram: costs ``M`` of kind ``cost`` and weights (:func:`diagram_costs`),
    POT's Sinkhorn iterates (the domain picked per problem as ``domain="auto"`` picks it for a
    batch), ``S = plan / (1 + sqrt(max(M, 0)))``; then for every point the maximum of its row
    (``P``) or column (``Q``) of ``S`` over the real points of the other side, and ``M`` there (the
    first maximum on ties; the diagonal of ``"diagonal"`` costs is never a match).

    Args:
        P: ``[sum(p_sizes), 2]`` ``(low, high)`` points, problem after problem (float64 inside).
        p_sizes: ``[B]`` integers, each problem's number of ``P`` points (0 allowed).
        Q, q_sizes: the same for the other side, on ``P``'s device.
        cost: ``"normalized"`` (released implementation) or ``"diagonal"`` (paper text).
        reg, max_iter, stop_thr: the solver's parameters, as in :func:`sinkhorn`.
        backend: ``"auto"`` (``"cpp"``, on a host copy for CUDA tensors), ``"cpp"`` (one fused call:
            costs, plan and best match per problem, nothing padded; host tensors), ``"torch"``
            (:func:`padded_diagram_costs`, :func:`sinkhorn`, :func:`stability` and
            :func:`best_match` on the padded batch; any device), ``"triton"`` (the same with the
            Triton solver, log domain, problems up to 256 points a side), ``"reference"`` (POT,
            problem by problem).
        num_threads: worker threads of the ``"cpp"`` backend (default: all cores).
        max_memory: bytes the step may allocate (default: half of the memory of the device it
            runs on, :func:`topoot_gpu.core.allocator.memory_budget`). Each backend's need is
            estimated before anything is allocated (:data:`BYTES_PER_ENTRY` bytes per cost-matrix
            entry, per problem solved at once): the ``"cpp"`` backend runs fewer threads (the same
            bits), the padded backends split the batch into chunks (the same up to rounding: a
            problem's padding sets the order of its reductions).

    Returns:
        A :class:`BestStability` on ``P``'s device.

    Raises:
        ValueError: bad points, sizes or options, or a single problem needing more than
            ``max_memory`` (the message says how much it needs).
    """
    backend = backends.check_backend("best_stability", backend)
    check_choice("cost", cost, COSTS)
    P, p_sizes = _check_side(P, p_sizes, "P")
    Q, q_sizes = _check_side(Q, q_sizes, "Q")
    if Q.device != P.device:
        raise ValueError(f"P, Q: expected one device, got {P.device} and {Q.device}")
    if len(p_sizes) != len(q_sizes):
        n, m = len(p_sizes), len(q_sizes)
        raise ValueError(f"p_sizes, q_sizes: expected the same number of problems, got {n} and {m}")
    reg, max_iter, stop_thr = _check_solver(reg, max_iter, stop_thr)
    name, device = backends.resolve("best_stability", backend, P.device)
    n, m = _check_sides_values(P, p_sizes, Q, q_sizes)  # two host reads: the sizes, the finiteness
    threads = check_threads(num_threads)
    budget = memory_budget(max_memory, torch.device(device))
    extra = int(cost == "diagonal")
    threads, chunks = _memory_plan(n + extra, m + extra, name, budget, threads)
    solve = backends.load("best_stability", name).best_stability
    p_off, q_off = np.concatenate([[0], np.cumsum(n)]), np.concatenate([[0], np.cumsum(m)])
    parts = []
    for lo, hi in chunks:
        Pc, Qc = P[p_off[lo] : p_off[hi]], Q[q_off[lo] : q_off[hi]]
        parts.append(
            solve(
                Pc.to(device), p_sizes[lo:hi].to(device), Qc.to(device), q_sizes[lo:hi].to(device), cost=cost,
                reg=reg, max_iter=max_iter, stop_thr=stop_thr, num_threads=threads,
            )  # fmt: skip
        )
    fields = [[getattr(r, f).to(P.device) for r in parts] for f in BestStability.__dataclass_fields__]
    if len(parts) == 1:
        return BestStability(*(f[0] for f in fields))
    return BestStability(*(torch.cat(f) for f in fields))


#: Host reads of one :func:`best_stability` call besides its backend's: the sizes (one copy of
#: both sides) and the points' finiteness (one reduction of both).
HOST_READS = 2

#: Bytes per cost-matrix entry of one problem that each backend holds while solving it: ``"cpp"``
#: the solver's kernel only (float64, per thread: costs and plan are computed row by row, never
#: stored); the padded backends (costs, plan, stabilities, the solver's temporaries, float64) per
#: entry of the padded batch.
BYTES_PER_ENTRY = {"cpp": 8, "torch": 64, "triton": 32, "reference": 48}
#: Backends that pad a batch to its largest problem (the others solve problem by problem).
PADDED = ("torch", "triton")


def _memory_plan(
    n: np.ndarray, m: np.ndarray, backend: str, budget: int, threads: int
) -> tuple[int, list[tuple[int, int]]]:
    """Threads and chunks of problems ``[lo, hi)`` whose estimated memory fits ``budget``."""
    B = len(n)
    if B == 0:
        return threads, [(0, 0)]
    per = BYTES_PER_ENTRY[backend]
    entries = n.astype(np.int64) * m.astype(np.int64)
    worst = int(np.argmax(entries))
    if entries[worst] * per > budget:
        raise ValueError(
            f"max_memory: a transport problem of {int(n[worst])} x {int(m[worst])} points needs about "
            f"{gib(entries[worst] * per)} with backend {backend!r}, above the budget of {gib(budget)}; raise "
            "max_memory (SelectionConfig.max_memory for the selection) if the machine has it, or reduce the "
            "candidates (a smoother or smaller map, fewer levels)"
        )
    if backend not in PADDED:
        return max(1, min(threads, budget // max(1, int(entries[worst]) * per))), [(0, B)]
    chunks, lo, n_max, m_max = [], 0, 0, 0
    for k in range(B):
        n_new, m_new = max(n_max, int(n[k])), max(m_max, int(m[k]))
        if k > lo and (k - lo + 1) * n_new * m_new * per > budget:
            chunks.append((lo, k))
            lo, n_new, m_new = k, int(n[k]), int(m[k])
        n_max, m_max = n_new, m_new
    chunks.append((lo, B))
    return threads, chunks
