"""MEBin thresholds from one H0 persistence diagram per image.

MEBin (AnomalyNCD, CVPR 2025; anomalib's ``MEBinPostProcessor``) binarises each normalised map at
64 scores, erodes each binary map with a flat ``k x k`` kernel and counts its 8-connected
components, then picks a score from the count sequence (:mod:`topoot_gpu.mebin.rule`). Two facts
make the whole sequence one persistence computation:

* eroding ``{f > t}`` by a flat kernel gives ``{erode(f) > t}``, where ``erode(f)`` is the grey
  erosion (the window minimum, pixels outside the image ignored), so every binary map of the sweep
  is a superlevel set of the one map ``g = erode(f)``;
* the 8-connected components of ``{g > t}`` are the H0 classes of the superlevel filtration of ``g``
  (construction ``"T"``) alive at ``t``: the pairs with ``death <= t < birth``.

So the count at every score is read off one H0 diagram by two sorted searches, exactly (no
iteration limit), instead of 64 labellings. anomalib labels with kornia's ``connected_components``
(1000 rounds of 3x3 max-pooling): a component whose largest pixel index is more than 1000 steps
(8-connected, inside the component) from some of its pixels keeps several labels there, so anomalib
*over*-counts such long thin components (the issue that asked for this said "undercounts"; pooling
can only split a component, never merge two). This module reports the true count; on maps where
kornia's labelling has converged the two agree exactly, and so do the masks and thresholds
(tests/test_anomalib.py runs both on the same batches).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.validation import check_choice, check_int, check_maps, floating_tensor
from ..persistence.api import cubical_persistence
from .rule import stable_threshold, sweep_scores

RANGES = ("batch", "image")


def _as_batch(maps: Any) -> tuple[Any, tuple[int, ...], bool]:
    """``maps`` as ``[B, H, W]`` (a ``[B, 1, H, W]`` batch, anomalib's layout, loses its channel), its
    shape, and whether it came as torch."""
    t = floating_tensor(maps, "maps")
    shape = tuple(t.shape)
    if t.dim() == 4:
        if shape[1] != 1:
            raise ValueError(f"maps: expected [H, W], [B, H, W] or [B, 1, H, W], got shape {shape}")
        t = t[:, 0]
    elif t.dim() not in (2, 3):
        raise ValueError(f"maps: expected [H, W], [B, H, W] or [B, 1, H, W], got shape {shape}")
    return t, shape, isinstance(maps, torch.Tensor)


def _check_options(sample_rate: Any, min_interval_len: Any, erode: Any, kernel_size: Any, range_: Any) -> None:
    check_int("sample_rate", sample_rate, minimum=1)
    check_int("min_interval_len", min_interval_len, minimum=1)
    check_int("kernel_size", kernel_size, minimum=1)
    if not isinstance(erode, (bool, np.bool_)):
        raise ValueError(f"erode: expected a bool, got {erode!r}")
    check_choice("range", range_, RANGES)


def _scores_range(a: torch.Tensor, per_image: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(s_min, score_range, s_max)``: 0-dim tensors for ``range="batch"``, ``[B]`` for ``"image"``.

    ``"batch"`` is MEBin's own: from the lowest to the highest per-image peak; if every image peaks at
    the same value, from the batch's minimum instead. ``"image"`` is what ``"batch"`` gives for a batch
    of that one image: from its minimum to its maximum."""
    peaks = a.amax(dim=(1, 2))
    if per_image:
        lo = a.amin(dim=(1, 2))
        return lo, peaks - lo, peaks
    s_max, s_min = peaks.max(), peaks.min()
    score_range = s_max - s_min
    if not bool(score_range != 0):  # one host read per batch, as anomalib's own test
        s_min = a.amin()
        score_range = s_max - s_min
    return s_min, score_range, s_max


def _eroded_scores(a: torch.Tensor, s_min: torch.Tensor, score_range: torch.Tensor, erode: bool, k: int
                   ) -> torch.Tensor:  # fmt: skip
    """The maps in MEBin's ``[0, 255]`` units (below ``s_min``: 0), then grey-eroded by a flat ``k x k``
    window whose origin is ``(k // 2, k // 2)`` (kornia's default, also for even ``k``): the minimum over
    rows ``i - k//2 .. i + k - 1 - k//2`` (and the same for columns), pixels outside the image ignored.
    The arithmetic is anomalib's, in the maps' dtype, so the values are its values bit for bit."""
    lo = s_min.reshape(-1, 1, 1)
    span = score_range.reshape(-1, 1, 1)
    safe = torch.where(span != 0, span, torch.ones_like(span))  # a constant image's scores are not used
    g = torch.where(a < lo, torch.zeros_like(a), ((a - lo) / safe * 255.0).clamp(0, 255))
    if erode and k > 1:
        o = k // 2
        neg = F.pad(-g[:, None], (o, k - 1 - o, o, k - 1 - o), value=float("-inf"))
        g = -F.max_pool2d(neg, kernel_size=k, stride=1)[:, 0]
    return g


def _counts(g: torch.Tensor, scores: list[int], backend: str, num_threads: int | None) -> np.ndarray:
    """``[B, K]`` int64: the 8-connected components of ``{g > s}`` for each score ``s`` of ``scores``,
    from the superlevel H0 diagram of ``g``: a class ``(birth, death)`` is a component of ``{g > s}``
    exactly when ``death <= s < birth`` (``death = -inf`` for the essential class)."""
    B = g.shape[0]
    d = cubical_persistence(g, filtration="superlevel", construction="T", dims=(0,), backend=backend,
                            num_threads=num_threads)  # fmt: skip
    u = np.asarray(scores[::-1], dtype=np.float64)  # the sweep descends: ascending for searchsorted
    K = len(u)
    first = np.searchsorted(u, d.death, side="left")  # first score >= death: alive from here
    stop = np.searchsorted(u, d.birth, side="left")  # first score >= birth: dead from here on
    diff = np.bincount(d.image * (K + 1) + first, minlength=B * (K + 1))
    diff -= np.bincount(d.image * (K + 1) + stop, minlength=B * (K + 1))
    ascending = np.cumsum(diff.reshape(B, K + 1), axis=1)[:, :K]
    return np.ascontiguousarray(ascending[:, ::-1])


def _sweep(a: torch.Tensor, *, sample_rate: int, erode: bool, kernel_size: int, per_image: bool,
           backend: str, num_threads: int | None):  # fmt: skip
    s_min, score_range, s_max = _scores_range(a, per_image)
    constant = (score_range == 0).expand(a.shape[0]).cpu().numpy()
    g = _eroded_scores(a, s_min, score_range, erode, kernel_size)
    if constant.any():  # only a constant image (per image), or a constant batch, has no range
        g = torch.where(torch.as_tensor(constant, device=g.device).reshape(-1, 1, 1), torch.zeros_like(g), g)
    scores = sweep_scores(sample_rate)
    counts = _counts(g, scores, backend, num_threads)
    counts[constant] = 0
    return scores, counts, constant, (s_min, score_range, s_max)


def mebin_counts(
    maps: Any,
    *,
    sample_rate: int = 4,
    erode: bool = True,
    kernel_size: int = 6,
    range: str = "batch",  # noqa: A002  (the name MEBin's users know)
    persistence_backend: str = "auto",
    num_threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """MEBin's count curve, exact: ``(scores, counts)``.

    ``scores`` (int64 ``[K]``) are the sweep's scores in its order, ``255, 255 - sample_rate, ...``;
    ``counts[b, k]`` (int64 ``[B, K]``) is the number of 8-connected components of image ``b``'s map,
    scaled to ``[0, 255]`` as MEBin scales it, binarised at ``> scores[k]`` and (with ``erode``)
    eroded by a flat ``kernel_size`` square. Arguments as :func:`mebin_thresholds`. A constant batch
    (``range="batch"``) or constant image (``"image"``) counts 0 everywhere.
    """
    _check_options(sample_rate, 1, erode, kernel_size, range)
    t, _, _ = _as_batch(maps)
    batch = check_maps(t)
    scores, counts, _, _ = _sweep(batch.tensor, sample_rate=sample_rate, erode=bool(erode), kernel_size=kernel_size,
                                  per_image=range == "image", backend=persistence_backend,
                                  num_threads=num_threads)  # fmt: skip
    return np.asarray(scores, dtype=np.int64), counts


def mebin_thresholds(
    maps: Any,
    *,
    sample_rate: int = 4,
    min_interval_len: int = 4,
    erode: bool = True,
    kernel_size: int = 6,
    range: str = "batch",  # noqa: A002  (the name MEBin's users know)
    persistence_backend: str = "auto",
    num_threads: int | None = None,
) -> tuple[Any, Any]:
    """MEBin's masks and per-image thresholds, from one H0 persistence diagram per image.

    With the defaults the result is anomalib's ``mebin_binarize`` (``MEBinPostProcessor``) on the
    same batch, bit for bit, wherever kornia's labelling has converged (module doc):

    1. scores: each map scaled to ``[0, 255]`` by ``(A - s_min) / (s_max - s_min) * 255`` (clamped;
       below ``s_min``: 0), in the maps' dtype;
    2. counts ``n_k``: 8-connected components of ``erode({score > 255 - k * sample_rate})``, for every
       ``k`` with ``255 - k * sample_rate >= 0``, all from one diagram (:func:`mebin_counts`);
    3. the score ``s*`` at the end of the longest run of a constant non-zero count of length
       ``>= min_interval_len`` (:func:`topoot_gpu.mebin.rule.stable_threshold`; none: 255);
    4. threshold ``s* / 255 * (s_max - s_min) + s_min`` in the map's units, mask ``A > threshold``.

    Args:
        maps: ``[H, W]``, ``[B, H, W]`` or ``[B, 1, H, W]`` (anomalib's layout), numpy or torch (CPU
            or CUDA), floating and finite. float16/bfloat16 are widened to float32 first (exactly), so
            they give anomalib's result on the float32 maps.
        sample_rate: step of the sweep in the ``[0, 255]`` units, an int ``>= 1`` (anomalib's default 4:
            64 scores).
        min_interval_len: shortest run of a constant count that counts as stable, an int ``>= 1``.
        erode: erode each binary map before counting (suppresses thin bridges and specks).
        kernel_size: side of the flat square erosion kernel, an int ``>= 1``.
        range: ``"batch"`` (MEBin's own: ``s_max`` / ``s_min`` are the highest / lowest per-image
            peak of the batch; if all peaks are equal, ``s_min`` is the batch's minimum), so an
            image's threshold depends on the other images of its batch; or ``"image"``: each image
            from its own minimum to its maximum, what ``"batch"`` gives for a batch of that image
            alone, independent of the batch's composition.
        persistence_backend: backend of :func:`topoot_gpu.cubical_persistence` for the diagrams
            (``"auto"``: the C++ core, on a host copy for CUDA maps; ``"cuda"``/``"triton"`` keep the
            erosion and the persistence's first passes on the device).
        num_threads: threads of the persistence over the batch (default: all cores).

    Returns:
        ``(masks, thresholds)``: bool masks in the maps' shape and kind (numpy or torch, on the maps'
        device) and one threshold per image, ``[B]`` (a scalar for one ``[H, W]`` map), in the maps'
        units and dtype (float32 for float16 maps). A batch (``"batch"``) or image (``"image"``) with
        no range at all gets an empty mask and the threshold ``s_max``.
    """
    _check_options(sample_rate, min_interval_len, erode, kernel_size, range)
    t, shape, is_torch = _as_batch(maps)
    batch = check_maps(t)
    a = batch.tensor
    per_image = range == "image"
    scores, counts, constant, (s_min, score_range, s_max) = _sweep(
        a, sample_rate=sample_rate, erode=bool(erode), kernel_size=kernel_size, per_image=per_image,
        backend=persistence_backend, num_threads=num_threads,
    )  # fmt: skip
    thresholds = torch.empty(a.shape[0], dtype=a.dtype, device=a.device)
    for b in np.flatnonzero(~constant):
        score, _ = stable_threshold(counts[b].tolist(), min_interval_len=min_interval_len, sample_rate=sample_rate)
        lo, span = (s_min[b], score_range[b]) if per_image else (s_min, score_range)
        thresholds[b] = score / 255.0 * span + lo  # anomalib's expression on 0-dim tensors: its rounding
    if constant.any():
        idx = torch.as_tensor(np.flatnonzero(constant), device=a.device)
        thresholds[idx] = s_max[idx] if per_image else s_max
    masks = a > thresholds.reshape(-1, 1, 1)
    if constant.any():
        masks[torch.as_tensor(constant, device=a.device)] = False
    masks = masks.reshape(shape)
    if len(shape) == 2:
        thresholds = thresholds[0]
    if not is_torch:
        return masks.cpu().numpy(), thresholds.cpu().numpy()
    return masks, thresholds
