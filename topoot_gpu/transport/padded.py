"""The backend-neutral maths of padded and packed batches of diagram problems (SPEC 3 and 4): costs,
conversions between the two layouts, stability, best match, and every point's best stability
through any padded solver (the ``"torch"`` and
``"triton"`` backends of :func:`topoot_gpu.transport.api.best_stability`). Torch operations, any
device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..core.numerics import sqrt_rn
from ..core.validation import check_choice, check_int
from .results import BestStability, SinkhornResult, auto_domain


def diagram_costs(P: Any, Q: Any, *, kind: str = "normalized", packed: bool = False) -> tuple:
    """Costs and weights between two ragged batches of diagrams (SPEC 3).

    Args:
        P, Q: the ``B`` diagrams on each side, each a sequence of ``[n_k, 2]`` arrays or tensors
            of ``(low, high)`` points (empty diagrams allowed).
        kind: ``"normalized"`` (released implementation): ``D`` the Euclidean distances,
            ``M = (D / (max D + 1e-12))^2``, weights ``1/n`` and ``1/m``; or ``"diagonal"``
            (paper text): an extra last row and column for the diagonal, ``M[i, j] = |p_i -
            q_j|^2``, ``M[i, diag] = (high - low)^2 / 2``, ``M[diag, diag] = 0``, weights
            ``[1, ..., 1, m] / (n + m)`` and ``[1, ..., 1, n] / (n + m)``.
        packed: return the problems end to end instead of padded to the largest (each costs its
            own size in :func:`sinkhorn`'s ``"cpp"`` backend).

    Returns:
        ``packed=False``: ``(M, a, b)`` padded to ``[B, n_max(+1), m_max(+1)]`` (float64; padding
        weight 0, padding cost 0), ready for :func:`sinkhorn`. With ``"diagonal"``, the diagonal is
        the last row and column, after the padding.

        ``packed=True``: ``(M, a, b, sizes)`` with ``sizes = (n_sizes, m_sizes)`` (int64 ``[B]``,
        each problem's rows and columns, the diagonal's included), ``a [sum n_sizes]``, ``b [sum
        m_sizes]`` and ``M [sum n_sizes * m_sizes]`` (each problem's ``[n_k, m_k]`` costs
        row-major), float64, the same values as the padded problems' real entries, bit for bit;
        pass them as ``sinkhorn(a, b, M, sizes=sizes, ...)``.

    Raises:
        ValueError: ``P`` or ``Q`` not a sequence of finite ``[n, 2]`` real diagrams, different
            lengths, or (``"diagonal"``) costs beyond float64 (points far beyond ``1e154``:
            rescale them). ``"normalized"`` costs are scale-free and computed without overflow
            for any finite points.
    """
    check_choice("kind", kind, ("normalized", "diagonal"))
    Ps, Qs = _diagram_list(P, "P"), _diagram_list(Q, "Q")
    if len(Ps) != len(Qs):
        raise ValueError(f"P, Q: expected the same number of diagrams, got {len(Ps)} and {len(Qs)}")
    B = len(Ps)
    n = torch.tensor([len(p) for p in Ps], dtype=torch.int64)
    m = torch.tensor([len(q) for q in Qs], dtype=torch.int64)
    if packed:
        none = torch.zeros(0, 2, dtype=torch.float64)
        out = packed_diagram_costs(torch.cat([*Ps, none]), n, torch.cat([*Qs, none]), m, kind=kind)
        _check_diagonal_costs(kind, out[0])
        return out
    N, Mx = int(n.max()) if B else 0, int(m.max()) if B else 0
    Pp = torch.zeros(B, N, 2, dtype=torch.float64)
    Qp = torch.zeros(B, Mx, 2, dtype=torch.float64)
    for k in range(B):
        Pp[k, : n[k]] = Ps[k]
        Qp[k, : m[k]] = Qs[k]
    M, a, b = padded_diagram_costs(Pp, n, Qp, m, kind=kind)
    _check_diagonal_costs(kind, M)
    return M, a, b


def _check_diagonal_costs(kind: str, M: torch.Tensor) -> None:
    if kind == "diagonal" and not bool(torch.isfinite(M).all()):
        raise ValueError("P, Q: squared distances overflow float64 (points beyond ~1e154); rescale the diagrams")


def padded_diagram_costs(
    Pp: torch.Tensor, n: torch.Tensor, Qp: torch.Tensor, m: torch.Tensor, *, kind: str = "normalized"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`diagram_costs` of diagrams already padded: ``Pp [B, N, 2]`` with ``n [B]`` real
    points each, ``Qp [B, Mx, 2]`` with ``m [B]``."""
    B, N, Mx = Pp.shape[0], Pp.shape[1], Qp.shape[1]
    device = Pp.device
    row = torch.arange(N, device=device)[None, :] < n[:, None]
    col = torch.arange(Mx, device=device)[None, :] < m[:, None]
    real = row[:, :, None] & col[:, None, :]
    if kind == "normalized":
        # Scale-free: a problem with coordinates beyond 2**500 is divided by a power of two above
        # them first (exact; no host synchronisation), so squares cannot overflow. Others are
        # multiplied by 1: the released formula's bits.
        zero = torch.zeros(B, 1, dtype=Pp.dtype, device=device)
        big = torch.cat([Pp.abs().flatten(1), Qp.abs().flatten(1), zero], 1).amax(1)
        e = torch.where(big > 2.0**500, torch.frexp(big).exponent, 0)[:, None, None]
        Pp, Qp = torch.ldexp(Pp, -e), torch.ldexp(Qp, -e)
    sq = ((Pp[:, :, None, :] - Qp[:, None, :, :]) ** 2).sum(-1)
    if kind == "normalized":
        D = torch.where(real, sqrt_rn(sq), 0.0)
        Dmax = D.flatten(1).max(1).values if N * Mx else torch.zeros(B, dtype=torch.float64, device=device)
        M = torch.where(real, (D / (Dmax[:, None, None] + 1e-12)) ** 2, 0.0)
        a = torch.where(row, 1.0 / n.clamp(min=1)[:, None].double(), 0.0)
        b = torch.where(col, 1.0 / m.clamp(min=1)[:, None].double(), 0.0)
        return M, a, b
    M = torch.zeros(B, N + 1, Mx + 1, dtype=torch.float64, device=device)
    M[:, :N, :Mx] = torch.where(real, sq, 0.0)
    M[:, :N, Mx] = torch.where(row, (Pp[..., 1] - Pp[..., 0]) ** 2 / 2, 0.0)
    M[:, N, :Mx] = torch.where(col, (Qp[..., 1] - Qp[..., 0]) ** 2 / 2, 0.0)
    total = (n + m).clamp(min=1)[:, None].double()
    a = torch.cat([row.double(), m[:, None].double()], 1) / total
    b = torch.cat([col.double(), n[:, None].double()], 1) / total
    return M, a, b


def packed_diagram_costs(
    P: torch.Tensor, n: torch.Tensor, Q: torch.Tensor, m: torch.Tensor, *, kind: str = "normalized"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """:func:`diagram_costs` with ``packed=True`` of ragged points ``P [sum n, 2]`` (problem after
    problem), ``Q [sum m, 2]``: every entry computed where it lies, by the padded formulas (the
    same bits), nothing padded built."""
    B = len(n)
    device = P.device
    diagonal = kind == "diagonal"
    rows, cols = (n + 1, m + 1) if diagonal else (n, m)
    p_start, q_start = torch.cumsum(n, 0) - n, torch.cumsum(m, 0) - m
    entries = rows * cols
    k, t = ragged_slots(entries)  # every cost entry's problem and its index in the problem
    i = torch.div(t, cols[k], rounding_mode="floor")
    j = t - i * cols[k]
    if kind == "normalized":
        # As padded_diagram_costs: problems with coordinates beyond 2**500 scaled by a power of two.
        zero = torch.zeros(B, dtype=P.dtype, device=device)
        big = zero.scatter_reduce(0, ragged_slots(n)[0], P.abs().amax(1), "amax")
        big = big.scatter_reduce(0, ragged_slots(m)[0], Q.abs().amax(1), "amax")
        e = torch.where(big > 2.0**500, torch.frexp(big).exponent, 0)
        P = torch.ldexp(P, -e.repeat_interleave(n, output_size=len(P))[:, None])
        Q = torch.ldexp(Q, -e.repeat_interleave(m, output_size=len(Q))[:, None])
    p_row = (p_start[k] + i.clamp(max=(n[k] - 1).clamp(min=0))).clamp(max=max(len(P) - 1, 0))
    q_col = (q_start[k] + j.clamp(max=(m[k] - 1).clamp(min=0))).clamp(max=max(len(Q) - 1, 0))
    p = P[p_row] if len(P) else torch.zeros(len(k), 2, dtype=torch.float64, device=device)
    q = Q[q_col] if len(Q) else torch.zeros(len(k), 2, dtype=torch.float64, device=device)
    sq = ((p - q) ** 2).sum(-1)
    a_n = (1.0 / (n + m).clamp(min=1).double()) if diagonal else 1.0 / n.clamp(min=1).double()
    b_n = (1.0 / (n + m).clamp(min=1).double()) if diagonal else 1.0 / m.clamp(min=1).double()
    a = a_n.repeat_interleave(rows)
    b = b_n.repeat_interleave(cols)
    if not diagonal:
        D = sqrt_rn(sq)
        Dmax = torch.zeros(B, dtype=torch.float64, device=device).scatter_reduce(0, k, D, "amax")
        M = (D / (Dmax[k] + 1e-12)) ** 2
        return M, a, b, (rows, cols)
    in_p, in_q = i < n[k], j < m[k]
    to_diag_p = (p[:, 1] - p[:, 0]) ** 2 / 2
    to_diag_q = (q[:, 1] - q[:, 0]) ** 2 / 2
    M = torch.where(in_p & in_q, sq, torch.where(in_p, to_diag_p, torch.where(in_q, to_diag_q, 0.0)))
    a_last, b_last = torch.cumsum(rows, 0) - 1, torch.cumsum(cols, 0) - 1
    a[a_last] = m.double() / (n + m).clamp(min=1).double()
    b[b_last] = n.double() / (n + m).clamp(min=1).double()
    return M, a, b, (rows, cols)


def flat_layout(a: torch.Tensor, b: torch.Tensor, M: torch.Tensor, sizes: tuple | None) -> list[np.ndarray]:
    """A batch of host tensors as the C++ core takes it: flat ``a``, ``b``, ``M`` and every
    problem's sizes (a padded batch is ``B`` problems of ``n x m``)."""
    if sizes is None:
        B, n, m = M.shape
        sizes = (torch.full((B,), n, dtype=torch.int64), torch.full((B,), m, dtype=torch.int64))
    return [x.contiguous().reshape(-1).numpy() for x in (a, b, M)] + [s.numpy() for s in sizes]


def pad_packed(
    a: torch.Tensor, b: torch.Tensor, M: torch.Tensor, n_sizes: torch.Tensor, m_sizes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A packed batch (:func:`diagram_costs` with ``packed=True``) as padded ``[B, n_max, m_max]``
    problems (weight 0 and cost 0 on padding), for the backends that solve padded batches."""
    B = len(n_sizes)
    N = int(n_sizes.max()) if B else 0
    Mx = int(m_sizes.max()) if B else 0
    ap = torch.zeros(B, N, dtype=a.dtype, device=a.device)
    bp = torch.zeros(B, Mx, dtype=b.dtype, device=b.device)
    Mp = torch.zeros(B, N, Mx, dtype=M.dtype, device=M.device)
    ap[ragged_slots(n_sizes, total=len(a))] = a
    bp[ragged_slots(m_sizes, total=len(b))] = b
    Mp.view(-1).index_copy_(0, _padded_positions(n_sizes, m_sizes, len(M), N, Mx), M)
    return ap, bp, Mp


def pack_result(result: SinkhornResult, n_sizes: torch.Tensor, m_sizes: torch.Tensor) -> SinkhornResult:
    """A padded batch's result, its real slots packed problem after problem (:func:`pad_packed`)."""
    total = int((n_sizes * m_sizes).sum())
    plan = result.plan
    if plan is not None:
        plan = plan.reshape(-1).index_select(0, _padded_positions(n_sizes, m_sizes, total, *plan.shape[1:]))
    return SinkhornResult(
        plan,
        result.log_u[ragged_slots(n_sizes, total=int(n_sizes.sum()))],
        result.log_v[ragged_slots(m_sizes, total=int(m_sizes.sum()))],
        result.n_iter,
        result.err,
        result.domain,
    )


def size_classes(n_sizes: torch.Tensor, m_sizes: torch.Tensor) -> list[torch.Tensor]:
    """The problems of a packed batch on a GPU in groups, each to be padded to its own largest
    problem.

    By ``ceil(log2(max(n_k, m_k)))``, smallest first, so that no side is padded beyond twice the
    problem's larger side, when that at least halves the padded entries of the whole batch; else
    one group (each group is a solver call, whose fixed cost a few saved entries do not repay).
    On the CPU the groups are :func:`cache_groups`."""
    side = torch.maximum(n_sizes, m_sizes).clamp(min=1)
    key = torch.frexp((side - 1).double()).exponent  # ceil(log2(side)) for side >= 1, exactly
    groups = [torch.nonzero(key == c).flatten() for c in torch.unique(key)]

    def padded(g: torch.Tensor) -> int:
        return len(g) * int(n_sizes[g].max()) * int(m_sizes[g].max()) if len(g) else 0

    everything = torch.arange(len(n_sizes), device=n_sizes.device)
    return groups if 2 * sum(padded(g) for g in groups) <= padded(everything) else [everything]


#: Entries of one padded solver call on the CPU (:func:`cache_groups`): its K and K / a, 2 MiB each
#: in float64, stay in the last-level cache through every iteration. Measured with the torch
#: backend at one thread on a 64 x 256 x 256 batch: a product over the whole batch (32 MiB from
#: memory) took 3.5 ms, over a group of four 74 us (2.9x faster per entry); 2^16 to 2^19 were
#: within the noise of each other on ragged batches, smaller groups paying more fixed cost.
CPU_GROUP_ENTRIES = 1 << 18


def cache_groups(n_sizes: torch.Tensor, m_sizes: torch.Tensor, entries: int | None = None) -> list[torch.Tensor]:
    """The problems of a batch on the CPU in groups, each to be padded to its own largest problem:
    sorted by rows in buckets an eighth of an octave wide (``floor(8 log2 n_k)``), then by columns,
    and cut into consecutive groups of at most ``entries`` padded entries (group size x largest
    ``n`` x largest ``m``; a larger problem alone; default :data:`CPU_GROUP_ENTRIES`). A group's
    matrices stay in cache for all its iterations, and each problem is padded to about its own
    size on both sides (rows within 9%, columns to their neighbours')."""
    entries = CPU_GROUP_ENTRIES if entries is None else entries
    bucket = torch.floor(8 * torch.log2(n_sizes.clamp(min=1).double())).long()
    order = torch.argsort(bucket * (int(m_sizes.max()) + 1 if len(m_sizes) else 1) + m_sizes, stable=True)
    groups, start, N, Mx = [], 0, 0, 0
    for t, (nk, mk) in enumerate(zip(n_sizes[order].tolist(), m_sizes[order].tolist())):
        N2, M2 = max(N, nk), max(Mx, mk)
        if t > start and (t - start + 1) * N2 * M2 > entries:
            groups.append(order[start:t])
            start, N2, M2 = t, nk, mk
        N, Mx = N2, M2
    if len(order) > start:
        groups.append(order[start:])
    return groups


def solve_padded(
    solve: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], SinkhornResult], a: torch.Tensor, b: torch.Tensor,
    M: torch.Tensor,
) -> SinkhornResult:  # fmt: skip
    """A padded batch through a padded solver: on a GPU in one call; on the CPU one call per
    :func:`cache_groups` group of the problems' extents (last real row and column), each group
    cropped to its own largest extent. The solver's results do not depend on the other problems of
    its batch nor on padding (padding invariance), so the groups change no value beyond the
    rounding of its sums; ``solve`` must fix the domain (the batch rule is the caller's)."""
    B, n, m = M.shape
    if M.device.type != "cpu" or not (B and n and m):
        return solve(a, b, M)
    n_ext = ((a > 0) * torch.arange(1, n + 1)).amax(1).clamp(min=1)
    m_ext = ((b > 0) * torch.arange(1, m + 1)).amax(1).clamp(min=1)
    groups = cache_groups(n_ext, m_ext)
    if len(groups) == 1 and int(n_ext.max()) == n and int(m_ext.max()) == m:
        return solve(a, b, M)
    crops = [(_as_slice(g), int(n_ext[g].max()), int(m_ext[g].max())) for g in groups]
    cropped = any(N < n or Mx < m for _, N, Mx in crops)
    plan = torch.zeros_like(M) if cropped else torch.empty_like(M)
    log_u = torch.full_like(a, float("-inf"))
    log_v = torch.full_like(b, float("-inf"))
    n_iter = torch.zeros(B, dtype=torch.int64)
    err = torch.zeros(B, dtype=M.dtype)
    domain = "scaling"
    for g, N, Mx in crops:
        res = solve(a[g, :N], b[g, :Mx], M[g, :N, :Mx])
        plan[g, :N, :Mx], log_u[g, :N], log_v[g, :Mx] = res.plan, res.log_u, res.log_v
        n_iter[g], err[g], domain = res.n_iter, res.err, res.domain
    return SinkhornResult(plan, log_u, log_v, n_iter, err, domain)


def _as_slice(g: torch.Tensor) -> torch.Tensor | slice:
    """Problems ``k, k + 1, ...`` as a slice (views instead of gathered copies), others as they are."""
    if len(g) == 1 or bool((g.diff() == 1).all()):
        return slice(int(g[0]), int(g[-1]) + 1)
    return g


def solve_packed(
    solve: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], SinkhornResult], a: torch.Tensor, b: torch.Tensor,
    M: torch.Tensor, n_sizes: torch.Tensor, m_sizes: torch.Tensor,
) -> SinkhornResult:  # fmt: skip
    """A packed batch through a padded solver, one call per group (each padded to its own largest
    problem, not the batch's; :func:`cache_groups` on the CPU, :func:`size_classes` on a GPU), the
    results packed back in the batch's order. The
    solver's results do not depend on the other problems of its batch (padding invariance), so
    the groups change no value; ``solve`` must fix the domain (the batch rule is the caller's)."""
    groups = (cache_groups if M.device.type == "cpu" else size_classes)(n_sizes, m_sizes)
    if len(groups) == 1:  # no gathering: the batch padded as it is
        return pack_result(solve(*pad_packed(a, b, M, n_sizes, m_sizes)), n_sizes, m_sizes)
    B = len(n_sizes)
    device = M.device
    a_start = torch.cumsum(n_sizes, 0) - n_sizes
    b_start = torch.cumsum(m_sizes, 0) - m_sizes
    m_start = torch.cumsum(n_sizes * m_sizes, 0) - n_sizes * m_sizes
    # One slot past the end of a and b: padding reads 0 from it and writes there (then dropped), so
    # a group's weights and scalings move with one index each. Costs and plans move problem by
    # problem, as blocks: cheaper than indexing every entry.
    zero = torch.zeros(1, dtype=M.dtype, device=device)
    a_x, b_x = torch.cat([a, zero]), torch.cat([b, zero])
    plan, log_u, log_v = torch.empty_like(M), torch.empty_like(a_x), torch.empty_like(b_x)
    n_iter = torch.zeros(B, dtype=torch.int64, device=device)
    err = torch.zeros(B, dtype=M.dtype, device=device)
    domain = None
    for group in groups:
        n_k, m_k = n_sizes[group], m_sizes[group]
        N, Mx = int(n_k.max()), int(m_k.max())
        i = torch.arange(N, device=device)[None, :]
        j = torch.arange(Mx, device=device)[None, :]
        rows = torch.where(i < n_k[:, None], a_start[group][:, None] + i, len(a))  # [G, N]
        cols = torch.where(j < m_k[:, None], b_start[group][:, None] + j, len(b))  # [G, Mx]
        blocks = list(enumerate(zip(m_start[group].tolist(), n_k.tolist(), m_k.tolist())))
        Mg = torch.zeros(len(group), N, Mx, dtype=M.dtype, device=device)
        for t, (o, n, m) in blocks:
            Mg[t, :n, :m] = M[o : o + n * m].reshape(n, m)
        res = solve(a_x[rows], b_x[cols], Mg)
        for t, (o, n, m) in blocks:
            plan[o : o + n * m].view(n, m).copy_(res.plan[t, :n, :m])
        log_u[rows], log_v[cols] = res.log_u, res.log_v
        n_iter[group], err[group], domain = res.n_iter, res.err, res.domain
    return SinkhornResult(plan, log_u[:-1], log_v[:-1], n_iter, err, domain or "scaling")


