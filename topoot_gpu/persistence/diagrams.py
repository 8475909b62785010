"""The result type of cubical persistence: every pair of a batch, one row per pair (SPEC 2)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..core.validation import check_int, check_number

FILTRATIONS = ("sublevel", "superlevel")
CONSTRUCTIONS = ("T", "V")


@dataclass(frozen=True)
class Diagrams:
    """Every persistence pair of every image of a batch, one row per pair.

    Attributes:
        image: index of the image in the batch, int64 ``[k]``.
        dim: homology dimension (0 or 1), int64 ``[k]``.
        birth, death: float64 ``[k]`` in the map's units. The essential H0 class of each image
            dies at ``+inf`` (sublevel) or ``-inf`` (superlevel).
        birth_pixel, death_pixel: flat indices ``i * W + j`` into the image with
            ``map[birth_pixel] == birth`` and ``map[death_pixel] == death``; ``death_pixel`` is
            ``-1`` for an essential class.
        batch_size: number of images ``B``.
        shape: ``(H, W)``.
        filtration: ``"sublevel"`` or ``"superlevel"``.
        construction: ``"T"`` or ``"V"``.
    """

    image: np.ndarray
    dim: np.ndarray
    birth: np.ndarray
    death: np.ndarray
    birth_pixel: np.ndarray
    death_pixel: np.ndarray
    batch_size: int
    shape: tuple[int, int]
    filtration: str
    construction: str

    def __len__(self) -> int:
        return int(self.dim.shape[0])

    def _rows(self, mask: np.ndarray) -> Diagrams:
        return replace(
            self,
            image=self.image[mask],
            dim=self.dim[mask],
            birth=self.birth[mask],
            death=self.death[mask],
            birth_pixel=self.birth_pixel[mask],
            death_pixel=self.death_pixel[mask],
        )

    def select(self, *, image: int | None = None, dim: int | None = None) -> Diagrams:
        """The pairs of one image and/or one dimension, as a ``Diagrams`` of the same batch.
        ``image`` in ``[0, batch_size)`` and ``dim`` in ``{0, 1}`` (ints, not bools), else a
        ``ValueError``."""
        mask = np.ones(len(self), dtype=bool)
        if image is not None:
            mask &= self.image == self._image(image)
        if dim is not None:
            mask &= self.dim == self._dim(dim)
        return self._rows(mask)

    def _image(self, image: Any) -> int:
        return check_int("image", image, minimum=0, maximum=self.batch_size - 1)

    def _dim(self, dim: Any) -> int:
        return check_int("dim", dim, minimum=0, maximum=1)

    def intervals(self, image: int, dim: int) -> np.ndarray:
        """``[k, 2]`` float64 ``(birth, death)`` rows of one image and dimension, GUDHI's convention."""
        sel = (self.image == self._image(image)) & (self.dim == self._dim(dim))
        return np.stack([self.birth[sel], self.death[sel]], axis=1)

    def at_threshold(self, tau: float) -> Diagrams:
        """The diagram of the complex built on the level set at ``tau`` (SPEC 2, exact truncation).

        Sublevel: the pairs with ``birth <= tau``, a death above ``tau`` becoming ``+inf``.
        Superlevel: the pairs with ``birth >= tau``, a death below ``tau`` becoming ``-inf``.
        The death pixel of a pair made essential is ``-1``.
        """
        tau = check_number("tau", tau)
        if self.filtration == "sublevel":
            keep, cut, inf = self.birth <= tau, self.death > tau, np.inf
        else:
            keep, cut, inf = self.birth >= tau, self.death < tau, -np.inf
        out = self._rows(keep)
        cut = cut[keep]
        death = np.where(cut, inf, out.death)
        death_pixel = np.where(cut, -1, out.death_pixel)
        return replace(out, death=death, death_pixel=death_pixel)
