"""What the transport backends return, and the rule that picks the solver's domain."""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: max |M| / reg under which ``domain="auto"`` uses the scaling domain: ``K = exp(-M / reg) >=
#: e^-limit``, so the scalings stay far inside the floating range.
SCALING_LIMIT = {torch.float32: 50.0, torch.float64: 300.0}


def auto_domain(worst: float, reg: float, dtype: torch.dtype) -> str:
    """``"scaling"`` when ``worst / reg`` (``worst = max |M|`` over real entries) is within
    :data:`SCALING_LIMIT`, else ``"log"``."""
    return "scaling" if worst / reg <= SCALING_LIMIT[dtype] else "log"


@dataclass(frozen=True)
class SinkhornResult:
    """Solutions of a batch of problems.

    Attributes:
        plan: ``[B, n, m]`` transport plans (zero on padding); packed: ``[sum n_k m_k]``; ``None``
            when not asked for (``return_plan=False``).
        log_u, log_v: ``[B, n]``, ``[B, m]`` (packed: ``[sum n_k]``, ``[sum m_k]``) log scalings
            (``-inf`` on padding), POT's
            ``log_u``/``log_v`` in the log domain.
        n_iter: ``[B]`` int64, POT's ``log["niter"]``: the index of the last iteration run.
        err: ``[B]`` column-marginal error at the last check.
        domain: the domain that ran, ``"scaling"`` or ``"log"``.
    """

    plan: torch.Tensor | None
    log_u: torch.Tensor
    log_v: torch.Tensor
    n_iter: torch.Tensor
    err: torch.Tensor
    domain: str


def check_inputs(finite: bool, a_ok: bool, b_ok: bool, a: torch.Tensor, b: torch.Tensor, M: torch.Tensor) -> None:
    """Raise the :class:`ValueError` that names the bad input, from an input check's findings."""
    if not finite:
        for name, x in (("a", a), ("b", b), ("M", M)):
            if not torch.isfinite(x).all():
                raise ValueError(f"{name}: contains NaN or infinite values")
    if not a_ok:
        raise ValueError("a: weights must be non-negative")
    if not b_ok:
        raise ValueError("b: weights must be non-negative")


def check_overflow(worst: float, reg: float, dtype: torch.dtype) -> None:
    """Raise when ``max |M| / reg`` overflows ``dtype`` (no solver could use it)."""
    if not worst / reg < torch.finfo(dtype).max:
        raise ValueError(
            f"M: max |M| / reg = {worst / reg:.3g} overflows {dtype}; the plan depends on M / reg only, "
            "so rescale M and reg together"
        )


def non_finite_plan_error() -> ValueError:
    """What :func:`topoot_gpu.transport.api.sinkhorn` raises for a plan that is not finite although
    its inputs are (never returned)."""
    return ValueError(
        "M: the plan is not finite although the inputs are (reg far too small for these costs "
        "in this dtype?); try a larger reg, float64, or domain='log'"
    )


@dataclass(frozen=True)
class BestStability:
    """Every point's best match in a batch of ragged diagram problems (SPEC 4.3 and 4.5).

    Attributes:
        s_row, c_row: float64 ``[N]``, for every point of the ``P`` side (problem after problem):
            the maximum of its row of ``S = plan / (1 + sqrt(max(M, 0)))`` over the real points of
            the ``Q`` side, and the cost ``M`` there (the first maximum on ties).
        s_col, c_col: float64 ``[M]``, the same for every point of the ``Q`` side over its column.
        n_iter: int64 ``[B]``, POT's ``log["niter"]`` of each problem (0 for an empty one).

    A point of a problem whose other side is empty gets ``S = 0`` and ``C = +inf``.
    """

    s_row: torch.Tensor
    c_row: torch.Tensor
    s_col: torch.Tensor
    c_col: torch.Tensor
    n_iter: torch.Tensor
