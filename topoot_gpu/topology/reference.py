"""The topological losses written plainly, map by map, on GUDHI's pixel pairs: what
torch-topological's ``CubicalComplex`` does (``cofaces_of_persistence_pairs``, or
``vertices_of_persistence_pairs`` for the V construction, values gathered from the map so that
autograd reaches the pixels). Everything in :mod:`topoot_gpu.topology.api` is checked against it.
Imports no fast path (extra ``test``: GUDHI)."""

from __future__ import annotations

import numpy as np
import torch


def gudhi_pairs(a: np.ndarray, *, construction: str, filtration: str) -> list[tuple[int, int, int]]:
    """``(dim, birth pixel, death pixel)`` of every pair of one ``[H, W]`` map (death -1: essential),
    flat indices ``i * W + j``, from GUDHI's cells of the pairs."""
    import gudhi

    H, W = a.shape
    values = -a if filtration == "superlevel" else a
    if construction == "T":
        complex_ = gudhi.CubicalComplex(top_dimensional_cells=values)
        complex_.persistence()
        regular, essential = complex_.cofaces_of_persistence_pairs()
    else:
        complex_ = gudhi.CubicalComplex(vertices=values)
        complex_.persistence()
        regular, essential = complex_.vertices_of_persistence_pairs()

    def pixel(f: int) -> int:  # GUDHI numbers the cells of a 2-D array in Fortran order
        return int(f % H) * W + int(f // H)

    out = []
    for dim, pairs in enumerate(regular):
        out += [(dim, pixel(b), pixel(d)) for b, d in np.asarray(pairs).reshape(-1, 2)]
    for dim, births in enumerate(essential):
        out += [(dim, pixel(b), -1) for b in np.asarray(births).reshape(-1)]
    return out


def diagrams(x: torch.Tensor, *, construction: str = "T", filtration: str = "sublevel"):
    """Per map of ``x [N, H, W]``: ``(dims [k], values [k, 2])``, values gathered from ``x``
    (differentiable), essential deaths ``+-inf``."""
    out = []
    inf = float("inf") if filtration == "sublevel" else float("-inf")
    for k in range(len(x)):
        pairs = gudhi_pairs(x[k].detach().cpu().numpy(), construction=construction, filtration=filtration)
        flat = x[k].reshape(-1)
        dims = torch.tensor([p[0] for p in pairs], dtype=torch.int64)
        birth = flat[torch.tensor([p[1] for p in pairs], dtype=torch.int64)]
        death = torch.stack([flat[p[2]] if p[2] >= 0 else flat.new_tensor(inf) for p in pairs])
        out.append((dims, torch.stack([birth, death], 1)))
    return out


def total_persistence(x: torch.Tensor, *, dim: int, p: float = 1.0, **kw) -> torch.Tensor:
    """Per map: ``sum |d - b|^p`` over its finite pairs of dimension ``dim``."""
    out = []
    for dims, v in diagrams(x, **kw):
        sel = (dims == dim) & torch.isfinite(v[:, 1])
        out.append(((v[sel, 1] - v[sel, 0]).abs() ** p).sum())
    return torch.stack(out)


def betti_loss(x: torch.Tensor, target: int, *, dim: int, **kw) -> torch.Tensor:
    """Per map: Clough et al.'s loss with ``target`` classes of dimension ``dim``, the essential
    classes counted first."""
    out = []
    for dims, v in diagrams(x, **kw):
        essential = int(((dims == dim) & ~torch.isfinite(v[:, 1])).sum())
        sel = (dims == dim) & torch.isfinite(v[:, 1])
        pers = torch.sort((v[sel, 1] - v[sel, 0]).abs(), descending=True).values
        k = max(0, target - essential)
        out.append((1 - pers[:k] ** 2).sum() + (pers[k:] ** 2).sum())
    return torch.stack(out)


def partial_persistence(x: torch.Tensor, threshold: float, *, dim: int, filtration: str = "sublevel", **kw):
    """Per map: the persistence of the diagram truncated at ``threshold`` (deaths cut there)."""
    out = []
    for dims, v in diagrams(x, filtration=filtration, **kw):
        b, d = v[dims == dim, 0], v[dims == dim, 1]
        if filtration == "sublevel":
            keep = b < threshold
            out.append((torch.clamp(d[keep], max=threshold) - b[keep]).sum())
        else:
            keep = b > threshold
            out.append((b[keep] - torch.clamp(d[keep], min=threshold)).sum())
    return torch.stack(out)
