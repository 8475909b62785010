"""The head: test-time training of one small MLP per image on its pseudo-label (SPEC 5), batched.

For ``B`` images at once: the heads' parameters are stacked (``[B, in, out]``) and applied with
batched matrix products, Adam runs on the stacks (it is elementwise, so this is Adam on each head),
and each epoch is one forward and one backward pass over all pixels of all images:

* embeddings ``e = W3 gelu(W2 gelu(W1 x + b1) + b2) + b3`` of every pixel, once per epoch (the
  released code evaluates the head again on both pixels of every pair: ``4P`` extra rows);
* when the features come at the backbone's resolution ``h x w < H x W``, the first layer runs
  there and its output is resized instead: a linear map commutes with bilinear interpolation
  (whose weights sum to one), so this is the same function, computed on ``h w`` rows instead of
  ``H W``;
* contrastive loss: pairs drawn once per image (:func:`topoot_gpu.core.random.pair_partners`), each
  epoch's batches of ``pair_batch`` shuffled pairs reduce to a weight per pair (``1 / (n_batches *
  size of its batch)``), so ``L = sum_k w_k l_k`` without a loop over batches;
* OT-consistency loss: normalised embeddings against the two class prototypes, 200 plain
  Sinkhorn iterations on ``[P, 2]`` with the gradient through every iteration. Only ``v_t`` (two
  numbers per iteration) is kept and ``u_t`` is recomputed on the way back, instead of 200
  autograd nodes of size ``P``.

This module checks the arguments once and dispatches through the backend table to one module per
backend with a function ``train_heads(features, labels, *, config, seed, num_threads)`` for the
images whose label is not constant: ``_cpp``, ``_torch`` and ``_triton`` run the batched training
of :mod:`topoot_gpu.head.training` with their own loss (one C++ call for both losses and their
gradient; torch operations on any device; those with the Sinkhorn loop fused in Triton);
``reference`` is the released head, :func:`topoot_gpu.head.reference.train_released_head`, image
by image.

The draws (initial weights, partners, shuffles) are counter-based hashes of the seed
(:mod:`topoot_gpu.core.random`), the same in the reference, on every device and for every batch
composition: a head trained in a batch gives the mask it gives alone.
"""

from __future__ import annotations

import torch

from ..core import backends
from ..core.allocator import gib, memory_budget
from ..core.validation import check_config, check_features, check_seed, check_threads
from .config import HeadConfig

KERNEL = "train_heads"


def train_heads(
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    config: HeadConfig | None = None,
    seed: int = 0,
    backend: str = "auto",
    num_threads: int | None = None,
) -> torch.Tensor:
    """Masks of ``B`` images from their pseudo-labels, one freshly trained head each (SPEC 5).

    Args:
        features: ``[B, C, h, w]`` float32/float64 per-pixel features; ``h x w`` other than the
            labels' ``H x W`` is resized bilinearly (``align_corners=False``), as the released code
            resizes backbone features.
        labels: bool ``[B, H, W]`` pseudo-labels on the features' device.
        config: a :class:`HeadConfig`.
        seed: a non-negative int; the same seed gives the same heads, alone or in any batch.
        backend: ``"auto"`` (``"cpp"`` for CPU tensors, ``"torch"`` for CUDA tensors), ``"cpp"`` (both
            losses and their gradient in one C++ call per step; host tensors), ``"torch"`` (torch
            ops only, any device), ``"triton"`` (the ``"torch"`` losses with the OT loss's Sinkhorn
            iterations and their gradient fused into one Triton launch each way; CUDA tensors, or
            CPU tensors under ``TRITON_INTERPRET=1``), ``"reference"`` (the released head,
            :func:`topoot_gpu.head.reference.train_released_head`, image by image; host tensors).
            A backend that does not take the features' device raises a ``ValueError``.
        num_threads: threads of the C++ kernels (default: all cores).

    Returns:
        bool ``[B, H, W]`` masks: ``|e - proto_fg| < |e - proto_bg|`` after training; an image
        whose pseudo-label is constant gets it back untrained.
    """
    config = check_config(config, HeadConfig)
    backend = backends.check_backend(KERNEL, backend)
    seed = check_seed(seed)
    threads = check_threads(num_threads)
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.bool or labels.dim() != 3:
        got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels: expected a bool [B, H, W] tensor, got {got}")
    if 0 in labels.shape[1:]:
        raise ValueError(f"labels: empty dimension in shape {tuple(labels.shape)}")
    backends.resolve(KERNEL, backend, labels.device)  # a backend/device mismatch first, before any data check
    features = check_features(features, batch=labels.shape[0], device=labels.device)
    check_precision(config, backend, features.dtype)
    return train(features, labels, config=config, seed=seed, backend=backend, num_threads=threads)


