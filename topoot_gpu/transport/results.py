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
