"""MEBin's sweep grid and its rule for the stable interval, shared by the fast path and the reference.

MEBin (Main Element Binarization, AnomalyNCD, CVPR 2025; as anomalib 2.x implements it in
``anomalib.post_processing.mebin``) maps each anomaly map into ``[0, 255]``, sweeps the scores
``255, 255 - r, 255 - 2r, ... >= 0`` (``r = sample_rate``), counts the connected components of
each binarised (and eroded) map, and keeps the score at the *end* of a longest run of a constant,
non-zero count. This module holds the parts that are plain bookkeeping on the count sequence.
"""

from __future__ import annotations

from collections.abc import Sequence

#: The score a map is binarised at when no run qualifies: nothing is above it (a map with no anomaly).
NO_INTERVAL = 255


def sweep_scores(sample_rate: int) -> list[int]:
    """The scores of the sweep in its order: ``255, 255 - sample_rate, ...``, down to ``>= 0``."""
    return list(range(255, -1, -sample_rate))


def stable_threshold(counts: Sequence[int], *, min_interval_len: int, sample_rate: int) -> tuple[int, int]:
    """``(score, count)``: MEBin's choice from the count sequence of one map (sweep order).

    A run is a maximal stretch of equal, non-zero counts; it qualifies with at least
    ``min_interval_len`` entries. Among the counts that own a qualifying run, the one whose longest
    run is the longest wins; on a tie, the count whose first qualifying run comes first in the sweep
    (anomalib keeps the counts in the order they first qualify and takes the first maximum). Of the
    winner's runs the first longest one is taken, and the score is that at its *last* index,
    ``max(255 - end * sample_rate, 0)``. No qualifying run gives ``(255, 0)``.
    """
    runs: list[tuple[int, int, int]] = []  # (count, start, end) of each qualifying run, in sweep order
    start = 0
    for i in range(1, len(counts) + 1):
        if i == len(counts) or counts[i] != counts[start]:
            if counts[start] != 0 and i - start >= min_interval_len:
                runs.append((counts[start], start, i - 1))
            start = i
    if not runs:
        return NO_INTERVAL, 0
    longest: dict[int, tuple[int, int]] = {}  # count -> (length, end) of its first longest run
    for count, s, e in runs:  # dict order = order in which each count first qualifies
        if count not in longest or e - s + 1 > longest[count][0]:
            longest[count] = (e - s + 1, e)
    best = max(longest, key=lambda c: longest[c][0])  # max keeps the first of equal lengths
    return max(255 - longest[best][1] * sample_rate, 0), best
