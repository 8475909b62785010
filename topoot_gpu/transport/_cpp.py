"""The ``"cpp"`` backend of entropic transport (``csrc/cpu/sinkhorn_cpu.cpp``,
``csrc/cpu/best_stability_cpu.cpp``): each problem solved start to finish in cache on a compact copy
of its real rows and columns, threads over the batch, the GIL released."""

from __future__ import annotations

import numpy as np
import torch

from .. import _C
from ..core import backends
from .padded import flat_layout
from .results import SCALING_LIMIT, BestStability, SinkhornResult, check_inputs, check_overflow, non_finite_plan_error

#: The domains this backend runs.
DOMAINS = ("scaling", "log")
#: The api hands it everything at once: packed batches (each problem solved at its own size),
#: ``domain="auto"`` (the batch rule applied here), the input check (folded into the solve: each
#: problem checked while its costs are in cache) and the plan's finiteness (checked as it is
#: written). The other backends get padded, checked inputs and a domain.
FUSED = True


def sinkhorn(
    a: torch.Tensor, b: torch.Tensor, M: torch.Tensor, *, reg: float, max_iter: int, stop_thr: float, domain: str,
    num_threads: int, sizes: tuple[torch.Tensor, torch.Tensor] | None = None, return_plan: bool = True,
) -> SinkhornResult:  # fmt: skip
    """The backend's entry (:func:`topoot_gpu.transport.api.sinkhorn`, shapes and options
    validated, values not yet): padded (``sizes=None``) or packed, one C++ call that checks and
    solves. Raises the api's ``ValueError`` for bad values."""
    kernel = getattr(_C, backends.entry("sinkhorn", "cpp", M.dtype))
    code = {"scaling": 0, "log": 1, "auto": 2}[domain]
    out = kernel(
        *flat_layout(a, b, M, sizes), reg, max_iter, stop_thr, code, SCALING_LIMIT[M.dtype], return_plan, num_threads
    )
    plan, log_u, log_v, n_iter, err, (finite, a_ok, b_ok, worst), overflow, log_domain, plan_finite = out
    check_inputs(finite, a_ok, b_ok, a, b, M)
    if overflow:
        check_overflow(worst, reg, M.dtype)
    if not plan_finite:
        raise non_finite_plan_error()
    out = [None if plan is None else torch.from_numpy(plan), torch.from_numpy(log_u), torch.from_numpy(log_v)]
    if sizes is None:  # back to the padded shapes
        out = [None if x is None else x.reshape(shape) for x, shape in zip(out, (M.shape, a.shape, b.shape))]
    return SinkhornResult(*out, torch.from_numpy(n_iter), torch.from_numpy(err), "log" if log_domain else "scaling")


def best_stability(
    P: torch.Tensor, p_sizes: torch.Tensor, Q: torch.Tensor, q_sizes: torch.Tensor, *, cost: str, reg: float,
    max_iter: int, stop_thr: float, num_threads: int,
) -> BestStability:  # fmt: skip
    """The backend's entry (:func:`topoot_gpu.transport.api.best_stability`): one fused C++ call that
    builds each problem's costs, solves it (the domain picked per problem) and keeps each point's
    best stability; nothing padded to the largest problem is built."""
    kernel = getattr(_C, backends.entry("best_stability", "cpp", torch.float64))

    def offsets(sizes: torch.Tensor) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(sizes.numpy())]).astype(np.int64)

    out = kernel(
        P.contiguous().numpy(), offsets(p_sizes), Q.contiguous().numpy(), offsets(q_sizes), cost == "diagonal",
        reg, max_iter, stop_thr, SCALING_LIMIT[torch.float64], num_threads,
    )  # fmt: skip
    return BestStability(*(torch.from_numpy(x) for x in out))
