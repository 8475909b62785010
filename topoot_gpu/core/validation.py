"""Argument checks shared by every stage: bad input gets a ValueError naming the argument.

Maps are checked once, by :func:`check_maps`, at the entry point the caller used; the stages below
it take the :class:`MapBatch` it returns and do not check again.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class MapBatch:
    """A validated batch of maps: a contiguous float32/float64 tensor ``[B, H, W]`` on the caller's
    device (numpy input is wrapped without a copy where its dtype allows).

    ``squeezed`` records that the caller passed a single ``[H, W]`` map, ``is_torch`` that it passed a
    tensor, so that results go back in the caller's shape and kind (:meth:`to_caller`).
    """

    tensor: torch.Tensor
    squeezed: bool
    is_torch: bool

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def numpy(self) -> np.ndarray:
        """The maps as a C-contiguous float32/float64 numpy array on the host."""
        return self.tensor.cpu().numpy()

    def to_caller(self, x: torch.Tensor) -> Any:
        """A per-image result ``[B, ...]`` in the caller's shape (``[...]`` for one map) and kind."""
        if self.squeezed:
            x = x[0]
        return x if self.is_torch else x.cpu().numpy()


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


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def check_number(
    name: str, value: Any, *, minimum: float | None = None, strict: bool = False, finite: bool = True
) -> float:
    """``value`` as a Python float: an int, a float or a numpy integer/floating scalar (not a bool, a
    string, a complex or None), finite unless ``finite=False``, at least ``minimum`` (above it with
    ``strict``). One rule for every numeric option of every function and config."""
    if not _is_real(value):
        raise ValueError(f"{name}: expected a real number, got {value!r} ({type(value).__name__})")
    x = float(value)
    if finite and not math.isfinite(x):  # math, not numpy: torch.compile traces through it
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if math.isnan(x):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if minimum is not None and (x <= minimum if strict else x < minimum):
        raise ValueError(f"{name}: expected a number {'>' if strict else '>='} {minimum}, got {value!r}")
    return x


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as a Python int: an int or a numpy integer scalar (not a bool or a float), in
    ``[minimum, maximum]`` where given."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected an int, got {value!r} ({type(value).__name__})")
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        lo = "" if minimum is None else f"{minimum} <= "
        hi = "" if maximum is None else f" <= {maximum}"
        raise ValueError(f"{name}: expected an int with {lo}{name}{hi}, got {value!r}")
    return v


def check_flag(name: str, value: Any) -> bool:
    """``value`` as a Python bool: a bool or a numpy bool (not an int, a string or None)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_seed(seed: Any) -> int:
    """A seed: an int (or numpy integer) in ``[0, 2**63)``."""
    return check_int("seed", seed, minimum=0, maximum=2**63 - 1)


def check_threads(num_threads: Any) -> int:
    """``num_threads`` of a C++ kernel: a positive int, or None for every core."""
    if num_threads is None:
        return os.cpu_count() or 1
    return check_int("num_threads", num_threads, minimum=1)


def floating_tensor(x: Any, name: str) -> torch.Tensor:
    """``x`` (a torch tensor or numpy array of a floating dtype) as a detached tensor, numpy arrays
    wrapped without a copy where possible; float16/bfloat16 widened to float32 (exactly)."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise ValueError(f"{name}: expected a floating dtype, got {x.dtype}")
        if x.dtype not in (np.float16, np.float32, np.float64):
            x = x.astype(np.float64)  # longdouble: torch has no such dtype
        x = np.ascontiguousarray(x)
        if any(stride < 0 for stride in x.strides):  # a one-element view counts as contiguous as it is
            x = x.copy()
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating dtype, got {x.dtype}")
    x = x.detach()
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_finite(x: torch.Tensor, name: str) -> None:
    """``ValueError`` if ``x`` holds NaN or +-inf. A finite sum proves every entry finite (NaN and inf
    propagate through a sum) in one reduction, several times faster than an elementwise test; a sum
    that is not finite (NaN, inf, or finite values overflowing) falls back to the exact test."""
    if bool(torch.isfinite(x.sum())) or bool(torch.isfinite(x).all()):
        return
    raise ValueError(f"{name}: contains NaN or infinite values")


def check_maps(maps: Any, name: str = "maps", *, finite: bool = True) -> MapBatch:
    """Validate ``maps`` (``[H, W]`` or ``[B, H, W]``, floating, finite; numpy or torch, any device).

    float16 and bfloat16 are widened to float32 (exactly), float32 and float64 are kept, the maps
    stay on their device. ``finite=False`` leaves the NaN/inf check to a kernel that makes it on
    the way (the C++ persistence core raises the same ``ValueError``).
    """
    is_torch = isinstance(maps, torch.Tensor)
    t = floating_tensor(maps, name)
    shape = tuple(t.shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"{name}: expected shape [H, W] or [B, H, W], got {shape}")
    if 0 in shape:
        raise ValueError(f"{name}: empty dimension in shape {shape}")
    if finite:
        check_finite(t, name)
    squeezed = t.dim() == 2
    return MapBatch((t[None] if squeezed else t).contiguous(), squeezed, is_torch)


def check_features(features: Any, *, batch: int, device: torch.device, squeezed: bool = False) -> torch.Tensor:
    """Validate backbone features for ``batch`` maps on ``device``: a floating tensor (or numpy array)
    ``[B, C, h, w]`` (``[C, h, w]`` for a single ``[H, W]`` map, ``squeezed``), finite, on the maps'
    device. Returns ``[B, C, h, w]`` in float32 or float64 (float16/bfloat16 are widened)."""
    features = floating_tensor(features, "features")
    want = 3 if squeezed else 4
    if features.dim() != want:
        shape = "[C, h, w] for one [H, W] map" if squeezed else "[B, C, h, w] for maps [B, H, W]"
        raise ValueError(f"features: expected {shape}, got shape {tuple(features.shape)}")
    if squeezed:
        features = features.unsqueeze(0)
    if features.shape[0] != batch:
        raise ValueError(f"features: batch size {features.shape[0]} does not match the maps' {batch}")
    if 0 in features.shape:
        raise ValueError(f"features: empty dimension in shape {tuple(features.shape)}")
    if features.device != device:
        raise ValueError(f"features: on {features.device}, the maps are on {device}")
    check_finite(features, "features")
    return features
