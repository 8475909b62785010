"""Batched Sinkhorn: parity with POT (iterates, plans, n_iter), padding, domains, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from topoot_gpu import best_match, diagram_costs, sinkhorn, stability
from topoot_gpu.testing import pad_problems as pad_batch
from topoot_gpu.testing import transport_problem as random_problem

ot = pytest.importorskip("ot")

TOL = {torch.float64: 1e-9, torch.float32: 1e-5}


def pot_solution(a, b, M, reg, max_iter, method):
    G, log = ot.sinkhorn(a, b, M, reg, method=method, numItermax=max_iter, stopThr=1e-9, log=True, warn=False)
    return G, int(log["niter"])


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("domain", ["scaling", "log"])
@pytest.mark.parametrize("reg", [0.3, 0.05, 0.01])
def test_parity_with_pot_float64(rng, backend, domain, reg):
    sizes = [(1, 1), (1, 5), (6, 1), (2, 3), (17, 17), (40, 23), (64, 64), (90, 150)]
    if reg >= 0.05:
        sizes.append((300, 211))
    problems = [random_problem(rng, n, m, cost=["random", "diagram"][k % 2]) for k, (n, m) in enumerate(sizes)]
    a, b, M = pad_batch(problems)
    res = sinkhorn(a, b, M, reg=reg, max_iter=15000, domain=domain, backend=backend)
    assert res.domain == domain
    method = "sinkhorn_log" if domain == "log" else "sinkhorn"
    for k, (ak, bk, Mk) in enumerate(problems):
        G, niter = pot_solution(ak, bk, Mk, reg, 15000, method)
        n, m = G.shape
        ours = res.plan[k, :n, :m].numpy()
        assert np.abs(ours - G).max() <= 1e-9, (k, n, m, np.abs(ours - G).max())
        assert int(res.n_iter[k]) == niter, (k, n, m, int(res.n_iter[k]), niter)
        assert torch.all(res.plan[k, n:, :] == 0) and torch.all(res.plan[k, :, m:] == 0)
        # The other POT method converges to the same plan.
        other = pot_solution(ak, bk, Mk, reg, 15000, "sinkhorn" if domain == "log" else "sinkhorn_log")[0]
        assert np.abs(ours - other).max() <= 1e-8


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("domain", ["scaling", "log"])
def test_parity_with_pot_float32(rng, backend, domain):
    reg = 0.05
    problems = [random_problem(rng, n, m, cost="diagram") for n, m in [(3, 4), (20, 31), (64, 64), (128, 90)]]
    a, b, M = pad_batch(problems, dtype=torch.float32)
    res = sinkhorn(a, b, M, reg=reg, max_iter=2000, stop_thr=1e-6, domain=domain, backend=backend)
    assert res.plan.dtype == torch.float32
    for k, (ak, bk, Mk) in enumerate(problems):
        # POT on the float32-rounded inputs, in float64
        a32, b32, M32 = (x.astype(np.float32).astype(np.float64) for x in (ak, bk, Mk))
        G = ot.sinkhorn(a32, b32, M32, reg, numItermax=2000, stopThr=1e-6, warn=False)
        n, m = G.shape
        assert np.abs(res.plan[k, :n, :m].double().numpy() - G).max() <= TOL[torch.float32]


def test_max_iter_and_n_iter_semantics(rng):
    # A problem that cannot converge in max_iter: n_iter is max_iter - 1, as POT reports.
    problems = [random_problem(rng, 30, 30) for _ in range(3)]
    a, b, M = pad_batch(problems)
    for max_iter in (1, 7, 25):
        for backend in ("cpp", "torch"):
            for domain in ("scaling", "log"):
                res = sinkhorn(a, b, M, reg=0.01, max_iter=max_iter, domain=domain, backend=backend)
                method = "sinkhorn_log" if domain == "log" else "sinkhorn"
                for k, (ak, bk, Mk) in enumerate(problems):
                    G, niter = pot_solution(ak, bk, Mk, 0.01, max_iter, method)
                    assert int(res.n_iter[k]) == niter == max_iter - 1
                    assert np.abs(res.plan[k].numpy() - G).max() <= 1e-9


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_padding_invariance(rng, backend):
    problems = [random_problem(rng, n, m) for n, m in [(5, 9), (33, 2), (17, 40), (1, 1)]]
    a, b, M = pad_batch(problems)
    batch = sinkhorn(a, b, M, reg=0.05, max_iter=5000, backend=backend)
    for k, p in enumerate(problems):
        alone = sinkhorn(*pad_batch([p]), reg=0.05, max_iter=5000, backend=backend)
        bigger = sinkhorn(*pad_batch([p], pad_to=(50, 61)), reg=0.05, max_iter=5000, backend=backend)
        n, m = len(p[0]), len(p[1])
        for other in (alone, bigger):
            assert torch.allclose(batch.plan[k, :n, :m], other.plan[0, :n, :m], rtol=0, atol=1e-15)
            assert batch.n_iter[k] == other.n_iter[0]
        assert torch.all(bigger.plan[0, n:] == 0) and torch.all(bigger.plan[0, :, m:] == 0)
        assert torch.all(torch.isneginf(bigger.log_u[0, n:])) and torch.all(torch.isneginf(bigger.log_v[0, m:]))


@pytest.mark.filterwarnings("ignore:sinkhorn")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("domain", ["auto", "scaling", "log"])
@pytest.mark.parametrize("backend", ["cpp", "torch", "reference"])
def test_padding_costs_are_ignored_whatever_their_value(rng, backend, domain, dtype):
    """Padding costs (a zero-weight row or column) may hold anything, NaN and inf included: the
    plans, scalings and n_iter are those of zeros there, bit for bit, with padding rows and columns
    before, between and after the real ones; a non-finite real cost is still refused."""
    problems = [random_problem(rng, n, m, cost="diagram") for n, m in [(5, 9), (33, 2), (17, 40), (1, 1), (0, 3)]]
    a, b, M = pad_batch(problems, pad_to=(36, 43), dtype=dtype)
    for k in range(len(problems)):  # padding scattered through rows and columns
        rows, cols = torch.from_numpy(rng.permutation(36)), torch.from_numpy(rng.permutation(43))
        a[k], b[k], M[k] = a[k, rows], b[k, cols], M[k][rows][:, cols]
    pad = ~((a > 0)[:, :, None] & (b > 0)[:, None, :])
    junk = torch.from_numpy(rng.choice([np.nan, np.inf, -np.inf, 1e30, -7.0], size=tuple(M.shape))).to(dtype)
    clean = sinkhorn(a, b, M.masked_fill(pad, 0.0), reg=0.05, domain=domain, backend=backend)
    dirty = sinkhorn(a, b, torch.where(pad, junk, M), reg=0.05, domain=domain, backend=backend)
    assert clean.domain == dirty.domain
    for f in ("plan", "log_u", "log_v", "n_iter", "err"):
        assert torch.equal(getattr(clean, f), getattr(dirty, f)), f
    assert torch.all(dirty.plan[pad] == 0) and bool(torch.isfinite(dirty.plan).all())
    assert dirty.plan[0].sum().item() == pytest.approx(1.0, abs=1e-5)
    for bad in (float("nan"), float("inf")):
        real = torch.nonzero(~pad[2])[7]
        M_bad = torch.where(pad, junk, M)
        M_bad[2, real[0], real[1]] = bad
        with pytest.raises(ValueError, match="M"):
            sinkhorn(a, b, M_bad, reg=0.05, domain=domain, backend=backend)


@pytest.mark.filterwarnings("ignore:sinkhorn")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", ["plain", "subnormal kernel", "auto to log"])
def test_the_check_folded_into_the_kernel_changes_no_bit(rng, dtype, case):
    """The "cpp" backend checks a problem while it builds its kernel (its real costs read once),
    padded or not: the same problems with and without padding give the same bits, including when
    the check sends a problem back for another kernel (costs allowing subnormal entries; the log
    domain picked by "auto")."""
    problems = [random_problem(rng, n, m, cost="diagram") for n, m in [(1, 1), (5, 9), (40, 23), (64, 64)]]
    domain, reg = "scaling", 0.05
    if case == "subnormal kernel":  # exp(-M / reg) down to about e^-900 (float32: e^-100)
        top, sub = (900, 720) if dtype == torch.float64 else (100, 90)  # e^-sub is subnormal
        problems = [(a, b, M / M.max() * top) for a, b, M in problems]
        for _, _, M in problems:  # costs can leave a gap around e^-sub: one entry there for sure
            M.flat[-1] = sub
        reg = 1.0
    if case == "auto to log":
        problems = [(a, b, M * 400) for a, b, M in problems]
        domain, reg = "auto", 1.0
    for k, p in enumerate(problems):
        dense = sinkhorn(*pad_batch([p], dtype=dtype), reg=reg, max_iter=300, domain=domain)
        padded = sinkhorn(*pad_batch([p], dtype=dtype, pad_to=(len(p[0]) + 2, len(p[1]) + 1)), reg=reg,
                          max_iter=300, domain=domain)  # fmt: skip
        n, m = len(p[0]), len(p[1])
        assert dense.domain == padded.domain == ("log" if case == "auto to log" else "scaling")
        assert torch.equal(dense.plan[0], padded.plan[0, :n, :m]), (case, k)
        assert torch.equal(dense.log_u[0], padded.log_u[0, :n]) and torch.equal(dense.log_v[0], padded.log_v[0, :m])
        assert torch.equal(dense.n_iter, padded.n_iter) and torch.equal(dense.err, padded.err)
    if case == "subnormal kernel" and dtype == torch.float64:  # the case is what it says
        K = torch.exp(-pad_batch(problems[3:])[2] / reg)
        assert bool(((K > 0) & (K < torch.finfo(torch.float64).tiny)).any())


def test_backends_agree(rng):
    problems = [random_problem(rng, n, m, cost="diagram") for n, m in [(4, 7), (50, 50), (120, 33)]]
    a, b, M = pad_batch(problems)
    for domain in ("scaling", "log"):
        x = sinkhorn(a, b, M, reg=0.05, domain=domain, backend="cpp")
        y = sinkhorn(a, b, M, reg=0.05, domain=domain, backend="torch")
        r = sinkhorn(a, b, M, reg=0.05, domain=domain, backend="reference")
        for other in (y, r):
            assert torch.allclose(x.plan, other.plan, rtol=0, atol=1e-12)
            assert torch.equal(x.n_iter, other.n_iter)


def test_empty_problems_give_zero_plans(rng):
    a, b, M = pad_batch([random_problem(rng, 4, 5)], pad_to=(6, 6))
    a = torch.cat([a, torch.zeros(1, 6, dtype=a.dtype), a])
    b = torch.cat([b, b, torch.zeros(1, 6, dtype=b.dtype)])
    M = torch.cat([M, M, M])
    for backend in ("cpp", "torch", "reference"):
        res = sinkhorn(a, b, M, reg=0.1, backend=backend)
        assert torch.all(res.plan[1:] == 0), backend
        assert torch.isfinite(res.plan).all()
        assert res.plan[0].sum().item() == pytest.approx(1.0, abs=1e-9)


def test_auto_domain_choice(rng):
    a, b, M = pad_batch([random_problem(rng, 10, 10)])
    M = M / M.max()  # max |M| = 1, so the scalings below set max |M| / reg exactly
    assert sinkhorn(a, b, M, reg=0.3).domain == "scaling"
    assert sinkhorn(a, b, M * 1000, reg=0.3).domain == "log"  # max |M| / reg = 3000 > 300
    assert sinkhorn(a.float(), b.float(), (M * 30).float(), reg=0.3).domain == "log"  # 100 > 50 in float32


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_small_reg_float32_log_domain_is_finite_and_feasible(rng, backend):
    problems = [random_problem(rng, n, m, cost="diagram") for n, m in [(10, 12), (40, 40), (64, 30)]]
    a, b, M = pad_batch(problems, dtype=torch.float32)
    res = sinkhorn(a, b, M, reg=1e-3, max_iter=3000, stop_thr=1e-5, domain="log", backend=backend)
    assert torch.isfinite(res.plan).all() and torch.isfinite(res.err).all()
    assert torch.isfinite(res.log_u[a > 0]).all() and torch.isfinite(res.log_v[b > 0]).all()
    # Rows are met exactly after each u update; columns by the stopping rule (or close to it).
    assert torch.allclose(res.plan.sum(2), a, atol=1e-5)
    assert (res.plan.sum(1) - b).abs().sum(1).max() < 5e-2


def test_diagram_costs_normalized_by_hand():
    # P = {(0, 1)}, Q = {(0, 0), (3, 4)}: distances 1 and sqrt(9 + 9) = 3 sqrt 2, max 3 sqrt 2,
    # M = [(1 / (3 sqrt 2))^2, 1] = [1/18, 1] (up to the 1e-12 guard), a = [1], b = [1/2, 1/2].
    M, a, b = diagram_costs([np.array([[0.0, 1.0]])], [np.array([[0.0, 0.0], [3.0, 4.0]])])
    assert M.shape == (1, 1, 2)
    assert M[0, 0, 0].item() == pytest.approx(1 / 18, rel=1e-10)
    assert M[0, 0, 1].item() == pytest.approx(1.0, rel=1e-10)
    assert a.tolist() == [[1.0]] and b.tolist() == [[0.5, 0.5]]


def test_diagram_costs_diagonal_by_hand():
    # P = {(0, 2)}, Q = {(1, 1), (0, 4)}: M[0, :2] = |p - q|^2 = [1 + 1, 0 + 4] = [2, 4];
    # to the diagonal: p: (2 - 0)^2 / 2 = 2, q: 0 and 8; weights [1, 2] / 3 and [1, 1, 1] / 3.
    M, a, b = diagram_costs([np.array([[0.0, 2.0]])], [np.array([[1.0, 1.0], [0.0, 4.0]])], kind="diagonal")
    assert M[0].tolist() == [[2.0, 4.0, 2.0], [0.0, 8.0, 0.0]]
    assert a[0].tolist() == pytest.approx([1 / 3, 2 / 3])
    assert b[0].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3])


def test_diagram_costs_ragged_matches_one_by_one(rng):
    Ps = [np.sort(rng.random((n, 2)), 1) for n in (0, 3, 7)]
    Qs = [np.sort(rng.random((m, 2)), 1) for m in (4, 0, 5)]
    for kind in ("normalized", "diagonal"):
        M, a, b = diagram_costs(Ps, Qs, kind=kind)
        for k in range(3):
            M1, a1, b1 = diagram_costs([Ps[k]], [Qs[k]], kind=kind)
            n, m = len(Ps[k]), len(Qs[k])
            assert torch.equal(M[k, :n, :m], M1[0, :n, :m])
            assert torch.equal(a[k, :n], a1[0, :n]) and torch.equal(b[k, :m], b1[0, :m])
            assert torch.all(a[k, n : a.shape[1] - (kind == "diagonal")] == 0)


def test_stability_and_best_match():
    plan = torch.tensor([[[0.2, 0.1], [0.0, 0.7]]], dtype=torch.float64)
    M = torch.tensor([[[0.25, 0.0], [1.0, 0.04]]], dtype=torch.float64)
    S = stability(plan, M)
    # 0.2 / 1.5, 0.1 / 1, 0 / 2, 0.7 / 1.2
    assert S[0].flatten().tolist() == pytest.approx([0.2 / 1.5, 0.1, 0.0, 0.7 / 1.2])
    s, c, i = best_match(S, M, dim=2)
    assert s[0].tolist() == pytest.approx([0.2 / 1.5, 0.7 / 1.2]) and i[0].tolist() == [0, 1]
    assert c[0].tolist() == pytest.approx([0.25, 0.04])
    s, c, i = best_match(S, M, dim=1, mask=torch.tensor([[[True, True], [False, True]]]))
    assert i[0].tolist() == [0, 1] and c[0].tolist() == pytest.approx([0.25, 0.04])
    s, c, i = best_match(S, M, dim=2, mask=torch.zeros(1, 2, 2, dtype=torch.bool))
    assert s[0].tolist() == [0, 0] and c[0].tolist() == [float("inf")] * 2 and i[0].tolist() == [-1, -1]


def _ok():
    return torch.full((2, 3), 1 / 3), torch.full((2, 4), 1 / 4), torch.rand(2, 3, 4)


@pytest.mark.parametrize(
    "change,arg",
    [
        (lambda a, b, M: (-a, b, M), "a"),
        (lambda a, b, M: (a, -b, M), "b"),
        (lambda a, b, M: (a[:, :2], b, M), "a"),
        (lambda a, b, M: (a, b[:1], M), "b"),
        (lambda a, b, M: (a, b, M[0]), "M"),
        (lambda a, b, M: (a, b, M.masked_fill(M > 0.5, float("nan"))), "M"),
        (lambda a, b, M: (a.masked_fill(a > 0, float("inf")), b, M), "a"),
        (lambda a, b, M: (a.long(), b, M), "a"),
        (lambda a, b, M: ([[1.0]], b, M), "a"),
    ],
)
def test_bad_inputs_raise(change, arg):
    with pytest.raises(ValueError, match=arg):
        sinkhorn(*change(*_ok()), reg=0.1)


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        ({"reg": 0.0}, "reg"),
        ({"reg": -1.0}, "reg"),
        ({"reg": float("nan")}, "reg"),
        ({"reg": 0.1, "max_iter": 0}, "max_iter"),
        ({"reg": 0.1, "max_iter": 2.5}, "max_iter"),
        ({"reg": 0.1, "stop_thr": -1.0}, "stop_thr"),
        ({"reg": 0.1, "domain": "exp"}, "domain"),
        ({"reg": 0.1, "backend": "cuda"}, "backend"),
        ({"reg": 0.1, "num_threads": 0}, "num_threads"),
    ],
)
def test_bad_options_raise(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        sinkhorn(*_ok(), **kwargs)


def test_bad_diagrams_raise():
    with pytest.raises(ValueError, match="P"):
        diagram_costs([np.zeros((3, 3))], [np.zeros((2, 2))])
    with pytest.raises(ValueError, match="P, Q"):
        diagram_costs([np.zeros((3, 2))], [])
    with pytest.raises(ValueError, match="kind"):
        diagram_costs([], [], kind="wasserstein")
    with pytest.raises(ValueError, match="Q"):
        diagram_costs([np.zeros((1, 2))], [np.array([[0.0, np.nan]])])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("domain", ["scaling", "log"])
def test_torch_backend_on_cuda_gives_the_cpp_plans(rng, domain):
    problems = [random_problem(rng, n, m, cost="diagram") for n, m in [(1, 1), (5, 9), (40, 23), (64, 64), (130, 70)]]
    a, b, M = pad_batch(problems)
    for reg in (0.3, 0.05):
        cpu = sinkhorn(a, b, M, reg=reg, max_iter=15000, domain=domain, backend="cpp")
        gpu = sinkhorn(a.cuda(), b.cuda(), M.cuda(), reg=reg, max_iter=15000, domain=domain, backend="torch")
        assert gpu.plan.device.type == "cuda"
        torch.testing.assert_close(gpu.plan.cpu(), cpu.plan, rtol=0, atol=1e-12)
        assert torch.equal(gpu.n_iter.cpu(), cpu.n_iter)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_scaling_domain_stops_on_numerical_errors_as_pot(rng, backend):
    # A column whose kernel underflows to zero (cost 0.8 or more at reg 1e-3: exp(-800) = 0) makes
    # K^T u zero: POT's sinkhorn_knopp keeps the previous scalings and stops there (iteration 0).
    # Those problems share a batch with problems that run on for many iterations.
    problems, stopped = [], []
    for k in range(6):
        a, b, M = random_problem(rng, 6 + k, 7)
        M = M * 0.05  # exp(-M / reg) >= e^-50: these run
        if k % 2 == 0:
            M[:, k % 7] = 0.8 + 0.1 * k
            stopped.append(k)
        problems.append((a, b, M))
    a, b, M = pad_batch(problems)
    res = sinkhorn(a, b, M, reg=1e-3, max_iter=300, domain="scaling", backend=backend)
    iterations = []
    for k, (ak, bk, Mk) in enumerate(problems):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            G, log = ot.sinkhorn(ak, bk, Mk, 1e-3, numItermax=300, stopThr=1e-9, log=True)
        n, m = G.shape
        assert int(res.n_iter[k]) == int(log["niter"]), (k, int(res.n_iter[k]), log["niter"])
        np.testing.assert_allclose(res.plan[k, :n, :m].numpy(), G, rtol=0, atol=1e-12)
        iterations.append(int(log["niter"]))
    assert [iterations[k] for k in stopped] == [0] * len(stopped)
    assert min(iterations[k] for k in range(6) if k not in stopped) >= 20  # they ran past the stops


def pot_knopp(ak, bk, Mk, reg: float, max_iter: int):
    """POT's sinkhorn_knopp: the plan, its niter, and whether it stopped on numerical errors."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        G, log = ot.sinkhorn(ak, bk, Mk, reg, numItermax=max_iter, stopThr=1e-9, log=True)
    return G, int(log["niter"]), any("numerical errors" in str(w.message) for w in caught)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_scaling_domain_stops_on_numerical_errors_between_checks(rng, backend):
    # Kernels near the underflow edge (exp(-M / reg) about e^-700, half the entries 100x cheaper)
    # make some problems hit POT's numerical-error stop at iterations that are not multiples of 10;
    # drawn until a batch holds at least 3 such problems among 40 or more.
    problems, expected, between_checks = [], [], 0
    for _ in range(20000):
        if len(problems) >= 40 and between_checks >= 3:
            break
        n, m = (int(x) for x in rng.integers(2, 8, 2))
        a, b = rng.random(n) + 0.01, rng.random(m) + 0.01
        M = rng.uniform(0.70, 0.76, (n, m)) * rng.choice([1.0, 0.01], (n, m))
        problem = (a / a.sum(), b / b.sum(), M)
        G, niter, stopped = pot_knopp(*problem, 1e-3, 500)
        if len(problems) >= 40 and not (stopped and niter % 10):
            continue  # enough of the others: keep drawing for the case this test is for
        problems.append(problem)
        expected.append((G, niter))
        between_checks += bool(stopped and niter % 10)
    assert between_checks >= 3
    a, b, M = pad_batch(problems)
    res = sinkhorn(a, b, M, reg=1e-3, max_iter=500, domain="scaling", backend=backend)
    for k, (G, niter) in enumerate(expected):
        n, m = G.shape
        assert int(res.n_iter[k]) == niter, (k, int(res.n_iter[k]), niter)
        np.testing.assert_allclose(res.plan[k, :n, :m].numpy(), G, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_plan_is_refused(dtype, bad):
    """The backstop after every solve (the solvers stop before their scalings overflow, so no input
    reaches it today): one C++ pass on host plans, torch on device plans."""
    from topoot_gpu.transport.api import _check_result
    from topoot_gpu.transport.results import SinkhornResult

    plan = torch.rand(3, 17, 9, dtype=dtype)
    ok = SinkhornResult(plan, plan[:, :, 0], plan[:, 0], torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=dtype),
                        "scaling")  # fmt: skip
    _check_result(ok, 1e-9, plan_checked=False)
    plan = plan.clone()
    plan[2, 16, 8] = bad
    with pytest.raises(ValueError, match="plan is not finite"):
        _check_result(SinkhornResult(plan, *(getattr(ok, f) for f in ("log_u", "log_v", "n_iter", "err")), "scaling"),
                      1e-9, plan_checked=False)  # fmt: skip
