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
# On a GPU these are the compiled Triton kernels' tests, so `pytest -m cuda` runs them there.
pytestmark = [pytest.mark.cuda] if torch.cuda.is_available() else []


@pytest.mark.parametrize("reg", [0.05, 0.3, 0.03])  # 0.3 and 0.03: reciprocals not exact in fp32
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_matches_torch_and_pot(rng, dtype, reg):
    problems = [random_problem(rng, n, m, cost="diagram") for n, m in [(1, 1), (3, 5), (17, 9), (32, 32)]]
    a, b, M = (x.to(DEVICE) for x in pad_batch(problems, dtype=dtype))
    stop = 1e-9 if dtype == torch.float64 else 1e-6
    tri = sinkhorn(a, b, M, reg=reg, max_iter=3000, stop_thr=stop, backend="triton")
    ref = sinkhorn(a, b, M, reg=reg, max_iter=3000, stop_thr=stop, domain="log", backend="torch")
    assert not torch.isnan(tri.plan).any(), "an output entry was not written"
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert torch.allclose(tri.plan, ref.plan, rtol=0, atol=tol)
    if dtype == torch.float64:
        assert torch.equal(tri.n_iter.cpu(), ref.n_iter.cpu())
        for k, (ak, bk, Mk) in enumerate(problems):
            G, log = ot.sinkhorn(ak, bk, Mk, reg, method="sinkhorn_log", numItermax=3000, stopThr=1e-9, log=True)
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


def test_best_stability_tiles_compile_for_hopper():
    # The fused kernel holds M, the log kernel and S: up to 64 x 64 it must not spill either.
    from topoot_gpu.transport import _triton

    for block in (16, 32, 64, 128, 256):
        regs, stack, seconds = compile_best_stability(block)
        print(f"fp64 {block}x{block}: {regs} registers, {stack} bytes of stack, compiled in {seconds:.1f} s")
        assert seconds < COMPILE_SECONDS, f"{block}x{block} compiled in {seconds:.0f} s"
        if block <= _triton.REGISTER_TILE:
            assert stack == 0, f"{block}x{block}: {regs} registers, {stack} bytes of stack (spills)"


def test_fused_best_stability_equals_the_composed_one(rng):
    # One launch (no plan in memory) gives the iterates and matches of sinkhorn + stability + best_match.
    from topoot_gpu.transport import _triton
    from topoot_gpu.transport.padded import padded_best_stability

    sizes_p, sizes_q = [4, 0, 13, 2, 7], [6, 3, 0, 2, 9]
    P = torch.from_numpy(np.sort(rng.random((sum(sizes_p), 2)), 1)).to(DEVICE)
    Q = torch.from_numpy(np.sort(rng.random((sum(sizes_q), 2)), 1)).to(DEVICE)
    p_sizes, q_sizes = torch.tensor(sizes_p, device=DEVICE), torch.tensor(sizes_q, device=DEVICE)
    for cost in ("normalized", "diagonal"):
        kw = dict(cost=cost, reg=0.3, max_iter=3000, stop_thr=1e-9)
        fused = _triton.best_stability(P, p_sizes, Q, q_sizes, num_threads=1, **kw)
        composed = padded_best_stability(
            lambda a, b, M, domain: _triton.sinkhorn(
                a, b, M, reg=0.3, max_iter=3000, stop_thr=1e-9, domain=domain, num_threads=1
            ), P, p_sizes, Q, q_sizes, cost=cost, reg=0.3, domains=_triton.DOMAINS,
        )  # fmt: skip
        # To the bit: the composed stabilities take a correctly rounded square root (sqrt_rn; torch's
        # own on the CPU is not always), as the kernel does.
        for name in ("c_row", "c_col", "n_iter", "s_row", "s_col"):
            assert torch.equal(getattr(fused, name), getattr(composed, name)), (cost, name)
        # A point whose problem has no partner: (0, +inf).
        assert torch.all(fused.s_row[4:17] == 0) and torch.all(torch.isinf(fused.c_row[4:17]))


