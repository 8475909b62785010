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
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ._validation import as_map_batch, check_choice, check_threads, map_tensor

FILTRATIONS = ("sublevel", "superlevel")
CONSTRUCTIONS = ("T", "V")
BACKENDS = ("auto", "cpu", "cuda", "triton", "reference")


@dataclass(frozen=True)
class Diagrams:
    """Every persistence pair of every image of a batch, one row per pair.

    Attributes:
        image: index of the image in the batch, int64 ``[k]``.
        dim: homology dimension (0 or 1), int64 ``[k]``.
        birth, death: float64 ``[k]`` in the map's units. The essential H0 class of each image
            dies at ``+inf`` (sublevel) or ``-inf`` (superlevel).
        birth_pixel, death_pixel: flat indices ``i * W + j`` into the image with
            ``map[birth_pixel] == birth`` and ``map[death_pixel] == death``; ``death_pixel`` is
            ``-1`` for an essential class.
        batch_size: number of images ``B``.
        shape: ``(H, W)``.
        filtration: ``"sublevel"`` or ``"superlevel"``.
        construction: ``"T"`` or ``"V"``.
    """

    image: np.ndarray
    dim: np.ndarray
    birth: np.ndarray
    death: np.ndarray
    birth_pixel: np.ndarray
    death_pixel: np.ndarray
    batch_size: int
    shape: tuple[int, int]
    filtration: str
    construction: str

    def __len__(self) -> int:
        return int(self.dim.shape[0])

    def _rows(self, mask: np.ndarray) -> Diagrams:
        return replace(
            self,
            image=self.image[mask],
            dim=self.dim[mask],
            birth=self.birth[mask],
            death=self.death[mask],
            birth_pixel=self.birth_pixel[mask],
            death_pixel=self.death_pixel[mask],
        )

    def select(self, *, image: int | None = None, dim: int | None = None) -> Diagrams:
        """The pairs of one image and/or one dimension, as a ``Diagrams`` of the same batch."""
        mask = np.ones(len(self), dtype=bool)
        if image is not None:
            mask &= self.image == image
        if dim is not None:
            mask &= self.dim == dim
        return self._rows(mask)

    def intervals(self, image: int, dim: int) -> np.ndarray:
        """``[k, 2]`` float64 ``(birth, death)`` rows of one image and dimension, GUDHI's convention."""
        if not 0 <= image < self.batch_size:
            raise ValueError(f"image: expected 0 <= image < {self.batch_size}, got {image}")
        sel = (self.image == image) & (self.dim == dim)
        return np.stack([self.birth[sel], self.death[sel]], axis=1)

    def at_threshold(self, tau: float) -> Diagrams:
        """The diagram of the complex built on the level set at ``tau`` (SPEC 2, exact truncation).

        Sublevel: the pairs with ``birth <= tau``, a death above ``tau`` becoming ``+inf``.
        Superlevel: the pairs with ``birth >= tau``, a death below ``tau`` becoming ``-inf``.
        The death pixel of a pair made essential is ``-1``.
        """
        tau = float(tau)
        if not np.isfinite(tau):
            raise ValueError(f"tau: expected a finite number, got {tau}")
        if self.filtration == "sublevel":
            keep, cut, inf = self.birth <= tau, self.death > tau, np.inf
        else:
            keep, cut, inf = self.birth >= tau, self.death < tau, -np.inf
        out = self._rows(keep)
        cut = cut[keep]
        death = np.where(cut, inf, out.death)
        death_pixel = np.where(cut, -1, out.death_pixel)
        return replace(out, death=death, death_pixel=death_pixel)


def _check_dims(dims: Any) -> tuple[bool, bool]:
    try:
        dims = tuple(dims) if isinstance(dims, Iterable) else (dims,)
    except TypeError:
        dims = None
    if not dims or any(d not in (0, 1) or isinstance(d, bool) for d in dims):
        raise ValueError(f"dims: expected a non-empty subset of (0, 1), got {dims!r}")
    return 0 in dims, 1 in dims


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
            finite. The ``"cpu"`` backend copies CUDA tensors to the host; ``"cuda"`` and
            ``"triton"`` keep them on the device.
        filtration: ``"sublevel"`` (pairs ``b < d``, essential ``(min a, +inf)``) or
            ``"superlevel"`` (the sublevel filtration of ``-a`` in the map's units: pairs
            ``b > d``, essential ``(max a, -inf)``).
        construction: ``"T"`` (pixels are top cells, GUDHI ``top_dimensional_cells=``) or
            ``"V"`` (pixels are vertices, GUDHI ``vertices=``).
        dims: the homology dimensions wanted, a non-empty subset of ``(0, 1)``.
        backend: ``"auto"`` or ``"cpu"`` (the C++ union-find core; "auto" stays on the CPU until
            the GPU backends have been run on GPU hardware), ``"cuda"`` (basins on the GPU, see
            :mod:`topoot_gpu.persistence_gpu`, CUDA C++ kernels through CuPy; CUDA tensors),
            ``"triton"`` (the same passes in Triton; CUDA tensors, or CPU tensors under
            ``TRITON_INTERPRET=1``), ``"reference"`` (GUDHI ``CubicalComplex``; needs the ``test``
            extra).
        num_threads: worker threads over the batch for the ``"cpu"`` backend and for the host-side
            merge of the ``"cuda"`` and ``"triton"`` backends (default: all cores).

    Returns:
        A :class:`Diagrams` with every pair of every image. Values are the input's values widened
        to float64, so ``map[birth_pixel] == birth`` exactly.
    """
    check_choice("filtration", filtration, FILTRATIONS)
    check_choice("construction", construction, CONSTRUCTIONS)
    check_choice("backend", backend, BACKENDS)
    dim0, dim1 = _check_dims(dims)
    threads = check_threads(num_threads)
    if backend in ("cuda", "triton"):
        return _gpu_persistence(maps, filtration, construction, dim0, dim1, backend, threads)
    batch = as_map_batch(maps, check_finite=backend == "reference")
    arr = batch.array
    if backend == "reference":
        from .reference import cubical_persistence_gudhi

        fields = cubical_persistence_gudhi(arr, filtration, construction, dim0, dim1)
    else:
        from . import _C

        kernel = _C.cubical_persistence_f32 if arr.dtype == np.float32 else _C.cubical_persistence_f64
        fields = kernel(arr, filtration == "superlevel", construction, dim0, dim1, threads)
    return Diagrams(
        *fields,
        batch_size=arr.shape[0],
        shape=(arr.shape[1], arr.shape[2]),
        filtration=filtration,
        construction=construction,
    )


def _gpu_persistence(
    maps: Any, filtration: str, construction: str, dim0: bool, dim1: bool, backend: str, threads: int
) -> Diagrams:
    """The CUDA and Triton backends: the same checks, and the map stays on its device."""
    t = map_tensor(maps)
    interpret = backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"
    if t.device.type != "cuda" and not interpret:
        raise ValueError(f"backend: {backend!r} needs CUDA tensors, got {t.device}")
    from .persistence_gpu import basin_persistence

    if backend == "cuda":
        from . import persistence_cuda as kernels
    else:
        from . import persistence_triton as kernels

    fields = basin_persistence(
        t, superlevel=filtration == "superlevel", conn8_h0=construction == "T", dim0=dim0, dim1=dim1,
        kernels=kernels, num_threads=threads,
    )  # fmt: skip
    return Diagrams(
        *fields,
        batch_size=t.shape[0],
        shape=(t.shape[1], t.shape[2]),
        filtration=filtration,
        construction=construction,
    )
