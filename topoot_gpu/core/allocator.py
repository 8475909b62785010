"""Memory: how much a step may allocate (:func:`memory_budget`), and on the CPU, let glibc's malloc
reuse freed blocks instead of faulting fresh pages in (:func:`keep_freed_memory`), and free the C++
kernels' cached scratch (:func:`release_scratch`).

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
import os

import torch

from .validation import check_int

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = (1 << 31) - 1, trim_threshold: int | None = None) -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD``.

    Args:
        mmap_threshold: bytes, at most ``2**31 - 1`` (the default): the head's largest activation
            at PatchCore's width (``C = 1536``, 8 images of 224x224: ``[8, 50176, 832]`` float32,
            1.34 GB) is above a 1 GiB threshold and would be faulted in fresh at every step.
        trim_threshold: bytes, at most ``2**31 - 1``; ``None`` (the default) never trims. The
            head's activations freed at the end of a step lie together at the top of the heap, more
            than 2 GiB of them at ``C = 1536``: with the largest threshold they were given back and
            faulted in again every step (245k minor faults per image, one step in five of the time
            at fp32); never trimming left 98 faults in a whole call.

    Returns True when both were set, False where there is no glibc (macOS, musl, Windows) and
    nothing changed.
    """
    for name, v, what in (
        ("mmap_threshold", mmap_threshold, "an int in (0, 2**31)"),
        ("trim_threshold", trim_threshold, "None or an int in (0, 2**31)"),
    ):
        if v is None and name == "trim_threshold":
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 0 < v < 2**31:
            raise ValueError(f"{name}: expected {what}, got {v!r}")
    trim = -1 if trim_threshold is None else trim_threshold  # -1: never (mallopt(3))
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
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim))


def release_scratch() -> int:
    """Free the C++ kernels' cached scratch that no running call is using; returns how many
    per-worker states were freed.

    The CPU kernels keep each worker's scratch between calls, so that batch after batch reuses
    pages already faulted in (a 10k x 10k transport problem of a raw-noise map holds an 800 MB
    matrix; faulting it in again was a fifth of a raw-noise selection's time). What stays
    allocated is one state per worker of the most parallel calls so far, each as large as the
    largest problem it solved. Call this after a burst of large inputs to give that memory back;
    the next call allocates afresh.
    """
    from .. import _C  # the compiled kernels sit below every Python module

    return int(_C.release_scratch())


def memory_budget(max_memory: int | None, device: torch.device) -> int:
    """Bytes a step may allocate: ``max_memory`` when given (a positive int), else half of what the
    device has: on the host, half of the smaller of the physical memory and the address-space
    limit (``RLIMIT_AS``) where one is set; on CUDA, half of the device's total memory."""
    if max_memory is not None:
        return check_int("max_memory", max_memory, minimum=1)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 2
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft != resource.RLIM_INFINITY:
            total = min(total, soft)
    except (ImportError, ValueError, OSError):  # pragma: no cover - platforms without rlimits
        pass
    return total // 2


def gib(n_bytes: float) -> str:
    """``n_bytes`` as GiB for messages."""
    return f"{n_bytes / 2**30:.2f} GiB"
