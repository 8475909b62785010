"""The ``"cpp"`` backend of entropic transport (``csrc/cpu/sinkhorn_cpu.cpp``,
``csrc/cpu/best_stability_cpu.cpp``): each problem solved start to finish in cache on a compact copy
of its real rows and columns, threads over the batch, the GIL released."""

from __future__ import annotations

import numpy as np
import torch

from .. import _C
from ..core import backends
from .results import SCALING_LIMIT, BestStability, SinkhornResult

#: The domains this backend runs.
DOMAINS = ("scaling", "log")


def sinkhorn(
    a: torch.Tensor, b: torch.Tensor, M: torch.Tensor, *, reg: float, max_iter: int, stop_thr: float, domain: str,
    num_threads: int,
) -> SinkhornResult:  # fmt: skip
    """The backend's entry (:func:`topoot_gpu.transport.api.sinkhorn`, validated host tensors)."""
    kernel = getattr(_C, backends.entry("sinkhorn", "cpp", M.dtype))
    arrays = [x.contiguous().numpy() for x in (a, b, M)]
    out = kernel(*arrays, reg, max_iter, stop_thr, domain == "log", num_threads)
    return SinkhornResult(*(torch.from_numpy(x) for x in out), domain)


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