def check_precision(config: HeadConfig, backend: str, dtype: torch.dtype) -> None:
    """A ``ValueError`` (naming ``precision``) where :attr:`HeadConfig.precision` cannot apply."""
    if config.precision == "fp32":
        return
    if backend == "reference":
        raise ValueError(f"precision: {config.precision!r} is not taken by the reference head (the released one)")
    if dtype != torch.float32:
        raise ValueError(f"precision: {config.precision!r} needs float32 features, got {dtype}")


def train(
    features: torch.Tensor, labels: torch.Tensor, *, config: HeadConfig, seed: int, backend: str, num_threads: int
) -> torch.Tensor:
    """:func:`train_heads` of validated inputs."""
    # Every backend "auto" picks here takes the features' device (core.backends): nothing moves.
    name, _ = backends.resolve(KERNEL, backend, features.device)
    masks = labels.clone()
    B, H, W = labels.shape
    n_fg = labels.reshape(B, H * W).sum(1)
    trained = torch.nonzero((n_fg > 0) & (n_fg < H * W)).flatten()
    if len(trained) == 0:
        return masks
    module = backends.load(KERNEL, name)
    per_image = bytes_per_image(name, config, features.shape[1], H * W, features.element_size())
    size = sub_batch_size(per_image, H * W, features.shape[1], config, features.device)
    if features.device.type == "cpu" and config.precision == "fp32":
        parts = thread_balanced(trained, size, torch.get_num_threads())
    else:
        parts = list(torch.split(trained, size))
    results = []
    with torch.inference_mode(False), torch.enable_grad():
        # Inputs made under inference_mode cannot be saved for backward: work on copies.
        for part in parts:
            x = features.index_select(0, part).clone()
            y = labels.index_select(0, part).clone()
            results.append(module.train_heads(x, y, config=config, seed=seed, num_threads=num_threads))
    for part, trained_masks in zip(parts, results):
        masks[part] = trained_masks.to(masks.device)
    return masks


#: Per pixel, how many hidden-width and embedding-width rows a backend's training holds at its peak
#: (activations, their gradients, the losses' temporaries), measured on 512 x 512 images: the C++
#: loss about 3.6 kB per pixel at C = 8, torch operations about 8 kB.
ROWS_PER_PIXEL = {"cpp": 6, "torch": 12, "triton": 12, "reference": 12}


def bytes_per_image(backend: str, config: HeadConfig, channels: int, pixels: int, itemsize: int) -> int:
    """An estimate of what training one image of ``pixels`` pixels holds at its peak."""
    rows = ROWS_PER_PIXEL[backend] * (config.hidden(channels) + config.embed_dim) + channels
    return pixels * itemsize * rows


def sub_batch_size(per: int, pixels: int, channels: int, config: HeadConfig, device: torch.device) -> int:
    """Images of ``per`` bytes each that fit ``config.max_memory`` together (a head's mask does not
    depend on its batch), or a ``ValueError`` when one image alone does not."""
    budget = memory_budget(config.max_memory, device)
    if per > budget:
        raise ValueError(
            f"max_memory: training the head on one image of {pixels} pixels and {channels} channels needs about "
            f"{gib(per)}, above the budget of {gib(budget)}; raise HeadConfig.max_memory if the machine has "
            "it, or pass smaller maps"
        )
    return max(1, budget // per)


def thread_balanced(images: torch.Tensor, size: int, threads: int) -> list[torch.Tensor]:
    """``images`` in sub-batches of at most ``size`` whose lengths are multiples of ``threads``, and
    what is left one image at a time.

    torch's float32 and float64 batched products on the CPU go to MKL's batched gemm, which gives
    each thread whole matrices: a batch of three images on two threads took as long as four
    (the head at C = 1536 on a 2-core EPYC: 12.1-12.5 s an image against 9.1-9.4 for two, and
    8.8-10.0 for the three as two and one). One image's products are split inside instead."""
    k = size // threads * threads
    parts: list[torch.Tensor] = []
    start = 0
    if k:
        whole = len(images) // k * k
        tail = (len(images) - whole) // threads * threads
        parts = [images[i : i + k] for i in range(0, whole, k)]
        if tail:
            parts.append(images[whole : whole + tail])
        start = whole + tail
    return parts + [images[i : i + 1] for i in range(start, len(images))]
