"""The product: anomaly maps (+ backbone features) in, refined masks out.

:func:`refine` runs the pseudo-label selection (SPEC 4) and the head (SPEC 5) on a batch and
reports what it chose; ``torch.ops.topoot.refine`` is the same computation registered with
``torch.library`` (CPU and CUDA kernels and a fake kernel), for models that call it inside
``torch.compile`` or ``torch.inference_mode``. The op is opaque to the compiler: its fake kernel
gives the output shapes, so a compiled model traces through it without a graph break.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import torch

from ._validation import as_map_batch, check_choice, check_config, check_seed
from .head import check_features, map_features, train_heads
from .head_config import HeadConfig
from .selection import Candidate, normalise_maps, pseudo_labels
from .selection_config import SelectionConfig

BACKENDS = ("auto", "cpu", "torch", "reference")


@dataclass(frozen=True)
class RefineConfig:
    """Everything :func:`refine` does: the selection's and the head's configurations."""

    selection: SelectionConfig = field(default_factory=SelectionConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.selection, SelectionConfig):
            raise ValueError(f"selection: expected a SelectionConfig, got {type(self.selection).__name__}")
        if not isinstance(self.head, HeadConfig):
            raise ValueError(f"head: expected a HeadConfig, got {type(self.head).__name__}")


@dataclass(frozen=True)
class RefineResult:
    """What :func:`refine` returns.

    Attributes:
        mask: bool ``[B, H, W]`` (``[H, W]`` for one map), the head's masks, in the input's kind
            (numpy, or torch on the input's device).
        pseudo_label: the pseudo-labels the heads were trained on, same shape and kind.
        candidates: per image, the chosen :class:`~topoot_gpu.Candidate`, or None.
        seconds: wall time of each stage for the whole batch (``"selection"``, ``"features"``,
            ``"head"``).
    """

    mask: Any
    pseudo_label: Any
    candidates: list[Candidate | None]
    seconds: dict[str, float]


def refine(
    maps: Any,
    features: Any = None,
    *,
    config: RefineConfig | None = None,
    seed: int = 0,
    backend: str = "auto",
) -> RefineResult:
    """Refine a batch of anomaly maps into defect masks (SPEC 4 and 5).

    Args:
        maps: ``[B, H, W]`` or ``[H, W]``, numpy or torch (CPU or CUDA), any floating dtype, finite.
        features: backbone features ``[B, C, h, w]`` (``[C, h, w]`` for one map), on the maps'
            device, resized bilinearly to ``H x W`` (``align_corners=False``). None: the map's own
            feature stack, :func:`topoot_gpu.head.map_features` (8 channels).
        config: a :class:`RefineConfig` (defaults: the released implementation).
        seed: a non-negative int: the head's draws. The same inputs and seed give the same masks,
            whatever the batch they come in.
        backend: ``"auto"`` (the C++ selection, and the head on the maps' device: C++ kernels on
            the CPU, torch ops elsewhere), ``"cpu"`` / ``"torch"`` (the head's backend, see
            :func:`topoot_gpu.head.train_heads`), ``"reference"`` (GUDHI + POT selection and the
            released head, image by image; test extra).

    Returns:
        A :class:`RefineResult`.

    Raises:
        ValueError: bad maps or features (rank, dtype, NaN/inf, batch size or device mismatch),
            config, seed or backend.
    """
    config = check_config(config, RefineConfig)
    check_choice("backend", backend, BACKENDS)
    check_seed(seed)
    batch = as_map_batch(maps)
    B, H, W = batch.array.shape
    device = batch.device
    if features is not None:
        features = check_features(features, B, H, W, device, batch.squeezed)
    seconds = {}
    t0 = time.perf_counter()
    sel = pseudo_labels(batch.array, config=config.selection, backend="reference" if backend == "reference" else "auto")
    labels = torch.from_numpy(np.ascontiguousarray(sel.labels)).to(device)
    t1 = time.perf_counter()
    seconds["selection"] = t1 - t0
    if features is None:
        features = map_features(torch.from_numpy(normalise_maps(batch.array)).to(device))
    t2 = time.perf_counter()
    seconds["features"] = t2 - t1
    masks = train_heads(features, labels, config=config.head, seed=seed, backend=backend)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds["head"] = time.perf_counter() - t2
    if batch.squeezed:
        masks, labels = masks[0], labels[0]
    if not batch.is_torch:
        masks, labels = masks.cpu().numpy(), labels.cpu().numpy()
    return RefineResult(masks, labels, sel.candidates, seconds)


@torch.library.custom_op("topoot::refine", mutates_args=(), device_types=("cpu", "cuda"))
def _refine_op(
    maps: torch.Tensor,
    features: Optional[torch.Tensor],  # noqa: UP045 - torch.library parses the annotation
    seed: int = 0,
    levels: Optional[Sequence[float]] = None,  # noqa: UP045
    reg: float = 0.3,
    top_m: int = 10,
    delta_sub: float = 0.35,
    delta_sup: float = 0.17,
    epochs: int = 5,
    lr: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.ops.topoot.refine(maps, features, seed=0, levels=None, reg=0.3, top_m=10,
    delta_sub=0.35, delta_sup=0.17, epochs=5, lr=1e-3) -> (mask, pseudo_label)``: :func:`refine`
    with those fields of :class:`RefineConfig` (``levels=None``: ``(1000,)``; the others at
    their defaults); bool outputs of
    the maps' shape on their device."""
    config = RefineConfig(
        SelectionConfig(
            levels=(1000,) if levels is None else tuple(levels),
            reg=reg,
            top_m=top_m,
            delta_sub=delta_sub,
            delta_sup=delta_sup,
        ),
        HeadConfig(epochs=epochs, lr=lr),
    )
    result = refine(maps, features, config=config, seed=seed)
    return result.mask, result.pseudo_label


@_refine_op.register_fake
def _(maps, features, seed=0, levels=None, reg=0.3, top_m=10, delta_sub=0.35, delta_sup=0.17, epochs=5, lr=1e-3):
    if maps.dim() not in (2, 3):
        raise ValueError(f"maps: expected shape [H, W] or [B, H, W], got {tuple(maps.shape)}")
    return torch.empty_like(maps, dtype=torch.bool), torch.empty_like(maps, dtype=torch.bool)
