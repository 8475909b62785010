"""The CUDA persistence kernels run on the host: ``cuda_host_emulation.cpp`` built around the
packaged ``persistence_cuda.cu``, and a stand-in for ``persistence_cuda._launch`` that calls it.
Used by ``test_persistence_cuda_source.py`` and by ``benchmarks/bench_basin_merge.py`` (which needs
the kernels' basin graphs without a GPU)."""

from __future__ import annotations

import ctypes
import itertools
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from topoot_gpu import persistence_cuda


def build(directory: Path) -> ctypes.CDLL | None:
    """Compile the emulation into ``directory``; None if there is no C++ compiler."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return None
    (directory / "persistence_cuda.cu").write_text(persistence_cuda._source())
    src = Path(__file__).with_name("cuda_host_emulation.cpp")
    lib = directory / "cuda_host.so"
    cmd = [compiler, "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Werror", f"-I{directory}", str(src)]
    subprocess.run([*cmd, "-o", str(lib)], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


def launcher(lib: ctypes.CDLL, launched: list[str] | None = None) -> Callable:
    """A ``persistence_cuda._launch`` for CPU tensors: the same grid and block, every launch's
    threads run in a shuffled order (a fresh seed per launch); names appended to ``launched``."""
    seeds = itertools.count(1)

    def launch(name: str, n: int, device: torch.device, *args) -> None:
        assert device.type == "cpu"
        block = persistence_cuda.BLOCK
        grid = (n + block - 1) // block
        c_args = []
        for a in args:
            if isinstance(a, torch.Tensor):
                assert a.is_contiguous()
                c_args.append(ctypes.c_void_p(a.data_ptr()))
            elif isinstance(a, np.int32):
                c_args.append(ctypes.c_int32(int(a)))
            elif isinstance(a, np.int64):
                c_args.append(ctypes.c_int64(int(a)))
            else:
                raise TypeError(f"{name}: argument of type {type(a)} would not reach the kernel as declared")
        getattr(lib, f"run_{name}")(ctypes.c_uint(grid), ctypes.c_uint(block), ctypes.c_uint64(next(seeds)), *c_args)
        if launched is not None:
            launched.append(name)

    return launch
