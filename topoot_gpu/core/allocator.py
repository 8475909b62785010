"""CPU memory: let glibc's malloc reuse freed blocks instead of faulting fresh pages in.

The batched head allocates tensors of hundreds of MB per step (``[B, H*W, hid]``). glibc serves
blocks above its mmap threshold (at most 32 MiB by default) with a fresh ``mmap`` and unmaps them
on free, so every such tensor is paid for again in page faults (what that costs the head: README,
"Refine"). :func:`keep_freed_memory` raises the mmap
and trim thresholds so that freed blocks stay in the heap and are reused. It is process-wide, like
preloading jemalloc or tcmalloc (what PyTorch's CPU performance notes suggest); the ``topoot`` CLI
and the benchmarks call it, a library user decides for their own process.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = (1 << 31) - 1) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (bytes, at most ``2**31 - 1``).

    Returns True when both were set, False where there is no glibc (macOS, musl, Windows) and
    nothing changed.
    """
    for name, v in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 2**31:
            raise ValueError(f"{name}: expected an int in (0, 2**31), got {v!r}")
    path = ctypes.util.find_library("c")
    if path is None:
        return False
    try:
        libc = ctypes.CDLL(path)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
