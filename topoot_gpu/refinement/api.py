"""The product: anomaly maps (+ backbone features) in, refined masks out (SPEC 4 and 5).

:func:`refine` checks its inputs once, runs the pseudo-label selection
(:func:`topoot_gpu.selection.api.select`) and the head (:func:`topoot_gpu.head.api.train`) on the
batch with the backends it is given, and reports what it chose. ``torch.ops.topoot.refine``
(:mod:`topoot_gpu.refinement.op`) is the same computation as a ``torch.library`` op.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..core import backends
from ..core.maps import normalise_maps, normalised_map_features
from ..core.validation import check_config, check_features, check_maps, check_seed, check_threads
from ..head.api import check_precision, train
from ..selection.api import resolve_backends, select
from .config import RefineConfig, RefineResult


def refine(
    maps: Any,
    features: Any = None,
    *,
    config: RefineConfig | None = None,
    seed: int = 0,
    persistence_backend: str = "auto",
    transport_backend: str = "auto",
    head_backend: str = "auto",
) -> RefineResult:
    """Refine a batch of anomaly maps into defect masks (SPEC 4 and 5).

    Args:
        maps: ``[B, H, W]`` or ``[H, W]``, numpy or torch (CPU or CUDA), any floating dtype, finite.
        features: backbone features ``[B, C, h, w]`` (``[C, h, w]`` for one map), on the maps'
            device, resized bilinearly to ``H x W`` (``align_corners=False``). None: the map's own
            feature stack, :func:`topoot_gpu.map_features` (8 channels).
        config: a :class:`RefineConfig` (defaults: the released implementation).
        seed: a non-negative int: the head's draws. The same inputs and seed give the same masks,
            whatever the batch they come in.
        persistence_backend: the backend of the selection's persistence diagrams (see
            :func:`topoot_gpu.cubical_persistence`).
        transport_backend: the backend of the selection's transport steps (see
            :func:`topoot_gpu.best_stability`).
        head_backend: the backend of the head's training (see :func:`topoot_gpu.train_heads`).
            Every backend runs on the maps' device; ``"auto"`` picks per device as
            :mod:`topoot_gpu.core.backends` says. The released pipeline itself, GUDHI + POT and the
            released head image by image, is :func:`topoot_gpu.refinement.reference.refine`.

    Returns:
        A :class:`RefineResult`.

    Raises:
        ValueError: bad maps or features (rank, dtype, NaN/inf, batch size or device mismatch),
            config, seed or backend (unknown, or not running on the maps' device).
    """
    config = check_config(config, RefineConfig)
    seed = check_seed(seed)
    batch = check_maps(maps)
    B, H, W = batch.tensor.shape
    device = batch.device
    run = resolve_backends(persistence_backend, transport_backend, device)
    head_backend, _ = backends.resolve("train_heads", head_backend, device, "head_backend")
    if features is not None:
        features = check_features(features, batch=B, device=device, squeezed=batch.squeezed)
    # Before the selection's work: map features (features=None) are float32.
    check_precision(config.head, head_backend, torch.float32 if features is None else features.dtype)
    seconds = {}
    t0 = time.perf_counter()
    labels, candidates, _ = select(batch, config.selection, run)
    t1 = time.perf_counter()
    seconds["selection"] = t1 - t0
    if features is None:
        features = normalised_map_features(torch.from_numpy(normalise_maps(batch.numpy())).to(device))
    t2 = time.perf_counter()
    seconds["features"] = t2 - t1
    threads = check_threads(None)
    masks = train(features, labels, config=config.head, seed=seed, backend=head_backend, num_threads=threads)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds["head"] = time.perf_counter() - t2
    return RefineResult(batch.to_caller(masks), batch.to_caller(labels), candidates, seconds)
