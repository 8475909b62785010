"""The head's configuration (SPEC 5): every default is a field, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class HeadConfig:
    """How the per-image head is trained. Defaults are the released implementation's (SPEC 5).

    Attributes:
        embed_dim: the embedding size ``E`` (the head is ``C -> hid -> hid -> E`` with
            ``hid = (C + E) // 2`` and GELU after the first two layers).
        epochs: optimiser steps, one per epoch, on the whole image.
        lr: Adam's learning rate (other Adam settings: PyTorch's defaults).
        pair_batch: pairs per contrastive batch; the loss is the mean over batches of each
            batch's mean.
        margin: the contrastive margin: different-label pairs cost ``max(0, margin - d)^2``.
        pair_eps: added to ``e_i - e_j`` before the norm (``torch.nn.functional.pairwise_distance``).
        ot_reg, ot_iter: the OT-consistency loss's plain Sinkhorn: ``exp(-cost / ot_reg)``, this
            many iterations (gradients flow through all of them).
        ot_eps: the kernel's floor, and what is added to every Sinkhorn denominator, to the row
            normalisation of the plan and inside the entropy's log.
        entropy_base: the confidence weight is ``clamp(1 - H(g) / ln(entropy_base), 0)`` (3 in
            the released code, although the plan has two columns).
        ot_weight, contrastive_weight: the loss is ``ot_weight * L_OT + contrastive_weight *
            L_contrastive``.
    """

    embed_dim: int = 128
    epochs: int = 5
    lr: float = 1e-3
    pair_batch: int = 512
    margin: float = 0.4
    pair_eps: float = 1e-6
    ot_reg: float = 0.05
    ot_iter: int = 200
    ot_eps: float = 1e-9
    entropy_base: float = 3.0
    ot_weight: float = 0.5
    contrastive_weight: float = 0.5

    def __post_init__(self) -> None:
        for name in ("embed_dim", "epochs", "pair_batch", "ot_iter"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        positive = ("lr", "margin", "ot_reg")
        non_negative = ("pair_eps", "ot_eps", "ot_weight", "contrastive_weight")
        for name in positive + non_negative + ("entropy_base",):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name}: expected a finite number, got {v!r}")
            if name in positive and v <= 0:
                raise ValueError(f"{name}: expected > 0, got {v!r}")
            if name in non_negative and v < 0:
                raise ValueError(f"{name}: expected >= 0, got {v!r}")
        if self.entropy_base <= 1:
            raise ValueError(f"entropy_base: expected > 1, got {self.entropy_base!r}")

    def hidden(self, channels: int) -> int:
        return (channels + self.embed_dim) // 2
