"""The ``"cuda"`` backend of cubical persistence: the basin algorithm (:mod:`._basins`) with its
data-parallel passes in CUDA C++ (``csrc/cuda/persistence_cuda.cu``).

The source is compiled at run time by NVRTC through CuPy's ``RawModule`` (cached by CuPy), torch
tensors are handed to the kernels without a copy (``__cuda_array_interface__``), and every launch
goes to torch's current stream. CuPy checks each launch's return code; a fault inside a kernel
surfaces at the next synchronisation, at the latest when the edges are copied to the host.
Same functions and results as :mod:`topoot_gpu.persistence._triton`.

Every launch goes through :func:`_launch`, the one place that needs CuPy:
:func:`topoot_gpu.testing.cuda_host_kernels` replaces it with the same source compiled for the
host (``csrc/cuda/host_emulation.cpp``), so the kernels' logic and these wrappers are tested
without a GPU.
"""

from __future__ import annotations

import sys
from functools import cache, partial
from pathlib import Path

import numpy as np
import torch

from ..core import backends
from ._basins import basin_persistence, output, round_flags

BLOCK = 256


def _cupy():
    return backends.require("cupy", "cuda", "cupy-cuda13x, or cupy-cuda12x for CUDA 12")


def cuda_source(name: str = "persistence_cuda.cu") -> str:
    """A file of ``csrc/cuda/``: shipped in the package (``topoot_gpu/cuda/``) or read from a source
    checkout."""
    package = Path(__file__).resolve().parent.parent
    for path in (package / "cuda" / name, package.parent / "csrc" / "cuda" / name):
        if path.is_file():
            return path.read_text()
    raise FileNotFoundError(f"{name}: not found in the package nor in a source checkout")


@cache
def _module(device: int):
    cupy = _cupy()
    with cupy.cuda.Device(device):
        return cupy.RawModule(code=cuda_source(), options=("-std=c++17",))


@cache
def _kernel(device: int, name: str):
    return _module(device).get_function(name)


class _StreamHandle:
    """A raw ``cudaStream_t`` in the CUDA stream protocol (``__cuda_stream__``: version 0, handle)."""

    def __init__(self, handle: int) -> None:
        self.handle = handle

    def __cuda_stream__(self) -> tuple[int, int]:
        return (0, self.handle)


@cache
def _stream(device: int, handle: int):
    """CuPy's non-owning view of the torch stream ``handle``, made once per stream: CuPy 14 builds it
    with ``Stream.from_external`` (``ExternalStream``, which it deprecates, before)."""
    cupy = _cupy()
    with cupy.cuda.Device(device):
        if hasattr(cupy.cuda.Stream, "from_external"):
            return cupy.cuda.Stream.from_external(_StreamHandle(handle))
        return cupy.cuda.ExternalStream(handle, device)


def _launch(name: str, n: int, device: torch.device, *args) -> None:
    """Kernel ``name`` on ``n`` threads (blocks of ``BLOCK``) on torch's current stream; tensor
    arguments are passed zero-copy (``__cuda_array_interface__``), numpy scalars by value. The
    module, the kernel handles and the stream views are cached."""
    cupy = _cupy()
    index = torch.cuda.current_device() if device.index is None else device.index
    kernel = _kernel(index, name)
    args = tuple(cupy.asarray(a) if isinstance(a, torch.Tensor) else a for a in args)
    with cupy.cuda.Device(index), _stream(index, torch.cuda.current_stream(device).cuda_stream):
        kernel(((n + BLOCK - 1) // BLOCK,), (BLOCK,), args)


def _suffix(w: torch.Tensor) -> str:
    return backends.entry("cubical_persistence", "cuda", w.dtype)


def descent(w: torch.Tensor, H: int, W: int, conn8: bool, outside: bool) -> torch.Tensor:
    """``[B, P + 1]`` int64: each pixel's steepest lower neighbour; entry ``P`` is the outside node."""
    B, P = w.shape
    parent = output((B, P + 1), w.device)
    parent[:, P] = P
    _launch(
        f"descent_{_suffix(w)}", B * P, w.device,
        w, parent, np.int32(H), np.int32(W), np.int64(B * P), np.int32(conn8), np.int32(outside),
    )  # fmt: skip
    return parent


def jump(parent: torch.Tensor) -> torch.Tensor:
    """Pointer jumping in place on ``[B, P + 1]``: :func:`~topoot_gpu.persistence._basins.jump_rounds`
    launches, no host synchronisation; every node's root."""
    flags = round_flags(parent.shape[1] - 1, parent.device)
    for r in range(len(flags) - 1):
        _launch(
            "jump", parent.numel(), parent.device,
            parent, np.int64(parent.shape[1]), np.int64(parent.numel()), flags[r:],
        )  # fmt: skip
    return parent


def boundary(w: torch.Tensor, root: torch.Tensor, H: int, W: int, conn8: bool) -> torch.Tensor:
    """``[B * P * ND]`` int64: the saddle of each (pixel, direction) pair across two basins, else -1."""
    B, P = w.shape
    nd = 4 if conn8 else 2
    saddle = output((B * P * nd,), w.device)
    _launch(
        f"boundary_{_suffix(w)}", B * P, w.device,
        w, root, saddle, np.int32(H), np.int32(W), np.int64(B * P), np.int32(conn8),
    )  # fmt: skip
    return saddle


def merge(
    w: torch.Tensor, offsets: torch.Tensor, saddle: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
    uf: torch.Tensor, outside: bool,
) -> torch.Tensor:  # fmt: skip
    """``[E]`` int64: the root dying at each basin-graph edge by the elder rule, else -1; one thread
    per image, ``uf [B, P + 1]`` its union-find (edge nodes at themselves on entry)."""
    B, P = w.shape
    young = output(saddle.shape, w.device)
    _launch(
        f"merge_{_suffix(w)}", B, w.device,
        w, offsets, saddle, lo, hi, uf, young, np.int64(B), np.int64(P), np.int32(outside),
    )  # fmt: skip
    return young


#: The backend's entry (:mod:`topoot_gpu.persistence.api`): the basin algorithm with these kernels.
cubical_persistence = partial(basin_persistence, kernels=sys.modules[__name__])
