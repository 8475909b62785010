"""The one backend table: for every kernel, its backends, the devices each takes, what ``"auto"``
picks, and each backend's float32/float64 entry.

A backend is named after what runs, never after a device:

* ``"cpp"``: the C++17 core (``topoot_gpu._C``), threads over the batch; host tensors and arrays;
* ``"torch"``: torch operations only; tensors on any device;
* ``"cuda"``: CUDA C++ kernels compiled at run time by NVRTC through CuPy (extra ``cuda``); CUDA
  tensors (CPU tensors too while :func:`topoot_gpu.testing.cuda_host_kernels` runs the same source
  on the host);
* ``"triton"``: Triton kernels (extra ``triton``); CUDA tensors, or CPU tensors under
  ``TRITON_INTERPRET=1`` (set before Triton is imported);
* ``"reference"``: GUDHI, POT or plain PyTorch, the released pipeline's semantics (extra
  ``test``); host tensors and arrays. Every fast path is checked against it.

One rule for a mismatch: a backend named explicitly runs on the inputs' device or raises a
``ValueError`` naming the backend and the device. Nothing is copied to another device or handed to
another backend silently. ``"auto"`` is the one choice that may run on the host for CUDA inputs,
and :data:`KERNELS` says where it does (``auto`` maps a device type to a backend; a backend that
does not take that device runs on a host copy, the result going back to the inputs' device). The
GPU backends of persistence are not picked by ``"auto"`` until their tests have passed on GPU
hardware.

``"cpu"``, the C++ backend's name before 0.2, is a deprecated alias of ``"cpp"`` (a
``FutureWarning``; it goes in the next release).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from importlib import import_module
from types import ModuleType

import torch

from .validation import check_choice

DEPRECATED_ALIASES = {"cpu": "cpp"}


@dataclass(frozen=True)
class Backend:
    """One backend of one kernel.

    Attributes:
        module: the module holding the backend's implementation, under the kernel's name.
        devices: device types whose tensors it takes.
        extra: the optional dependency set (``pip install 'topoot_gpu[extra]'``) it needs, if any.
        entries: the compiled entry point per dtype (``"float32"``, ``"float64"``): a function of
            ``topoot_gpu._C`` for ``"cpp"``, a kernel-name suffix for ``"cuda"``; empty where one
            function serves every dtype.
    """

    module: str
    devices: tuple[str, ...]
    extra: str | None = None
    entries: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Kernel:
    """A kernel's backends and what ``"auto"`` picks per device type."""

    backends: dict[str, Backend]
    auto: dict[str, str]


_P, _T, _H = "topoot_gpu.persistence", "topoot_gpu.transport", "topoot_gpu.head"
_CUDA_SUFFIX = {"float32": "f32", "float64": "f64"}


def _transport(cpp_entries: dict[str, str]) -> dict[str, Backend]:
    """The transport stage's backends: one module each serves ``sinkhorn`` and ``best_stability``."""
    return {
        "cpp": Backend(f"{_T}._cpp", ("cpu",), entries=cpp_entries),
        "torch": Backend(f"{_T}._torch", ("cpu", "cuda")),
        "triton": Backend(f"{_T}._triton", ("cuda",), extra="triton"),
        "reference": Backend(f"{_T}.reference", ("cpu",), extra="test"),
    }


KERNELS: dict[str, Kernel] = {
    "cubical_persistence": Kernel(
        backends={
            "cpp": Backend(
                f"{_P}._cpp",
                ("cpu",),
                entries={"float32": "cubical_persistence_f32", "float64": "cubical_persistence_f64"},
            ),
            "cuda": Backend(f"{_P}._cuda", ("cuda",), extra="cuda", entries=_CUDA_SUFFIX),
            "triton": Backend(f"{_P}._triton", ("cuda",), extra="triton"),
            "reference": Backend(f"{_P}.reference", ("cpu",), extra="test"),
        },
        auto={"cpu": "cpp", "cuda": "cpp"},
    ),
    "sinkhorn": Kernel(
        backends=_transport({"float32": "sinkhorn_f32", "float64": "sinkhorn_f64"}),
        auto={"cpu": "cpp", "cuda": "torch"},
    ),
    "best_stability": Kernel(backends=_transport({"float64": "best_stability"}), auto={"cpu": "cpp", "cuda": "cpp"}),
    "train_heads": Kernel(
        backends={
            "cpp": Backend(f"{_H}._cpp", ("cpu",), entries={"float32": "head_loss_f32", "float64": "head_loss_f64"}),
            "torch": Backend(f"{_H}._torch", ("cpu", "cuda")),
            "triton": Backend(f"{_H}._triton", ("cuda",), extra="triton"),
            "reference": Backend(f"{_H}.reference", ("cpu",), extra="test"),
        },
        auto={"cpu": "cpp", "cuda": "torch"},
    ),
}

