"""The ``"cpp"`` backend of cubical persistence: the C++ union-find core (``csrc/cpu/persistence_cpu.cpp``),
threads over the batch, the GIL released; NaN/inf raise the same ``ValueError`` as the other backends."""

from __future__ import annotations

import numpy as np
import torch

from .. import _C
from ..core import backends


def cubical_persistence(
    maps: torch.Tensor, *, superlevel: bool, conn8_h0: bool, dim0: bool, dim1: bool, num_threads: int
) -> tuple[np.ndarray, ...]:
    """The fields of :class:`~topoot_gpu.persistence.diagrams.Diagrams` of ``maps [B, H, W]`` (host)."""
    kernel = getattr(_C, backends.entry("cubical_persistence", "cpp", maps.dtype))
    return kernel(maps.numpy(), superlevel, "T" if conn8_h0 else "V", dim0, dim1, num_threads)
