"""What :func:`topoot_gpu.refine` takes and returns: the whole configuration and the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..head.config import HeadConfig
from ..selection.candidates import Candidate
from ..selection.config import SelectionConfig


@dataclass(frozen=True)
class RefineConfig:
    """Everything :func:`topoot_gpu.refine` does: the selection's and the head's configurations."""

    selection: SelectionConfig = field(default_factory=SelectionConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.selection, SelectionConfig):
            raise ValueError(f"selection: expected a SelectionConfig, got {type(self.selection).__name__}")
        if not isinstance(self.head, HeadConfig):
            raise ValueError(f"head: expected a HeadConfig, got {type(self.head).__name__}")


@dataclass(frozen=True)
class RefineResult:
    """What :func:`topoot_gpu.refine` returns.

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