#: Backends whose kernels currently run on the host (``testing.cuda_host_kernels``): they then
#: take CPU tensors too.
HOST_EMULATED: set[str] = set()


def triton_interpreted() -> bool:
    """Triton runs its kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def takes(kernel: str, backend: str, device: torch.device) -> bool:
    """Whether ``backend`` of ``kernel`` takes tensors on ``device``."""
    if device.type in KERNELS[kernel].backends[backend].devices:
        return True
    if device.type != "cpu":
        return False
    return (backend == "triton" and triton_interpreted()) or backend in HOST_EMULATED


def names(kernel: str) -> tuple[str, ...]:
    """The backend names ``kernel`` accepts, ``"auto"`` first."""
    return ("auto", *KERNELS[kernel].backends)


def check_backend(kernel: str, backend: str, name: str = "backend") -> str:
    """A valid backend name of ``kernel`` (``"auto"`` included): a deprecated alias is replaced,
    with a ``FutureWarning``; anything else unknown raises a ``ValueError`` naming ``name``."""
    if backend in DEPRECATED_ALIASES and isinstance(backend, str):
        new = DEPRECATED_ALIASES[backend]
        warnings.warn(
            f"{name}={backend!r} is deprecated and will be removed: the C++ backend is {new!r} "
            "(a backend is named after what runs, not after a device)",
            FutureWarning,
            stacklevel=3,
        )
        backend = new
    check_choice(name, backend, names(kernel))
    return backend


def resolve(kernel: str, backend: str, device: torch.device, name: str = "backend") -> tuple[str, torch.device]:
    """The backend that runs ``kernel`` on inputs on ``device`` and the device it runs on.

    ``backend`` is checked as :func:`check_backend` checks it. ``"auto"`` picks from the table (on a
    host copy when the picked backend does not take ``device``); a named backend that does not take
    ``device`` raises a ``ValueError`` naming both.
    """
    backend = check_backend(kernel, backend, name)
    spec = KERNELS[kernel]
    if backend == "auto":
        picked = spec.auto.get(device.type)
        if picked is None:
            raise ValueError(f"{name}: no backend of {kernel} runs on {device.type} tensors (got {device})")
        return picked, device if takes(kernel, picked, device) else torch.device("cpu")
    if not takes(kernel, backend, device):
        accepted = " or ".join(spec.backends[backend].devices)
        hint = " (or CPU tensors with TRITON_INTERPRET=1)" if backend == "triton" else ""
        raise ValueError(
            f"{name}: {backend!r} runs on {accepted} tensors{hint}, the inputs are on {device}; "
            f"move them, or pick another backend of {kernel}: {names(kernel)}"
        )
    return backend, device


def entry(kernel: str, backend: str, dtype: torch.dtype) -> str:
    """The compiled entry point of ``backend`` for inputs of ``dtype`` (float32 or float64)."""
    entries = KERNELS[kernel].backends[backend].entries
    key = str(dtype).removeprefix("torch.")
    if key not in entries:
        raise ValueError(f"{kernel}: backend {backend!r} computes in {tuple(entries)}, got {dtype}")
    return entries[key]


def require(package: str, extra: str, pip_name: str) -> ModuleType:
    """Import an optional dependency, or raise an ``ImportError`` that says which extra brings it."""
    try:
        return import_module(package)
    except ImportError as e:
        hint = f"pip install 'topoot_gpu[{extra}]' (or pip install {pip_name})"
        raise ImportError(f"{package} is needed here: {hint}") from e


def load(kernel: str, backend: str) -> ModuleType:
    """The module of ``backend`` (imported on first use), with a clear message if its extra is missing."""
    spec = KERNELS[kernel].backends[backend]
    try:
        return import_module(spec.module)
    except ImportError as e:
        if spec.extra is None:
            raise
        extra = spec.extra
        hint = f"pip install 'topoot_gpu[{extra}]'"
        raise ImportError(f"backend={backend!r} of {kernel} needs the {extra!r} extra: {hint} ({e})") from e
