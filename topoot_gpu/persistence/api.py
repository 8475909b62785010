"""Cubical persistence of 2-D maps (SPEC section 2).

Two constructions, matched exactly to GUDHI's ``CubicalComplex``:

* ``"T"`` (``top_dimensional_cells=a``): pixels are the top cells, a lower cell takes the minimum
  of the pixels containing it, so H0 is 8-connected;
* ``"V"`` (``vertices=a``): pixels are vertices, a higher cell takes the maximum, so H0 is
  4-connected.

H0 is one union-find pass over the pixels in increasing ``(value, flat index)`` order with the
elder rule: when two components meet at pixel ``p`` the younger one, the one whose birth pixel
comes later in that order, dies at ``a[p]``. H1 comes from duality (Garin et al., 2020): the
sublevel H1 pairs of ``a`` are the sublevel H0 pairs ``(b', d')`` of ``-a`` on the dual
connectivity (4 for ``T``, 8 for ``V``) with one outside node at ``-inf`` joined to the border,
read as ``(-d', -b')``. ``superlevel`` is the sublevel filtration of ``-a`` reported in the map's
units (pairs with ``birth > death``). Zero-length pairs are not reported.

This module checks the arguments once and dispatches through the backend table
(:mod:`topoot_gpu.core.backends`) to one module per backend, each with a function
``cubical_persistence(maps, *, superlevel, conn8_h0, dim0, dim1, num_threads)`` taking a validated
``[B, H, W]`` float32/float64 tensor on the device it runs on and returning the fields of
:class:`Diagrams` (numpy arrays or tensors on that device): ``_cpp`` (the C++ union-find core),
``_cuda`` and ``_triton`` (the basin algorithm of ``_basins`` with CUDA C++ or Triton kernels,
everything on the device), ``reference`` (GUDHI). :func:`cubical_persistence` returns numpy
:class:`Diagrams`; :func:`cubical_persistence_tensors` returns the same rows as tensors where the
backend ran, which is how the selection keeps a GPU backend's pairs on the device.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np
import torch

from ..core import backends
from ..core.validation import check_choice, check_finite, check_maps, check_threads
from .diagrams import CONSTRUCTIONS, FILTRATIONS, Diagrams

KERNEL = "cubical_persistence"


def check_dims(dims: Any) -> tuple[bool, bool]:
    """Whether H0 and H1 are wanted: ``dims`` a non-empty subset of ``(0, 1)``, else a ``ValueError``."""
    try:
        dims = tuple(dims) if isinstance(dims, Iterable) else (dims,)
    except TypeError:
        dims = None
    if not dims or any(d not in (0, 1) or isinstance(d, bool) for d in dims):
        raise ValueError(f"dims: expected a non-empty subset of (0, 1), got {dims!r}")
    return 0 in dims, 1 in dims


class DiagramTensors(NamedTuple):
    """The rows of :class:`Diagrams` as tensors on the device the backend ran on: ``image``,
    ``dim``, ``birth_pixel``, ``death_pixel`` int64 and ``birth``, ``death`` float64, ``[k]`` each."""

    image: torch.Tensor
    dim: torch.Tensor
    birth: torch.Tensor
    death: torch.Tensor
    birth_pixel: torch.Tensor
    death_pixel: torch.Tensor


def cubical_persistence(
    maps: Any,
    *,
    filtration: str = "sublevel",
    construction: str = "T",
    dims: Iterable[int] = (0, 1),
    backend: str = "auto",
    num_threads: int | None = None,
) -> Diagrams:
    """Persistence diagrams of a batch of 2-D maps.

    Args:
        maps: numpy array or torch tensor, ``[H, W]`` or ``[B, H, W]``, any floating dtype,
            finite, on the CPU or a CUDA device.
        filtration: ``"sublevel"`` (pairs ``b < d``, essential ``(min a, +inf)``) or
            ``"superlevel"`` (the sublevel filtration of ``-a`` in the map's units: pairs
            ``b > d``, essential ``(max a, -inf)``).
        construction: ``"T"`` (pixels are top cells, GUDHI ``top_dimensional_cells=``) or
            ``"V"`` (pixels are vertices, GUDHI ``vertices=``).
        dims: the homology dimensions wanted, a non-empty subset of ``(0, 1)``.
        backend: ``"auto"`` (``"cpp"``, on a host copy for CUDA tensors, until the GPU backends
            have passed their tests on GPU hardware), ``"cpp"`` (the C++ union-find core; host
            inputs), ``"cuda"`` (basins on the GPU, :mod:`topoot_gpu.persistence._basins`, CUDA C++
            kernels through CuPy; CUDA tensors; extra ``cuda``), ``"triton"`` (the same passes in
            Triton; CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``; extra ``triton``),
            ``"reference"`` (GUDHI ``CubicalComplex``; host inputs; extra ``test``). A backend that
            does not take the maps' device raises a ``ValueError`` (:mod:`topoot_gpu.core.backends`).
        num_threads: worker threads over the batch for ``"cpp"`` (default: all cores).

    Returns:
        A :class:`Diagrams` with every pair of every image (numpy, on the host). Values are the
        input's values widened to float64, so ``map[birth_pixel] == birth`` exactly.
    """
    fields, (B, H, W) = _persistence(maps, filtration, construction, dims, backend, num_threads)
    host = (f.cpu().numpy() if isinstance(f, torch.Tensor) else f for f in fields)
    return Diagrams(*host, batch_size=B, shape=(H, W), filtration=filtration, construction=construction)


def cubical_persistence_tensors(
    maps: Any,
    *,
    filtration: str = "sublevel",
    construction: str = "T",
    dims: Iterable[int] = (0, 1),
    backend: str = "auto",
    num_threads: int | None = None,
) -> DiagramTensors:
    """The rows of :func:`cubical_persistence` (same arguments, same rows in the same order) as
    tensors on the device the backend ran on: a CUDA backend's pairs never leave the GPU (the
    host reads three sizes per pass, :func:`topoot_gpu.persistence._basins.basin_persistence`);
    the host backends' arrays are wrapped without a copy."""
    fields, _ = _persistence(maps, filtration, construction, dims, backend, num_threads)
    return _tensors(fields)


