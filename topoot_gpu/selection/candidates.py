"""What the selection returns: the chosen candidate of each image and the pseudo-labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Candidate:
    """The chosen structure of one image.

    ``low``/``high`` are (saddle level, peak level) in units of the normalised map; ``dim`` its
    homology dimension; the pair's birth and death pixels are flat indices into the level map it
    came from (``level``: index into the level maps, the unquantised map last; with
    ``level_mode="threshold"``, the index of the threshold, the untruncated diagram last).
    ``stability``, ``cost`` and ``score`` are its values in the final ranking (SPEC 4.4-4.5).
    """

    filtration: str
    dim: int
    low: float
    high: float
    birth_pixel: int
    death_pixel: int
    level: int
    stability: float
    cost: float
    score: float


@dataclass(frozen=True)
class Selection:
    """Pseudo-labels of a batch.

    Attributes:
        labels: bool ``[B, H, W]`` (``[H, W]`` for one map), numpy or torch and on the device of
            the input.
        candidates: per image, the first-ranked :class:`Candidate`, or None.
        thresholds: float64 ``[B]``, the back-projection threshold ``max(0, high - delta)`` of
            the first-ranked candidate (NaN without one).
    """

    labels: Any
    candidates: list[Candidate | None]
    thresholds: np.ndarray
