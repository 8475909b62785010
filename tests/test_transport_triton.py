"""The fused Triton Sinkhorn kernel against the torch backend and POT.

Without a GPU it runs under Triton's interpreter (``TRITON_INTERPRET=1``, set in conftest.py before the
kernel module is imported), so its logic is tested on every CI run.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

if os.environ.get("CI"):
    import triton  # noqa: F401  (CI installs it: a missing triton must fail, not skip)
else:
    pytest.importorskip("triton")
ot = pytest.importorskip("ot")

from topoot_gpu import sinkhorn  # noqa: E402
from topoot_gpu.testing import pad_problems as pad_batch  # noqa: E402
from topoot_gpu.testing import transport_problem as random_problem  # noqa: E402

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


def test_triton_refuses_what_it_cannot_hold_instead_of_substituting(rng):
    # Above 256 points a side the problem does not fit on chip: an error, never another backend.
    a, b, M = (x.to(DEVICE) for x in pad_batch([random_problem(rng, 257, 3)]))
    with pytest.raises(ValueError, match="M: backend 'triton' solves problems up to 256"):
        sinkhorn(a, b, M, reg=0.3, backend="triton")
    with pytest.raises(ValueError, match="domain: backend 'triton' runs"):
        sinkhorn(a[:, :3], b, M[:, :3], reg=0.3, domain="scaling", backend="triton")


def test_triton_best_stability_matches_the_cpp_backend(rng):
    from topoot_gpu import best_stability

    sizes_p, sizes_q = [3, 0, 17, 1], [5, 4, 9, 1]
    P = np.sort(rng.random((sum(sizes_p), 2)), 1)
    Q = np.sort(rng.random((sum(sizes_q), 2)), 1)
    for cost in ("normalized", "diagonal"):
        kw = dict(cost=cost, reg=0.3, max_iter=2000)
        cpp = best_stability(P, sizes_p, Q, sizes_q, backend="cpp", **kw)
        tri = best_stability(
            torch.from_numpy(P).to(DEVICE), torch.tensor(sizes_p, device=DEVICE), torch.from_numpy(Q).to(DEVICE),
            torch.tensor(sizes_q, device=DEVICE), backend="triton", **kw,
        )  # fmt: skip
        for name in ("s_row", "c_row", "s_col", "c_col"):
            torch.testing.assert_close(getattr(tri, name).cpu(), getattr(cpp, name), rtol=0, atol=1e-12)
        assert torch.equal(tri.n_iter.cpu(), cpp.n_iter)
