"""The released head (SPEC 5) as the released code trains it: one image, pairs built pixel by pixel,
a DataLoader over the stored pairs, the head evaluated again on both pixels of every pair, 200
Sinkhorn iterations under autograd. The ground truth the batched head is checked and timed against
(SPEC 6). Plain PyTorch on the CPU; imports no fast path.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..core import random
from .config import HeadConfig


class _EpochShuffle:
    """The pair order of each epoch (a DataLoader sampler): a new shuffle every time it is iterated."""

    def __init__(self, seed: int, n: int):
        self.seed, self.n, self.epoch = seed, n, 0

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        order = random.epoch_order(self.seed, self.epoch, self.n, "cpu")
        self.epoch += 1
        return iter(order.tolist())


def _head_module(channels: int, seed: int, config: HeadConfig, dtype: torch.dtype) -> torch.nn.Sequential:
    hid = config.hidden(channels)
    head = torch.nn.Sequential(
        torch.nn.Linear(channels, hid),
        torch.nn.GELU(),
        torch.nn.Linear(hid, hid),
        torch.nn.GELU(),
        torch.nn.Linear(hid, config.embed_dim),
    ).to(dtype)
    init = random.head_parameters(seed, channels, hid, config.embed_dim, dtype, "cpu")
    with torch.no_grad():
        for layer, (w, b) in zip((head[0], head[2], head[4]), zip(init[::2], init[1::2])):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    return head


def ot_consistency_loss(e: torch.Tensor, y: torch.Tensor, config: HeadConfig) -> torch.Tensor:
    """SPEC 5's OT-consistency loss of one image: embeddings ``e [P, E]``, pseudo-label ``y [P]``
    in {0, 1}; 200 plain Sinkhorn iterations written out, autograd through all of them."""
    P = e.shape[0]
    eps = config.ot_eps
    n = F.normalize(e, dim=1)
    proto_bg = F.normalize(n[y == 0].mean(0), dim=0)
    proto_fg = F.normalize(n[y == 1].mean(0), dim=0)
    cos = n @ torch.stack([proto_bg, proto_fg], 1)  # [P, 2]
    m_prot = (cos.clamp(-1, 1) + 1) * 0.5
    m_cls = torch.stack([1 - y, y], 1)
    K = torch.exp(-(1 - cos).clamp_min(0) / config.ot_reg).clamp_min(eps)
    u = torch.full((P, 1), 1.0 / P, dtype=e.dtype)
    v = torch.full((2, 1), 0.5, dtype=e.dtype)
    for _ in range(config.ot_iter):
        u = (1.0 / P) / (K @ v + eps)
        v = 0.5 / (K.t() @ u + eps)
    plan = u * K * v.t()
    g = plan / (plan.sum(1, keepdim=True) + eps)
    entropy = -(g * g.clamp_min(eps).log()).sum(1, keepdim=True)
    w = (1 - entropy / np.log(config.entropy_base)).clamp_min(0) * g
    return (w * (m_prot - m_cls).abs()).sum() / (2 * P + eps)


def train_released_head(features, label, seed: int = 0, config: HeadConfig | None = None) -> np.ndarray:
    """The released head on one image (SPEC 5), in plain PyTorch on the CPU.

    Args:
        features: ``[C, h, w]`` (torch or numpy, float32/float64), resized bilinearly
            (``align_corners=False``) to the label's size when it differs.
        label: ``[H, W]`` bool pseudo-label.
        seed: the draws of :mod:`topoot_gpu.core.random` (initial weights, partners, shuffles).
        config: a :class:`topoot_gpu.HeadConfig`.

    Returns:
        The bool ``[H, W]`` mask; a constant label is returned untrained.
    """
    config = HeadConfig() if config is None else config
    label = np.asarray(torch.as_tensor(label).cpu(), dtype=bool)
    if label.all() or not label.any():
        return label.copy()
    f = torch.as_tensor(features).detach().cpu()
    H, W = label.shape
    if f.shape[1:] != (H, W):
        f = F.interpolate(f[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    feats = f.permute(1, 2, 0).reshape(H * W, -1).contiguous()
    y = torch.from_numpy(label.reshape(-1).astype(np.float64)).to(feats.dtype)
    P = H * W

    # Pairs, pixel by pixel: one partner of the same label, one of the other (SPEC 5).
    members = [np.flatnonzero(label.reshape(-1) == c).tolist() for c in (0, 1)]
    u_same = random.random_u32(seed, random.SAME_PARTNER, P).tolist()
    u_other = random.random_u32(seed, random.OTHER_PARTNER, P).tolist()
    first, second, pair_label = [], [], []
    for i in range(P):
        own = int(label.flat[i])
        same, other = members[own], members[1 - own]
        j = same[(u_same[i] * len(same)) >> 32]
        k = other[(u_other[i] * len(other)) >> 32]
        first += [feats[i], feats[i]]
        second += [feats[j], feats[k]]
        pair_label += [0.0, 1.0]
    pairs = torch.utils.data.TensorDataset(
        torch.stack(first), torch.stack(second), torch.tensor(pair_label, dtype=feats.dtype)
    )
    loader = torch.utils.data.DataLoader(pairs, batch_size=config.pair_batch, sampler=_EpochShuffle(seed, 2 * P))

    head = _head_module(feats.shape[1], seed, config, feats.dtype)
    opt = torch.optim.Adam(head.parameters(), lr=config.lr)
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(config.epochs):
            opt.zero_grad()
            (config.ot_weight * ot_consistency_loss(head(feats), y, config)).backward()
            n_batches = len(loader)
            for x1, x2, t in loader:
                d = F.pairwise_distance(head(x1), head(x2), eps=config.pair_eps)
                loss = torch.mean((1 - t) * d.pow(2) + t * torch.clamp(config.margin - d, min=0).pow(2))
                (config.contrastive_weight / n_batches * loss).backward()
            opt.step()
        with torch.no_grad():
            e = head(feats)
            protos = [F.normalize(e[y == c].mean(0), dim=0) for c in (0, 1)]
            mask = torch.linalg.vector_norm(e - protos[1], dim=1) < torch.linalg.vector_norm(e - protos[0], dim=1)
    return mask.reshape(H, W).numpy()


def train_heads(
    features: torch.Tensor, labels: torch.Tensor, *, config: HeadConfig, seed: int, num_threads: int
) -> torch.Tensor:
    """The backend's entry (:func:`topoot_gpu.head.api.train_heads`): :func:`train_released_head` on
    each image of a host batch (non-constant labels), the masks as a bool ``[B, H, W]`` tensor
    (``num_threads`` is torch's own setting)."""
    masks = [train_released_head(f, y, seed=seed, config=config) for f, y in zip(features, labels)]
    return torch.from_numpy(np.stack(masks))