def test_real_parameters_reach_the_kernel_in_the_problems_dtype(rng, monkeypatch):
    # Triton passes Python floats as fp32 scalars (the interpreter keeps fp64, so no result here
    # could show it): every real-valued argument must come as a tensor of the problem's dtype.
    from topoot_gpu.transport import _triton

    seen = []
    kernel = _triton._sinkhorn_log_kernel

    class Spy:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(args)
                return kernel[grid](*args, **kwargs)

            return launch

    monkeypatch.setattr(_triton, "_sinkhorn_log_kernel", Spy())
    for dtype in (torch.float64, torch.float32):
        a, b, M = (x.to(DEVICE) for x in pad_batch([random_problem(rng, 4, 5)], dtype=dtype))
        sinkhorn(a, b, M, reg=0.3, stop_thr=1e-7, backend="triton")
        args = seen[-1]
        assert not [x for x in args if isinstance(x, float)], args
        params = [x for x in args if isinstance(x, torch.Tensor) and x.numel() == 2]
        assert len(params) == 1 and params[0].dtype == dtype
        assert params[0].tolist() == pytest.approx([0.3, 1e-7], rel=1e-7)


def compile_sinkhorn(dtype: str, block: int) -> tuple[int, int, float]:
    """The Sinkhorn kernel for a ``block x block`` tile, with the launcher's warps, for sm_90."""
    from topoot_gpu.testing import compile_for_hopper
    from topoot_gpu.transport import _triton

    pointers = ("M_ptr", "a_ptr", "b_ptr", "plan_ptr", "u_ptr", "v_ptr", "err_ptr", "params_ptr")
    sig = {k: f"*{dtype}" for k in pointers}
    sig |= {"niter_ptr": "*i64", "n": "i32", "m": "i32", "max_iter": "i32"}
    sig |= {"BLOCK_N": "constexpr", "BLOCK_M": "constexpr"}
    constexprs = {"BLOCK_N": block, "BLOCK_M": block}
    warps = _triton.num_warps(block, block)
    return compile_for_hopper("topoot_gpu.transport._triton", "_sinkhorn_log_kernel", sig, constexprs, warps)


def compile_best_stability(block: int) -> tuple[int, int, float]:
    """The fused best-stability kernel (float64, the selection's dtype) for a ``block x block`` tile."""
    from topoot_gpu.testing import compile_for_hopper
    from topoot_gpu.transport import _triton

    pointers = ("M_ptr", "a_ptr", "b_ptr", "s_row_ptr", "c_row_ptr", "s_col_ptr", "c_col_ptr", "params_ptr")
    sig = dict.fromkeys(pointers, "*fp64") | {"p_sizes_ptr": "*i64", "q_sizes_ptr": "*i64", "niter_ptr": "*i64"}
    sig |= {"n": "i32", "m": "i32", "max_iter": "i32", "BLOCK_N": "constexpr", "BLOCK_M": "constexpr"}
    warps = _triton.num_warps(block, block)
    return compile_for_hopper(
        "topoot_gpu.transport._triton", "_best_stability_kernel", sig, {"BLOCK_N": block, "BLOCK_M": block}, warps
    )


#: Longest ahead-of-time compile accepted for one tile (a first call on the GPU waits for it).
COMPILE_SECONDS = 60.0


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_sinkhorn_tiles_compile_for_hopper_without_spills_up_to_64(dtype):
    # The whole tile lives in registers through the iteration loop; with Triton's default 4 warps a
    # 64 x 64 tile spilled and fp64 256 x 256 took minutes to compile (the GPU audit). Compiled for
    # sm_90 here, without a GPU, with the Triton the GPU machine has (pinned in the test extra).
    from topoot_gpu.transport import _triton

    for block in (16, 32, 64, 128, 256):
        regs, stack, seconds = compile_sinkhorn(dtype, block)
        print(f"{dtype} {block}x{block}: {regs} registers, {stack} bytes of stack, compiled in {seconds:.1f} s")
        assert seconds < COMPILE_SECONDS, f"{dtype} {block}x{block} compiled in {seconds:.0f} s"
        if block <= _triton.REGISTER_TILE:
            assert stack == 0, f"{dtype} {block}x{block}: {regs} registers, {stack} bytes of stack (spills)"