def packed_real_costs(a: torch.Tensor, b: torch.Tensor, M: torch.Tensor, n_sizes: torch.Tensor,
                      m_sizes: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Which entries of a packed ``M`` are real (their row's and column's weights positive)."""
    k, i, j = _packed_entries(n_sizes, m_sizes, len(M))
    a_start = torch.cumsum(n_sizes, 0) - n_sizes
    b_start = torch.cumsum(m_sizes, 0) - m_sizes
    return (a[a_start[k] + i] > 0) & (b[b_start[k] + j] > 0)


def _padded_positions(n_sizes: torch.Tensor, m_sizes: torch.Tensor, total: int, N: int, Mx: int) -> torch.Tensor:
    """Where every entry of a packed ``M`` lies in the flat padded ``[B, N, Mx]`` batch (one flat
    index: far cheaper to scatter and gather on the CPU than three)."""
    k, i, j = _packed_entries(n_sizes, m_sizes, total)
    return (k * N + i) * Mx + j


def _packed_entries(n_sizes: torch.Tensor, m_sizes: torch.Tensor, total: int) -> tuple[torch.Tensor, ...]:
    """Problem, row and column of every entry of a packed ``M``."""
    k, t = ragged_slots(n_sizes * m_sizes, total=total)
    i = torch.div(t, m_sizes[k], rounding_mode="floor")
    return k, i, t - i * m_sizes[k]


def _diagram_list(X: Any, name: str) -> list[torch.Tensor]:
    if isinstance(X, (np.ndarray, torch.Tensor)) and getattr(X, "ndim", 0) != 1:
        raise ValueError(f"{name}: expected a sequence of [n, 2] diagrams, got an array of shape {tuple(X.shape)}")
    if isinstance(X, (str, bytes)) or not hasattr(X, "__iter__"):
        raise ValueError(f"{name}: expected a sequence of [n, 2] diagrams, got {type(X).__name__}")
    out = []
    for k, x in enumerate(X):
        if isinstance(x, torch.Tensor):
            if x.is_complex() or x.dtype == torch.bool:
                raise ValueError(f"{name}[{k}]: expected real points, got dtype {x.dtype}")
            x = x.detach().cpu().to(torch.float64).numpy()
        x = np.asarray(x)
        if x.dtype.kind not in "fiu":  # bool, complex, strings, objects
            raise ValueError(f"{name}[{k}]: expected real points, got dtype {x.dtype}")
        t = torch.from_numpy(x.astype(np.float64))  # a copy: any strides in
        if t.numel() == 0:
            t = t.reshape(0, 2)
        if t.dim() != 2 or t.shape[1] != 2:
            raise ValueError(f"{name}[{k}]: expected shape [n, 2], got {tuple(t.shape)}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name}[{k}]: contains NaN or infinite values")
        out.append(t)
    return out


def stability(plan: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``S = plan / (1 + sqrt(max(M, 0)))``: transported mass, discounted by its cost. ``plan`` and
    ``M``: floating tensors of one shape on one device."""
    _check_same_tensors(("plan", plan), ("M", M))
    return plan / (1.0 + sqrt_rn(torch.clamp(M, min=0)))


def _check_same_tensors(first: tuple[str, Any], *others: tuple[str, Any], rank: int | None = None) -> None:
    """Floating tensors (of ``rank`` dimensions where given), the others of the first one's shape
    and device: else a ``ValueError`` naming the argument."""
    want = "a floating tensor" if rank is None else f"a floating [{', '.join('Bnm'[:rank])}] tensor"
    for name, x in (first, *others):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or (rank is not None and x.dim() != rank):
            got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected {want}, got {got}")
    ref = first[1]
    for name, x in others:
        if x.shape != ref.shape or x.device != ref.device:
            raise ValueError(
                f"{name}: expected {first[0]}'s shape {tuple(ref.shape)} on {ref.device}, "
                f"got {tuple(x.shape)} on {x.device}"
            )


def best_match(
    S: torch.Tensor, M: torch.Tensor, *, dim: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every row (``dim=2``) or column (``dim=1``) of ``[B, n, m]`` stabilities: the maximum of
    ``S``, the cost ``M`` at that entry and its index (the first one on ties). Entries outside
    ``mask`` (e.g. padding) are never chosen; a line with none (or of length 0) gets ``(0, +inf, -1)``.
    ``S``, ``M`` (and ``mask``, bool) are tensors of one shape ``[B, n, m]`` on one device."""
    dim = check_int("dim", dim, minimum=1, maximum=2)
    _check_same_tensors(("S", S), ("M", M), rank=3)
    if mask is not None and (
        not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != S.shape
    ):
        raise ValueError(f"mask: expected a bool tensor of shape {tuple(S.shape)}")
    if S.shape[dim] == 0:
        shape = tuple(S.shape[:dim]) + tuple(S.shape[dim + 1 :])
        return (
            torch.zeros(shape, dtype=S.dtype, device=S.device),
            torch.full(shape, float("inf"), dtype=M.dtype, device=S.device),
            torch.full(shape, -1, dtype=torch.int64, device=S.device),
        )
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


def pad_points(
    points: torch.Tensor, sizes: torch.Tensor, *, width: int | None = None,
    slots: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:  # fmt: skip
    """Ragged ``points [sum(sizes), 2]`` (problem after problem) as ``[B, width, 2]``, zero padded;
    ``width`` (default ``max(sizes)``, read on the host) and ``slots`` (default
    :func:`ragged_slots`) when the caller has them."""
    B = len(sizes)
    if width is None:
        width = int(sizes.max()) if B else 0
    out = torch.zeros(B, width, 2, dtype=points.dtype, device=points.device)
    problem, slot = ragged_slots(sizes, total=len(points)) if slots is None else slots
    out[problem, slot] = points
    return out


def ragged_slots(sizes: torch.Tensor, *, total: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For every row of a ragged batch (problem after problem): its problem and its slot in it.
    ``total = sum(sizes)`` when known (nothing then waits for the device)."""
    problem = torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes, output_size=total)
    starts = torch.cumsum(sizes, 0) - sizes
    return problem, torch.arange(len(problem), device=sizes.device) - starts[problem]


def best_stability_through(sinkhorn: Callable[..., SinkhornResult], domains: tuple[str, ...]) -> Callable:
    """A backend's ``best_stability`` (:func:`topoot_gpu.transport.api.best_stability`) through its
    padded ``sinkhorn``, which runs ``domains``: see :func:`padded_best_stability`."""

    def best_stability(P, p_sizes, Q, q_sizes, *, cost, reg, max_iter, stop_thr, num_threads) -> BestStability:
        def solve(a, b, M, domain):
            kw = dict(reg=reg, max_iter=max_iter, stop_thr=stop_thr, domain=domain, num_threads=num_threads)
            return sinkhorn(a, b, M, **kw)

        return padded_best_stability(solve, P, p_sizes, Q, q_sizes, cost=cost, reg=reg, domains=domains)

    return best_stability


def padded_best_stability(
    solve: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], SinkhornResult],
    P: torch.Tensor, p_sizes: torch.Tensor, Q: torch.Tensor, q_sizes: torch.Tensor, *, cost: str, reg: float,
    domains: tuple[str, ...],
) -> BestStability:  # fmt: skip
    """Every point's best stability in a ragged batch of diagram problems, through a padded solver:
    the costs of every problem (:func:`padded_diagram_costs`), ``solve(a, b, M, domain)`` on the
    problems of each domain (picked per problem as the C++ backend picks it, when in ``domains``,
    else ``domains[0]``), then :func:`stability` and :func:`best_match` over the real points
    (padding and, with ``"diagonal"`` costs, the diagonal are never a match). Host reads: the two
    padded widths and each problem's largest cost (its domain)."""
    device, B = P.device, len(p_sizes)
    M, a, b = padded_diagram_costs(pad_points(P, p_sizes), p_sizes, pad_points(Q, q_sizes), q_sizes, kind=cost)
    # Real points only: padding, and the diagonal (the last row and column, after the padding).
    row = torch.arange(M.shape[1], device=device)[None, :] < p_sizes[:, None]
    col = torch.arange(M.shape[2], device=device)[None, :] < q_sizes[:, None]
    real = row[:, :, None] & col[:, None, :]
    weighted = (a > 0)[:, :, None] & (b > 0)[:, None, :]
    worst = torch.where(weighted, M.abs(), 0.0).flatten(1).amax(1) if M.numel() else torch.zeros(B, device=device)
    plan = torch.zeros_like(M)
    n_iter = torch.zeros(B, dtype=torch.int64, device=device)
    domain = [auto_domain(float(w), reg, torch.float64) for w in worst.tolist()]
    domain = [d if d in domains else domains[0] for d in domain]
    for name in sorted(set(domain)):
        k = torch.tensor([i for i, d in enumerate(domain) if d == name], dtype=torch.int64, device=device)
        res = solve(a[k], b[k], M[k], name)
        plan[k], n_iter[k] = res.plan, res.n_iter
    S = stability(plan, M)
    s_row, c_row, _ = best_match(S, M, dim=2, mask=real)
    s_col, c_col, _ = best_match(S, M, dim=1, mask=real)
    p_problem, p_slot = ragged_slots(p_sizes, total=len(P))
    q_problem, q_slot = ragged_slots(q_sizes, total=len(Q))
    return BestStability(
        s_row[p_problem, p_slot], c_row[p_problem, p_slot], s_col[q_problem, q_slot], c_col[q_problem, q_slot], n_iter
    )
