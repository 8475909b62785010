"""``torch.ops.topoot.persistence_pixels``: the birth and death pixel of every persistence pair of a
batch of maps, registered with ``torch.library`` (CPU and CUDA kernels and a fake kernel with a
data-dependent pair count), so that a model whose loss calls
:func:`topoot_gpu.topology.api.persistence_diagrams` compiles with ``torch.compile(fullgraph=True)``.

Only indices leave the op; the values are gathered from the maps by torch operations outside it,
which is what makes the diagrams differentiable (each birth and death value is the map at one
pixel, so its gradient goes to that pixel).
"""

from __future__ import annotations

import numpy as np
import torch

from ..persistence.api import cubical_persistence


@torch.library.custom_op("topoot::persistence_pixels", mutates_args=(), device_types=("cpu", "cuda"))
def persistence_pixels(
    maps: torch.Tensor,
    dims: list[int],
    construction: str,
    filtration: str,
    min_persistence: float,
    backend: str,
    num_threads: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pixels [N, K, 2], dim [N, K], counts [N])`` int64 for maps ``[N, H, W]``: the pairs of each
    map of persistence above ``min_persistence`` (essential classes always), padded to the
    largest count ``K`` with -1; ``pixels[..., 1] == -1`` for an essential class. Within a map the
    pairs run by dimension, then by decreasing persistence (essential first), then by birth and
    death pixel: a canonical order, whatever the backend. ``num_threads``: the C++ core's threads
    (0: every core)."""
    d = cubical_persistence(
        maps.detach(), filtration=filtration, construction=construction, dims=tuple(dims), backend=backend,
        num_threads=num_threads or None,
    )  # fmt: skip
    N = maps.shape[0]
    pers = np.where(d.death_pixel < 0, np.inf, np.abs(d.death - d.birth))
    keep = pers > min_persistence
    image, dim, pers = d.image[keep], d.dim[keep], pers[keep]
    pix = np.stack([d.birth_pixel[keep], d.death_pixel[keep]], 1)
    order = np.lexsort((pix[:, 1], pix[:, 0], -pers, dim, image))
    image, dim, pix = image[order], dim[order], pix[order]
    counts = np.bincount(image, minlength=N)
    K = int(counts.max()) if N else 0
    slot = np.arange(len(image)) - np.repeat(np.cumsum(counts) - counts, counts)
    pixels = np.full((N, K, 2), -1, dtype=np.int64)
    dims_out = np.full((N, K), -1, dtype=np.int64)
    pixels[image, slot] = pix
    dims_out[image, slot] = dim
    device = maps.device
    return (
        torch.from_numpy(pixels).to(device),
        torch.from_numpy(dims_out).to(device),
        torch.from_numpy(counts.astype(np.int64)).to(device),
    )


@persistence_pixels.register_fake
def _(maps, dims, construction, filtration, min_persistence, backend, num_threads=0):
    K = torch.library.get_ctx().new_dynamic_size()
    N = maps.shape[0]
    return (
        maps.new_empty((N, K, 2), dtype=torch.int64),
        maps.new_empty((N, K), dtype=torch.int64),
        maps.new_empty((N,), dtype=torch.int64),
    )
