"""The selection's configuration (SPEC 4): every default is a field, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.validation import check_int, check_number


@dataclass(frozen=True)
class SelectionConfig:
    """How pseudo-labels are chosen. Defaults are the released implementation's (SPEC 4).

    Attributes:
        levels: quantisation levels of the level maps (``level_mode="quantise"``, each ``k``
            gives the map rounded to ``k`` values; ``k <= 1`` leaves it as is), or thresholds in
            ``(0, 1)`` of the normalised map (``level_mode="threshold"``, paper text: the truncated
            diagram at each ``tau``). The unquantised map is always the last level map.
        level_mode: ``"quantise"`` (released) or ``"threshold"`` (paper text).
        reg, max_iter, stop_thr: entropic transport (POT ``ot.sinkhorn``) parameters.
        cost: ``"normalized"`` (released) or ``"diagonal"`` (paper text) transport costs.
        top_m: candidates kept per filtration before the cross-filtration step.
        top_k: labels united into the pseudo-label (1 in the released implementation).
        delta_sub, delta_sup: back-projection offsets: ``Y = a >= max(0, high - delta)``.
        construction: cubical complex, ``"T"`` (GUDHI top cells) or ``"V"`` (vertices).
        sub_dims, sup_dims: homology dimensions whose finite pairs are candidates in the
            sublevel and superlevel filtrations (released: ``(1,)`` and ``(0,)``; the paper-text
            option adds sublevel H0 and superlevel H1).
        ranking: ``"and_product"``, the only ranking the SPEC defines.
        max_memory: bytes each transport step may allocate (``None``: half of the device's
            memory, :func:`topoot_gpu.core.allocator.memory_budget`). Not part of the SPEC: it
            changes no label, only whether a map with very many candidates (dense transport
            problems of ``n x m`` points, ~32 bytes per entry on the CPU) runs or raises a
            ``ValueError`` saying what it needs.
    """

    levels: tuple[float, ...] = (1000,)
    level_mode: str = "quantise"
    reg: float = 0.3
    max_iter: int = 15000
    stop_thr: float = 1e-9
    cost: str = "normalized"
    top_m: int = 10
    top_k: int = 1
    delta_sub: float = 0.35
    delta_sup: float = 0.17
    construction: str = "T"
    sub_dims: tuple[int, ...] = (1,)
    sup_dims: tuple[int, ...] = (0,)
    ranking: str = "and_product"
    max_memory: int | None = None

    def __post_init__(self) -> None:
        def fail(name: str, what: str) -> None:
            raise ValueError(f"{name}: expected {what}, got {getattr(self, name)!r}")

        if isinstance(self.levels, (str, bytes)) or not hasattr(self.levels, "__iter__"):
            fail("levels", "a sequence of numbers")
        object.__setattr__(self, "levels", tuple(check_number("levels", x) for x in self.levels))
        levels = self.levels
        if self.level_mode not in ("quantise", "threshold"):
            fail("level_mode", "'quantise' or 'threshold'")
        if self.level_mode == "threshold" and not all(0 < t < 1 for t in levels):
            fail("levels", "thresholds in (0, 1) with level_mode='threshold'")
        if self.level_mode == "quantise" and not all(float(k).is_integer() for k in levels):
            fail("levels", "integer level counts with level_mode='quantise'")
        # Numbers (numpy scalars too) are stored as Python ints and floats.
        object.__setattr__(self, "reg", check_number("reg", self.reg, minimum=0, strict=True))
        for name in ("max_iter", "top_m", "top_k"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum=1))
        object.__setattr__(self, "stop_thr", check_number("stop_thr", self.stop_thr, minimum=0, finite=False))
        if self.cost not in ("normalized", "diagonal"):
            fail("cost", "'normalized' or 'diagonal'")
        for name in ("delta_sub", "delta_sup"):
            object.__setattr__(self, name, check_number(name, getattr(self, name)))
        if self.construction not in ("T", "V"):
            fail("construction", "'T' or 'V'")
        for name in ("sub_dims", "sup_dims"):
            v = getattr(self, name)
            try:
                dims = tuple(sorted(set(v)))
            except TypeError:
                fail(name, "a subset of (0, 1)")
            if not all(d in (0, 1) and isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims):
                fail(name, "a subset of (0, 1)")
            object.__setattr__(self, name, tuple(int(d) for d in dims))
        if not self.sub_dims and not self.sup_dims:
            fail("sub_dims", "at least one candidate dimension over sub_dims and sup_dims")
        if self.ranking != "and_product":
            fail("ranking", "'and_product'")
        if self.max_memory is not None:
            object.__setattr__(self, "max_memory", check_int("max_memory", self.max_memory, minimum=1))

    @property
    def n_level_maps(self) -> int:
        return len(self.levels) + 1

    def delta(self, filtration: str) -> float:
        return self.delta_sub if filtration == "sublevel" else self.delta_sup
