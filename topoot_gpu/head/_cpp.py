"""The ``"cpp"`` backend of the head's loss: both losses and their gradient in one C++ call
(``csrc/cpu/head_cpu.cpp``) on host tensors, the same maths as :mod:`topoot_gpu.head._torch`."""

from __future__ import annotations

import torch

from .. import _C
from ..core import backends
from .config import HeadConfig
from .training import trainer


def head_loss(
    e: torch.Tensor, y: torch.Tensor, partner: torch.Tensor, weight: torch.Tensor, config: HeadConfig, num_threads: int
) -> torch.Tensor:
    """The backend's entry (:func:`topoot_gpu.head.api.train_heads`): ``ot_weight * L_OT +
    L_contrastive`` per image, ``[B]``, differentiable in ``e [B, P, E]``."""
    return _HeadLoss.apply(e, y, partner, weight, config, num_threads)


class _HeadLoss(torch.autograd.Function):
    """``ot_weight * L_OT + L_contrastive`` per image in one C++ call (CPU tensors): both losses
    (``ot_consistency`` and ``_Contrastive`` of :mod:`._torch` are the same maths in torch ops) and
    the gradient of their sum, computed with them into one buffer and handed back as it is when
    the incoming gradient is all ones (the training loop's ``loss.sum().backward()``)."""

    @staticmethod
    def forward(ctx, e, y, partner, weight, config: HeadConfig, threads: int):
        e = e.detach().contiguous()
        fn = getattr(_C, backends.entry("train_heads", "cpp", e.dtype))
        loss_ot, loss_con, grad = fn(
            e.numpy(),
            y.to(torch.uint8).numpy(),
            partner.numpy(),
            weight.contiguous().numpy(),
            config.ot_reg,
            config.ot_iter,
            config.ot_eps,
            config.entropy_base,
            config.ot_weight,
            config.margin,
            config.pair_eps,
            threads,
        )
        ctx.save_for_backward(torch.from_numpy(grad))
        return torch.from_numpy(config.ot_weight * loss_ot + loss_con).to(e.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        (grad,) = ctx.saved_tensors
        if not bool((grad_loss == 1).all()):
            grad = grad_loss[:, None, None] * grad
        return grad, None, None, None, None, None


#: The backend's entry (:func:`topoot_gpu.head.api.train_heads`): the batched training with this loss.
train_heads = trainer(head_loss)