def _persistence(maps, filtration, construction, dims, backend, num_threads):
    """Validate once, dispatch: the backend's six fields and the batch's shape."""
    check_choice("filtration", filtration, FILTRATIONS)
    check_choice("construction", construction, CONSTRUCTIONS)
    backend = backends.check_backend(KERNEL, backend)
    dim0, dim1 = check_dims(dims)
    threads = check_threads(num_threads)
    batch = check_maps(maps, finite=False)
    name, device = backends.resolve(KERNEL, backend, batch.device)
    t = batch.tensor.to(device)
    if name != "cpp":  # the C++ core checks for NaN/inf while it reads the maps
        check_finite(t, "maps")
    fields = _dispatch(t, name, filtration, construction, dim0, dim1, threads)
    return fields, tuple(t.shape)


def _dispatch(t: torch.Tensor, name: str, filtration: str, construction: str, dim0: bool, dim1: bool, threads: int):
    return backends.load(KERNEL, name).cubical_persistence(
        t, superlevel=filtration == "superlevel", conn8_h0=construction == "T", dim0=dim0, dim1=dim1,
        num_threads=threads,
    )  # fmt: skip


def pairs_of_valid_maps(
    maps: torch.Tensor, *, filtration: str, construction: str, dims: Iterable[int], backend: str
) -> DiagramTensors:
    """:func:`cubical_persistence_tensors` of maps a stage has already validated (finite float32 or
    float64 ``[B, H, W]`` on the device of ``backend``, a resolved backend name), without checking
    them again: no host synchronisation but the backend's own."""
    dim0, dim1 = check_dims(dims)
    return _tensors(_dispatch(maps, backend, filtration, construction, dim0, dim1, check_threads(None)))


def _tensors(fields) -> DiagramTensors:
    """A backend's fields as tensors (host arrays wrapped without a copy)."""
    return DiagramTensors(*(torch.from_numpy(f) if isinstance(f, np.ndarray) else f for f in fields))
