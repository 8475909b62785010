"""Argument checks shared by every stage: bad input gets a ValueError naming the argument."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class MapBatch:
    """A validated batch of maps as a C-contiguous float32/float64 numpy array ``[B, H, W]``.

    ``squeezed`` records that the caller passed a single ``[H, W]`` map; ``is_torch`` and
    ``device`` describe the caller's input so results can go back to it.
    """

    array: np.ndarray
    squeezed: bool
    is_torch: bool
    device: torch.device


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def check_config(config: Any, cls: type) -> Any:
    """``config`` of type ``cls``, or ``cls()`` for None."""
    if config is None:
        return cls()
    if not isinstance(config, cls):
        raise ValueError(f"config: expected a {cls.__name__}, got {type(config).__name__}")
    return config


def check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed: expected an int in [0, 2**63), got {seed!r}")


def check_threads(num_threads: int | None) -> int:
    """``num_threads`` of a C++ kernel: a positive int, or None for every core."""
    if num_threads is None:
        return os.cpu_count() or 1
    if not isinstance(num_threads, int) or isinstance(num_threads, bool) or num_threads < 1:
        raise ValueError(f"num_threads: expected a positive int or None, got {num_threads!r}")
    return num_threads


def as_map_batch(maps: Any, name: str = "maps", *, check_finite: bool = True) -> MapBatch:
    """Validate ``maps`` (``[H, W]`` or ``[B, H, W]``, floating, finite) and return it on the CPU.

    float16 and bfloat16 are widened to float32 (exactly), float32 and float64 are kept.
    ``check_finite=False`` leaves the NaN/inf check to a kernel that does it on the way
    (the C++ core raises the same ``ValueError``).
    """
    if isinstance(maps, torch.Tensor):
        if not maps.is_floating_point():
            raise ValueError(f"{name}: expected a floating dtype, got {maps.dtype}")
        device, is_torch = maps.device, True
        t = maps.detach()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.float()
        arr = t.cpu().numpy()
    elif isinstance(maps, np.ndarray):
        if maps.dtype.kind != "f":
            raise ValueError(f"{name}: expected a floating dtype, got {maps.dtype}")
        device, is_torch = torch.device("cpu"), False
        arr = maps.astype(np.float32) if maps.dtype == np.float16 else maps
        if arr.dtype not in (np.float32, np.float64):
            arr = arr.astype(np.float64)
    else:
        raise ValueError(f"{name}: expected a numpy array or a torch tensor, got {type(maps).__name__}")
    _check_shape(name, tuple(arr.shape))
    if check_finite and not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    squeezed = arr.ndim == 2
    arr = np.ascontiguousarray(arr[None] if squeezed else arr)
    return MapBatch(arr, squeezed, is_torch, device)


def _check_shape(name: str, shape: tuple) -> None:
    if len(shape) not in (2, 3):
        raise ValueError(f"{name}: expected shape [H, W] or [B, H, W], got {shape}")
    if 0 in shape:
        raise ValueError(f"{name}: empty dimension in shape {shape}")


def map_tensor(maps: Any, name: str = "maps") -> torch.Tensor:
    """The checks of :func:`as_map_batch` without leaving the maps' device: a contiguous float32 or
    float64 tensor ``[B, H, W]`` (float16/bfloat16 widened, numpy arrays wrapped)."""
    if isinstance(maps, np.ndarray):
        if maps.dtype.kind != "f":
            raise ValueError(f"{name}: expected a floating dtype, got {maps.dtype}")
        maps = torch.from_numpy(maps)
    if not isinstance(maps, torch.Tensor):
        raise ValueError(f"{name}: expected a numpy array or a torch tensor, got {type(maps).__name__}")
    if not maps.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype, got {maps.dtype}")
    _check_shape(name, tuple(maps.shape))
    t = maps.detach()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return (t[None] if t.dim() == 2 else t).contiguous()
