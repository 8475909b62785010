"""The head's configuration (SPEC 5): every default is a field, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from ..core.validation import check_choice, check_int, check_number

#: The head's matrix-product precisions (:attr:`HeadConfig.precision`).
PRECISIONS = ("fp32", "bf16")


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
        max_memory: bytes the batched training may allocate (``None``: half of the device's
            memory, :func:`topoot_gpu.core.allocator.memory_budget`). Not part of the SPEC: the
            images are trained in as many sub-batches as needed (:func:`topoot_gpu.head.api.bytes_per_image`; a head
            gives the same mask in any batch), and one image that alone needs more raises a
            ``ValueError`` saying how much. On the CPU in ``"fp32"`` the sub-batches' lengths are
            multiples of torch's thread count, and what is left goes one image at a time
            (:func:`topoot_gpu.head.api.thread_balanced`).
        precision: the MLP's matrix products: ``"fp32"`` (default: in the features' dtype,
            exactly the SPEC's head) or ``"bf16"`` (bfloat16 products with float32 accumulation
            through ``torch.autocast``, on float32 features; the weights, Adam and both losses stay in
            float32). Not part of the SPEC: faster where the hardware multiplies bfloat16 natively
            (CPUs with AVX-512 BF16 or AMX through oneDNN, recent GPUs), and the masks agree with
            ``"fp32"``'s on at least 99.5% of the pixels of the head's parity suite (measured:
            ``tests/test_head.py``, README "Refine"), not bit for bit. Not taken by the
            ``"reference"`` backend, which is the released head as it is. TF32 is not offered until
            its agreement has been measured on a GPU.
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
    max_memory: int | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        # Numbers (numpy scalars too) are stored as Python ints and floats.
        for name in ("embed_dim", "epochs", "pair_batch", "ot_iter"):
            object.__setattr__(self, name, check_int(name, getattr(self, name), minimum=1))
        for name in ("lr", "margin", "ot_reg"):
            object.__setattr__(self, name, check_number(name, getattr(self, name), minimum=0, strict=True))
        for name in ("pair_eps", "ot_eps", "ot_weight", "contrastive_weight"):
            object.__setattr__(self, name, check_number(name, getattr(self, name), minimum=0))
        base = check_number("entropy_base", self.entropy_base, minimum=1, strict=True)
        object.__setattr__(self, "entropy_base", base)
        check_choice("precision", self.precision, PRECISIONS)
        if self.max_memory is not None:
            object.__setattr__(self, "max_memory", check_int("max_memory", self.max_memory, minimum=1))

    def hidden(self, channels: int) -> int:
        return (channels + self.embed_dim) // 2
