"""The ``"reference"`` backend of cubical persistence: GUDHI ``CubicalComplex``, one map at a time.

The ground truth the fast backends are checked against (SPEC 6). GUDHI is a test extra, imported
when a function here is called. Imports no fast path.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.backends import require


def import_gudhi():
    return require("gudhi", "test", "gudhi")


def gudhi_diagram(a: np.ndarray, construction: str, dim0: bool, dim1: bool) -> list[tuple[int, int, int]]:
    """Sublevel pairs of one 2-D map from GUDHI, with the pixels GUDHI reports.

    Returns rows ``(dim, birth_pixel, death_pixel)`` (flat C-order indices, ``-1`` for an
    essential death), zero-length pairs dropped. GUDHI numbers the cells of a 2-D array in Fortran
    order; the indices are converted here.
    """
    gudhi = import_gudhi()
    H, W = a.shape
    if construction == "T":
        cc = gudhi.CubicalComplex(top_dimensional_cells=a)
    else:
        cc = gudhi.CubicalComplex(vertices=a)
    cc.compute_persistence(homology_coeff_field=2, min_persistence=0)
    regular, essential = (
        cc.cofaces_of_persistence_pairs() if construction == "T" else cc.vertices_of_persistence_pairs()
    )

    def c_order(k: np.ndarray) -> np.ndarray:
        return (k % H) * W + k // H

    rows = []
    for d, wanted in ((0, dim0), (1, dim1)):
        if not wanted:
            continue
        if d < len(regular) and len(regular[d]):
            pairs = c_order(np.asarray(regular[d], dtype=np.int64).reshape(-1, 2))
            pairs = pairs[a.flat[pairs[:, 0]] != a.flat[pairs[:, 1]]]
            rows += [(d, int(b), int(e)) for b, e in pairs]
        if d < len(essential) and len(essential[d]):
            rows += [(d, int(b), -1) for b in c_order(np.asarray(essential[d], dtype=np.int64))]
    return rows


def diagram_fields(
    maps: np.ndarray, *, superlevel: bool, conn8_h0: bool, dim0: bool, dim1: bool
) -> tuple[np.ndarray, ...]:
    """GUDHI's diagrams of a ``[B, H, W]`` numpy batch as the fields of ``Diagrams`` (image, dim,
    birth, death, birth_pixel, death_pixel); the superlevel filtration is GUDHI's sublevel one of
    ``-a``, reported in the map's units."""
    sign = -1.0 if superlevel else 1.0
    construction = "T" if conn8_h0 else "V"
    fields: list[list] = [[] for _ in range(6)]
    for b, a in enumerate(maps):
        a64 = np.asarray(a, dtype=np.float64)
        for d, bp, dp in gudhi_diagram(sign * a64, construction, dim0, dim1):
            death = a64.flat[dp] if dp >= 0 else sign * np.inf
            for f, v in zip(fields, (b, d, a64.flat[bp], death, bp, dp)):
                f.append(v)
    dtypes = (np.int64, np.int64, np.float64, np.float64, np.int64, np.int64)
    return tuple(np.asarray(f, dtype=t) for f, t in zip(fields, dtypes))


def cubical_persistence(
    maps: torch.Tensor, *, superlevel: bool, conn8_h0: bool, dim0: bool, dim1: bool, num_threads: int
) -> tuple[np.ndarray, ...]:
    """The backend's entry (:mod:`topoot_gpu.persistence.api`): :func:`diagram_fields` of host
    ``maps [B, H, W]``, one map at a time (``num_threads`` is not used)."""
    return diagram_fields(maps.numpy(), superlevel=superlevel, conn8_h0=conn8_h0, dim0=dim0, dim1=dim1)
