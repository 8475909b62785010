"""Counter-based random numbers for the head: the same draws on every device, batched or not.

The head's randomness (initial weights, pair partners, per-epoch shuffles) must be identical in
the reference (one image, plain PyTorch), in the batched fast path and on CUDA, for a given seed.
A device's own generator cannot promise that, so every draw is a hash of ``(seed, stream,
counter)``: ``lowbias32`` (an integer mixing function published by Chris Wellons, "Prospecting for
hash functions", 2018) applied twice. It is written with int64 tensor operations only, each
product kept below 2**63 (32-bit products are split in 16-bit halves), so it gives the same bits
on every backend and in plain Python.
"""

from __future__ import annotations

import torch

M32 = 0xFFFFFFFF
_C1, _C2 = 0x7FEB352D, 0x846CA68B

#: Streams of one image's draws (an epoch's shuffle uses SHUFFLE + epoch).
W1, B1, W2, B2, W3, B3, SAME_PARTNER, OTHER_PARTNER, SHUFFLE = range(9)


def _mul32_int(x: int, c: int) -> int:
    return (x * c) & M32


def _mix_int(x: int) -> int:
    x ^= x >> 16
    x = _mul32_int(x, _C1)
    x ^= x >> 15
    x = _mul32_int(x, _C2)
    return x ^ (x >> 16)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for int64 ``x`` in ``[0, 2**32)`` without overflowing int64."""
    return ((((x >> 16) * c) & 0xFFFF) << 16) + (x & 0xFFFF) * c & M32


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, _C1)
    x = x ^ (x >> 15)
    x = _mul32(x, _C2)
    return x ^ (x >> 16)


def stream_key(seed: int, stream: int) -> int:
    """The 32-bit key of one stream of draws."""
    return _mix_int(_mix_int(_mix_int(seed & M32) ^ ((seed >> 32) & M32)) ^ (stream & M32))


def random_u32(seed: int, stream: int, n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``n`` uniform 32-bit integers (int64 tensor) of stream ``stream`` under ``seed``."""
    key = stream_key(seed, stream)
    x = (torch.arange(n, dtype=torch.int64, device=device) + key) & M32
    return _mix(_mix(x) ^ key)


def uniform_index(bits: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
    """``floor(u * n)`` for ``u = bits / 2**32``: uniform in ``[0, n)`` (n < 2**31), exact."""
    return (bits * n) >> 32


def uniform(seed: int, stream: int, n: int, low: float, high: float, dtype: torch.dtype, device) -> torch.Tensor:
    """``n`` values uniform in ``[low, high)``, computed in float64 then cast."""
    u = random_u32(seed, stream, n, device).to(torch.float64) * 2.0**-32
    return (low + (high - low) * u).to(dtype)


def head_parameters(
    seed: int, channels: int, hidden: int, embed: int, dtype: torch.dtype, device
) -> list[torch.Tensor]:
    """Initial ``[W1, b1, W2, b2, W3, b3]`` in ``torch.nn.Linear``'s layout (weight ``[out, in]``)
    and distribution (weight and bias uniform in ``+-1/sqrt(in)``)."""
    shapes = [(hidden, channels), (hidden,), (hidden, hidden), (hidden,), (embed, hidden), (embed,)]
    fan_in = [channels, channels, hidden, hidden, hidden, hidden]
    out = []
    for stream, (shape, n_in) in enumerate(zip(shapes, fan_in)):
        bound = 1.0 / n_in**0.5
        n = 1
        for s in shape:
            n *= s
        out.append(uniform(seed, stream, n, -bound, bound, dtype, device).reshape(shape))
    return out


def pair_partners(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's same-label and other-label partner (flat indices), drawn uniformly among the
    pixels of that label (SPEC 5). ``labels``: bool ``[B, P]`` with both labels in every row.

    A label's pixels are taken in increasing index order, and partner ``floor(u * count)`` of them,
    ``u`` the pixel's draw of stream SAME_PARTNER or OTHER_PARTNER.
    """
    B, P = labels.shape
    order = torch.argsort(labels.to(torch.uint8), dim=1, stable=True)  # background, then foreground
    n_fg = labels.sum(1, keepdim=True)
    n_bg = P - n_fg
    u_same = random_u32(seed, SAME_PARTNER, P, labels.device)
    u_other = random_u32(seed, OTHER_PARTNER, P, labels.device)
    same = torch.where(labels, n_bg + uniform_index(u_same, n_fg), uniform_index(u_same, n_bg))
    other = torch.where(labels, uniform_index(u_other, n_bg), n_bg + uniform_index(u_other, n_fg))
    return order.gather(1, same), order.gather(1, other)


def epoch_order(seed: int, epoch: int, n: int, device) -> torch.Tensor:
    """The order in which an epoch visits the ``n`` pairs (a uniform shuffle)."""
    return torch.argsort(random_u32(seed, SHUFFLE + epoch, n, device), stable=True)
