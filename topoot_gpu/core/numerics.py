"""Elementwise operations whose bits the stages rely on, the same on every device."""

from __future__ import annotations

import numpy as np
import torch


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded square root of a floating tensor (IEEE 754), on its device.

    torch's CPU kernel goes through MKL's vector math: its float64 results were 1 ulp off on about
    0.6% of entries, and on an OpenMP worker's share of the first such call in a process, at times,
    about 1e-10 off (torch 2.13 on a 2-core Xeon, after scipy was loaded): the costs of one problem
    then differed between two calls. numpy's square root is IEEE's; on other devices torch's is
    correctly rounded (CUDA's default). Tensors that require grad, and dtypes numpy lacks, take
    torch's."""
    if x.device.type != "cpu" or x.requires_grad or x.dtype not in (torch.float32, torch.float64):
        return torch.sqrt(x)
    return torch.from_numpy(np.asarray(np.sqrt(x.numpy())))  # a 0-d input gives a numpy scalar
