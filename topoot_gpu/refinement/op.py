"""``torch.ops.topoot.refine``: :func:`topoot_gpu.refine` registered with ``torch.library`` (CPU and CUDA
kernels and a fake kernel), for models that call it inside ``torch.compile`` or
``torch.inference_mode``. The op is opaque to the compiler: its fake kernel gives the output shapes,
so a compiled model traces through it without a graph break.

The schema's defaults are read from :class:`SelectionConfig` and :class:`HeadConfig`, the one
source of every default, so the op cannot drift from :func:`refine`.
"""

from collections.abc import Sequence
from typing import Optional

import torch

from ..head.config import HeadConfig
from ..selection.config import SelectionConfig
from .api import refine
from .config import RefineConfig

_SELECTION, _HEAD = SelectionConfig(), HeadConfig()


@torch.library.custom_op("topoot::refine", mutates_args=(), device_types=("cpu", "cuda"))
def refine_op(
    maps: torch.Tensor,
    features: Optional[torch.Tensor],  # noqa: UP045 - torch.library parses the annotation
    seed: int = 0,
    levels: Optional[Sequence[float]] = None,  # noqa: UP045
    reg: float = _SELECTION.reg,
    top_m: int = _SELECTION.top_m,
    delta_sub: float = _SELECTION.delta_sub,
    delta_sup: float = _SELECTION.delta_sup,
    epochs: int = _HEAD.epochs,
    lr: float = _HEAD.lr,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.topoot.refine(maps, features, seed=0, levels=None, reg, top_m, delta_sub, delta_sup,
    epochs, lr) -> (mask, pseudo_label)``: :func:`refine` with those fields of
    :class:`RefineConfig` (defaults: the configs' own; ``levels=None``: ``SelectionConfig().levels``;
    every other field at its default); bool outputs of the maps' shape on their device. Tensors
    only (``refine`` takes numpy too); the head trains on a detached copy of the features, so
    their autograd state does not matter."""
    selection = dict(reg=reg, top_m=top_m, delta_sub=delta_sub, delta_sup=delta_sup)
    if levels is not None:
        selection["levels"] = tuple(levels)
    config = RefineConfig(SelectionConfig(**selection), HeadConfig(epochs=epochs, lr=lr))
    result = refine(maps, features, config=config, seed=seed)
    return result.mask, result.pseudo_label


@refine_op.register_fake
def _(maps, features, *args, **kwargs):
    # The shape checks refine makes, so that a traced model fails where the eager one would.
    if maps.dim() not in (2, 3):
        raise ValueError(f"maps: expected shape [H, W] or [B, H, W], got {tuple(maps.shape)}")
    if features is not None:
        if features.dim() != maps.dim() + 1:
            shape = "[C, h, w] for one [H, W] map" if maps.dim() == 2 else "[B, C, h, w] for maps [B, H, W]"
            raise ValueError(f"features: expected {shape}, got shape {tuple(features.shape)}")
        if maps.dim() == 3 and features.shape[0] != maps.shape[0]:
            raise ValueError(f"features: batch size {features.shape[0]} does not match the maps' {maps.shape[0]}")
    return torch.empty_like(maps, dtype=torch.bool), torch.empty_like(maps, dtype=torch.bool)
