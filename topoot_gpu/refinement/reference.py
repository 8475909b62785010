"""The released TopoOT pipeline, image by image: GUDHI + POT pseudo-labels
(:mod:`topoot_gpu.selection.reference`) and the released head (:mod:`topoot_gpu.head.reference`).
What :func:`topoot_gpu.refine` is checked and timed against end to end. Host inputs; imports no fast
path."""

from __future__ import annotations

import time
from typing import Any

import torch

from ..core.maps import normalise_maps, normalised_map_features
from ..core.validation import check_config, check_features, check_maps, check_seed
from ..head.reference import train_released_head
from ..selection.reference import pseudo_labels
from .config import RefineConfig, RefineResult


def refine(maps: Any, features: Any = None, *, config: RefineConfig | None = None, seed: int = 0) -> RefineResult:
    """:func:`topoot_gpu.refine` as the released code computes it, one image after another (the same
    arguments, host inputs only; ``seconds`` per stage as there)."""
    config = check_config(config, RefineConfig)
    seed = check_seed(seed)
    batch = check_maps(maps)
    if batch.device.type != "cpu":
        raise ValueError(f"maps: the reference pipeline runs on host inputs, got {batch.device}")
    if features is not None:
        features = check_features(features, batch=len(batch.tensor), device=batch.device, squeezed=batch.squeezed)
    start = time.perf_counter()
    selection = pseudo_labels(batch.tensor, config=config.selection)
    selected = time.perf_counter()
    if features is None:
        features = normalised_map_features(torch.from_numpy(normalise_maps(batch.numpy())))
    featured = time.perf_counter()
    masks = selection.labels.clone()
    for b, label in enumerate(selection.labels):
        if label.any() and not label.all():
            masks[b] = torch.from_numpy(train_released_head(features[b], label, seed=seed, config=config.head))
    seconds = {"selection": selected - start, "features": featured - selected, "head": time.perf_counter() - featured}
    return RefineResult(batch.to_caller(masks), batch.to_caller(selection.labels), selection.candidates, seconds)
