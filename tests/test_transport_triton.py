"""The fused Triton Sinkhorn kernel against the torch backend and POT.

Without a GPU it runs under Triton's interpreter (``TRITON_INTERPRET=1``, set here before the
kernel module is imported), so its logic is tested on every CI run.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("CI"):
    import triton  # noqa: F401  (CI installs it: a missing triton must fail, not skip)
else:
    pytest.importorskip("triton")
ot = pytest.importorskip("ot")

from test_transport import pad_batch, random_problem  # noqa: E402

from topoot_gpu import sinkhorn  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_matches_torch_and_pot(rng, dtype):
    problems = [random_problem(rng, n, m, cost="diagram") for n, m in [(1, 1), (3, 5), (17, 9), (32, 32)]]
    a, b, M = (x.to(DEVICE) for x in pad_batch(problems, dtype=dtype))
    stop = 1e-9 if dtype == torch.float64 else 1e-6
    tri = sinkhorn(a, b, M, reg=0.05, max_iter=3000, stop_thr=stop, backend="triton")
    ref = sinkhorn(a, b, M, reg=0.05, max_iter=3000, stop_thr=stop, domain="log", backend="torch")
    assert not torch.isnan(tri.plan).any(), "an output entry was not written"
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert torch.allclose(tri.plan, ref.plan, rtol=0, atol=tol)
    if dtype == torch.float64:
        assert torch.equal(tri.n_iter.cpu(), ref.n_iter.cpu())
        for k, (ak, bk, Mk) in enumerate(problems):
            G, log = ot.sinkhorn(ak, bk, Mk, 0.05, method="sinkhorn_log", numItermax=3000, stopThr=1e-9, log=True)
            n, m = G.shape
            assert np.abs(tri.plan[k, :n, :m].cpu().numpy() - G).max() <= 1e-9
            assert int(tri.n_iter[k]) == log["niter"]


def test_triton_padding_and_empty_problems(rng):
    a, b, M = pad_batch([random_problem(rng, 5, 6)], pad_to=(9, 7))
    a = torch.cat([a, torch.zeros_like(a)]).to(DEVICE)
    b = torch.cat([b, b]).to(DEVICE)
    M = torch.cat([M, M]).to(DEVICE)
    tri = sinkhorn(a, b, M, reg=0.1, backend="triton")
    assert not torch.isnan(tri.plan).any()
    assert torch.all(tri.plan[1] == 0) and torch.all(tri.plan[0, 5:] == 0) and torch.all(tri.plan[0, :, 6:] == 0)
    alone = sinkhorn(
        *(x.to(DEVICE) for x in pad_batch([random_problem(np.random.default_rng(0), 1, 1)])), reg=0.1, backend="triton"
    )
    assert alone.plan.sum().item() == pytest.approx(1.0)
