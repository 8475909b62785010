"""Host reads of the device paths: the one way they wait for the device.

A device path (the selection and the GPU persistence backends on the maps' device) reads values on
the host only through :func:`to_host`, plus the size-producing ops it names in its docs
(``nonzero``, ``unique``). :func:`topoot_gpu.testing.count_host_syncs` counts both kinds, by the
module that asked, and the tests hold every device path to its documented count.
"""

from __future__ import annotations

import numpy as np
import torch


def to_host(x: torch.Tensor) -> np.ndarray:
    """``x`` copied into a host numpy array: one wait for the device. A copy on the CPU too, so that
    every host read is one visible ``_to_copy`` to the CPU wherever the path runs."""
    return x.to("cpu", copy=True).numpy()
