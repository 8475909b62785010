"""Ray Data: :class:`Refiner` for ``Dataset.map_batches`` and :func:`refine_ray`, the whole job
(:mod:`topoot_gpu.refinement.ray_data`). Needs the extra ``topoot_gpu[ray]`` to run."""

from .refinement.ray_data import Refiner, refine_ray

__all__ = ["Refiner", "refine_ray"]
