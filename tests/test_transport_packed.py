"""Packed (ragged, unpadded) transport batches: ``diagram_costs(packed=True)`` equals the padded
costs' real entries, ``sinkhorn(sizes=...)`` equals the padded solve's real entries through every
backend that runs here and POT problem by problem, ``return_plan=False``, and bad packed input."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from topoot_gpu import diagram_costs, sinkhorn
from topoot_gpu.testing import transport_problem

ot = pytest.importorskip("ot")


def ragged_diagrams(rng, sizes, *, scale: float = 1.0):
    """Random diagrams (points ``low <= high``), with ties when ``sizes`` repeats a point count."""
    out = []
    for n in sizes:
        pts = np.sort(rng.random((n, 2)), 1) * scale
        if n > 3:
            pts[1] = pts[0]  # a repeated point: ties in the costs
        out.append(pts)
    return out


def real_entries(M, a, b, n_sizes, m_sizes, kind):
    """The padded batch's real entries, packed problem after problem (the diagonal last)."""
    Ms, As, Bs = [], [], []
    for k, (n, m) in enumerate(zip(n_sizes.tolist(), m_sizes.tolist())):
        rows = list(range(n - 1)) + [M.shape[1] - 1] if kind == "diagonal" else list(range(n))
        cols = list(range(m - 1)) + [M.shape[2] - 1] if kind == "diagonal" else list(range(m))
        Ms.append(M[k][rows][:, cols].reshape(-1))
        As.append(a[k, rows])
        Bs.append(b[k, cols])
    return torch.cat(Ms), torch.cat(As), torch.cat(Bs)


# Coordinates beyond 2**500 (normalized costs rescale them first); diagonal costs that large are
# refused instead (test_transport.py).
@pytest.mark.parametrize(
    "kind,scale", [("normalized", 1.0), ("normalized", 1e3), ("normalized", 2.0**600), ("diagonal", 1.0),
                   ("diagonal", 1e3)],
)  # fmt: skip
def test_packed_costs_equal_the_padded_real_entries(rng, kind, scale):
    Ps = ragged_diagrams(rng, [0, 1, 7, 30, 3, 0, 12], scale=scale)
    Qs = ragged_diagrams(rng, [4, 0, 7, 11, 1, 0, 25], scale=scale)
    M, a, b = diagram_costs(Ps, Qs, kind=kind)
    Mq, aq, bq, (n_sizes, m_sizes) = diagram_costs(Ps, Qs, kind=kind, packed=True)
    extra = int(kind == "diagonal")
    assert n_sizes.tolist() == [len(p) + extra for p in Ps]
    assert m_sizes.tolist() == [len(q) + extra for q in Qs]
    Mr, ar, br = real_entries(M, a, b, n_sizes, m_sizes, kind)
    assert torch.equal(Mq, Mr) and torch.equal(aq, ar) and torch.equal(bq, br)


def packed_problems(rng, sizes, *, zero_weights: bool = False):
    problems = [transport_problem(rng, n, m, cost=["random", "diagram"][k % 2]) for k, (n, m) in enumerate(sizes)]
    if zero_weights:  # a caller's own packed batch may carry zero weights: rows/columns left out
        a0, b0, M0 = problems[1]
        a0, b0 = a0.copy(), b0.copy()
        a0[0], b0[-1] = 0.0, 0.0
        problems[1] = (a0 / a0.sum(), b0 / b0.sum(), M0)
    a = torch.from_numpy(np.concatenate([p[0] for p in problems]))
    b = torch.from_numpy(np.concatenate([p[1] for p in problems]))
    M = torch.from_numpy(np.concatenate([p[2].reshape(-1) for p in problems]))
    n_sizes = torch.tensor([n for n, _ in sizes])
    m_sizes = torch.tensor([m for _, m in sizes])
    return problems, a, b, M, (n_sizes, m_sizes)


def padded(problems):
    N = max(len(p[0]) for p in problems)
    Mx = max(len(p[1]) for p in problems)
    a = torch.zeros(len(problems), N, dtype=torch.float64)
    b = torch.zeros(len(problems), Mx, dtype=torch.float64)
    M = torch.full((len(problems), N, Mx), 3.25, dtype=torch.float64)  # junk padding costs
    for k, (ak, bk, Mk) in enumerate(problems):
        a[k, : len(ak)], b[k, : len(bk)], M[k, : len(ak), : len(bk)] = (torch.from_numpy(x) for x in (ak, bk, Mk))
    return a, b, M


SIZES = [(1, 1), (5, 9), (33, 2), (0, 4), (17, 40), (64, 64), (3, 0), (90, 41)]


@pytest.mark.parametrize("backend", ["cpp", "torch", "reference"])
@pytest.mark.parametrize("domain", ["auto", "log"])
def test_packed_costs_of_zero_weights_are_ignored_whatever_their_value(rng, backend, domain):
    """In a packed batch a zero-weight row or column is padding too: NaN and inf costs there give
    the results of finite ones, bit for bit."""
    _, a, b, M, sizes = packed_problems(rng, SIZES, zero_weights=True)
    n_sizes, m_sizes = sizes
    start = int(n_sizes[0] * m_sizes[0])  # problem 1 (5 x 9): its first row and last column weigh 0
    n, m = int(n_sizes[1]), int(m_sizes[1])
    block = M[start : start + n * m].view(n, m)
    dirty = M.clone()
    dirty_block = dirty[start : start + n * m].view(n, m)
    dirty_block[0] = float("nan")
    dirty_block[1:, -1] = float("inf")
    assert not torch.equal(block, dirty_block)
    clean = sinkhorn(a, b, M, reg=0.05, max_iter=3000, domain=domain, backend=backend, sizes=sizes)
    junk = sinkhorn(a, b, dirty, reg=0.05, max_iter=3000, domain=domain, backend=backend, sizes=sizes)
    for f in ("plan", "log_u", "log_v", "n_iter", "err"):
        assert torch.equal(getattr(clean, f), getattr(junk, f)), f
    assert bool(torch.isfinite(junk.plan).all())


@pytest.mark.parametrize("backend", ["cpp", "torch", "reference"])
@pytest.mark.parametrize("domain", ["scaling", "log"])
@pytest.mark.parametrize("zero_weights", [False, True])
def test_packed_sinkhorn_equals_the_padded_one(rng, backend, domain, zero_weights):
    from topoot_gpu.transport.padded import size_classes

    problems, a, b, M, sizes = packed_problems(rng, SIZES, zero_weights=zero_weights)
    assert len(size_classes(*sizes)) > 1  # the padded backends solve it class by class
    res = sinkhorn(a, b, M, reg=0.05, max_iter=3000, domain=domain, backend=backend, sizes=sizes)
    pad = sinkhorn(*padded(problems), reg=0.05, max_iter=3000, domain=domain, backend=backend)
    assert res.domain == pad.domain == domain
    # "cpp" and POT solve each problem at its own size: the padded solve's real entries, bit for
    # bit. The torch backend solves size classes padded to their own largest problem, and its
    # vectorised reductions group terms by the padded width: equal to rounding.
    exact = backend != "torch"

    def same(x, y):
        return torch.equal(x, y) if exact else torch.allclose(x, y, rtol=1e-12, atol=1e-15)

    assert torch.equal(res.n_iter, pad.n_iter) and same(res.err, pad.err)
    po = pu = pv = 0
    for k, (ak, bk, _) in enumerate(problems):
        n, m = len(ak), len(bk)
        assert same(res.plan[po : po + n * m].reshape(n, m), pad.plan[k, :n, :m])
        assert same(res.log_u[pu : pu + n], pad.log_u[k, :n])
        assert same(res.log_v[pv : pv + m], pad.log_v[k, :m])
        po, pu, pv = po + n * m, pu + n, pv + m
    assert (po, pu, pv) == (len(res.plan), len(res.log_u), len(res.log_v))


@pytest.mark.parametrize("domain", ["scaling", "log"])
def test_packed_sinkhorn_has_pots_iterates(rng, domain):
    sizes = [(int(n), int(m)) for n, m in rng.integers(1, 120, size=(12, 2))]
    problems, a, b, M, packed = packed_problems(rng, sizes)
    res = sinkhorn(a, b, M, reg=0.05, max_iter=5000, domain=domain, sizes=packed)
    method = "sinkhorn_log" if domain == "log" else "sinkhorn"
    off = 0
    for k, (ak, bk, Mk) in enumerate(problems):
        G, log = ot.sinkhorn(ak, bk, Mk, 0.05, method=method, numItermax=5000, stopThr=1e-9, log=True, warn=False)
        ours = res.plan[off : off + G.size].reshape(G.shape).numpy()
        off += G.size
        assert np.abs(ours - G).max() <= 1e-9, k
        assert int(res.n_iter[k]) == int(log["niter"]), k


def test_packed_sinkhorn_through_triton_equals_the_padded_one(rng, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    problems, a, b, M, sizes = packed_problems(rng, [(3, 5), (8, 2), (0, 3), (6, 6)])
    res = sinkhorn(a, b, M, reg=0.1, max_iter=200, backend="triton", sizes=sizes)
    pad = sinkhorn(*padded(problems), reg=0.1, max_iter=200, backend="triton")
    assert torch.equal(res.n_iter, pad.n_iter)
    off = 0
    for k, (ak, bk, _) in enumerate(problems):
        n, m = len(ak), len(bk)
        assert torch.equal(res.plan[off : off + n * m].reshape(n, m), pad.plan[k, :n, :m])
        off += n * m


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_without_the_plan_the_scalings_are_the_same(rng, backend, layout):
    problems, a, b, M, sizes = packed_problems(rng, SIZES)
    if layout == "padded":
        a, b, M = padded(problems)
        sizes = None
    full = sinkhorn(a, b, M, reg=0.05, backend=backend, sizes=sizes)
    lean = sinkhorn(a, b, M, reg=0.05, backend=backend, sizes=sizes, return_plan=False)
    assert lean.plan is None
    for f in ("log_u", "log_v", "n_iter", "err"):
        assert torch.equal(getattr(full, f), getattr(lean, f)), f
    # The plan is exp(-M / reg + log_u_i + log_v_j), as documented.
    if layout == "padded":
        G = torch.exp(-M / 0.05 + lean.log_u[:, :, None] + lean.log_v[:, None, :])
        assert torch.allclose(G, full.plan, rtol=1e-9, atol=1e-15)


def test_packed_float32(rng):
    problems, a, b, M, sizes = packed_problems(rng, [(4, 6), (20, 31), (64, 64)])
    res = sinkhorn(a.float(), b.float(), M.float(), reg=0.05, max_iter=2000, stop_thr=1e-6, sizes=sizes)
    pad = sinkhorn(*(x.float() for x in padded(problems)), reg=0.05, max_iter=2000, stop_thr=1e-6)
    assert res.plan.dtype == torch.float32 and torch.equal(res.n_iter, pad.n_iter)
    assert torch.equal(res.plan[: 4 * 6].reshape(4, 6), pad.plan[0, :4, :6])


def _packed_ok():
    a = torch.full((5,), 0.2, dtype=torch.float64)
    b = torch.full((7,), 1 / 7, dtype=torch.float64)
    M = torch.rand(2 * 3 + 3 * 4, dtype=torch.float64)
    return a, b, M, (torch.tensor([2, 3]), torch.tensor([3, 4]))


@pytest.mark.parametrize(
    "change,arg",
    [
        (lambda a, b, M, s: (a, b, M, (s[0],)), "sizes"),
        (lambda a, b, M, s: (a, b, M, "2,3"), "sizes"),
        (lambda a, b, M, s: (a, b, M, (s[0].double(), s[1])), "sizes"),
        (lambda a, b, M, s: (a, b, M, (s[0], s[1][:1])), "sizes"),
        (lambda a, b, M, s: (a, b, M, (-s[0], s[1])), "sizes"),
        (lambda a, b, M, s: (a, b, M, (s[0][None], s[1][None])), "sizes"),
        (lambda a, b, M, s: (a[:4], b, M, s), "a"),
        (lambda a, b, M, s: (a, b[:6], M, s), "b"),
        (lambda a, b, M, s: (a, b, M[:-1], s), "M"),
        (lambda a, b, M, s: (a, b, M.reshape(2, -1), s), "M"),
        (lambda a, b, M, s: (a, b, M.masked_fill(M > 0.5, float("nan")), s), "M"),
        (lambda a, b, M, s: (-a, b, M, s), "a"),
    ],
)
@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_bad_packed_inputs_raise(change, arg, backend):
    a, b, M, sizes = change(*_packed_ok())
    with pytest.raises(ValueError, match=arg):
        sinkhorn(a, b, M, reg=0.1, sizes=sizes, backend=backend)


@pytest.mark.parametrize("value", [0, 1, "yes", None])
def test_return_plan_must_be_a_bool(value):
    a, b, M, sizes = _packed_ok()
    with pytest.raises(ValueError, match="return_plan"):
        sinkhorn(a, b, M, reg=0.1, sizes=sizes, return_plan=value)


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_auto_domain_is_one_rule_for_the_batch(rng, layout):
    """The C++ backend picks each problem's domain as it checks it, then solves again in the log
    domain what it solved in the scaling domain if any problem needed the log domain: the batch
    rule (max |M| / reg over the whole batch), the same results as ``domain="log"``."""
    problems, a, b, M, sizes = packed_problems(rng, [(6, 5), (30, 12), (9, 40)])
    big = problems[1][2] * 400  # max |M| / reg > 300 with reg 0.3: this problem needs the log domain
    problems[1] = (problems[1][0], problems[1][1], big)
    M = torch.from_numpy(np.concatenate([p[2].reshape(-1) for p in problems]))
    if layout == "padded":
        a, b, M = padded(problems)
        sizes = None
    mixed = sinkhorn(a, b, M, reg=0.3, sizes=sizes)
    log = sinkhorn(a, b, M, reg=0.3, sizes=sizes, domain="log")
    torch_auto = sinkhorn(*padded(problems), reg=0.3, backend="torch")
    assert mixed.domain == log.domain == torch_auto.domain == "log"
    for f in ("plan", "log_u", "log_v", "n_iter", "err"):
        assert torch.equal(getattr(mixed, f), getattr(log, f)), f
    # Without the large problem the batch runs in the scaling domain.
    rest = [problems[0], problems[2]]
    assert sinkhorn(*padded(rest), reg=0.3).domain == "scaling"


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_costs_whose_ratio_overflows_are_refused(backend, layout):
    a, b, M, sizes = _packed_ok()
    M = M.clone()
    M[3] = 1e300
    if layout == "padded":
        f64 = {"dtype": torch.float64}
        a, b, sizes = torch.full((1, 2), 0.5, **f64), torch.full((1, 2), 0.5, **f64), None
        M = torch.full((1, 2, 2), 1e300, **f64)
    with pytest.raises(ValueError, match="overflows"):
        sinkhorn(a, b, M, reg=1e-10, sizes=sizes, backend=backend)


def test_size_classes_bound_the_padding(rng):
    """The padded backends solve a packed batch class by class when that halves the padded
    entries: every problem in one class, no side padded beyond twice the problem's larger side.
    Sizes drawn evenly over one range stay one group."""
    from topoot_gpu.transport.padded import size_classes

    n_sizes = torch.from_numpy(rng.integers(0, 40, 200))
    m_sizes = torch.from_numpy(rng.integers(0, 40, 200))
    n_sizes[:5] = torch.tensor([0, 1, 2, 256, 300])  # a few outliers: padding everything to them
    m_sizes[:5] = torch.tensor([0, 1, 3, 257, 20])  # would cost ~50x the real entries
    groups = size_classes(n_sizes, m_sizes)
    assert len(groups) > 1
    assert sorted(torch.cat(groups).tolist()) == list(range(200))
    side = torch.maximum(n_sizes, m_sizes).clamp(min=1)
    for g in groups:
        assert int(side[g].max()) < 2 * int(side[g].min()) or int(side[g].max()) <= 1
    assert [int(side[g].max()) for g in groups] == sorted(int(side[g].max()) for g in groups)
    even = torch.from_numpy(rng.integers(5, 201, 300))
    assert [g.tolist() for g in size_classes(even, even.flip(0))] == [list(range(300))]


@pytest.mark.filterwarnings("ignore:sinkhorn")  # the empty problems "do not converge"
@pytest.mark.parametrize("domain", ["scaling", "log"])
def test_cache_groups_change_no_value(rng, monkeypatch, domain):
    """On the CPU the torch backend solves padded and packed batches in ``cache_groups``, each
    cropped to its own largest problem: forced here into many small groups (with zero weights,
    empty problems and junk padding costs), the same n_iter and, to rounding, the same plans and
    scalings as one call over the whole batch; padding stays 0 and -inf."""
    from topoot_gpu.transport import padded as padded_module

    sizes = SIZES + [(7, 120), (120, 7), (2, 2), (64, 63)]
    problems, a, b, M, packed_sizes = packed_problems(rng, sizes, zero_weights=True)
    Pa, Pb, PM = padded(problems)
    kw = {"reg": 0.05, "max_iter": 3000, "domain": domain, "backend": "torch"}
    monkeypatch.setattr(padded_module, "CPU_GROUP_ENTRIES", 1 << 40)  # one group: the whole batch
    assert len(padded_module.cache_groups(*packed_sizes)) == 1
    whole_packed = sinkhorn(a, b, M, sizes=packed_sizes, **kw)
    whole_padded = sinkhorn(Pa, Pb, PM, **kw)
    monkeypatch.setattr(padded_module, "CPU_GROUP_ENTRIES", 3000)
    assert len(padded_module.cache_groups(*packed_sizes)) >= 5
    for whole, grouped in ((whole_packed, sinkhorn(a, b, M, sizes=packed_sizes, **kw)),
                           (whole_padded, sinkhorn(Pa, Pb, PM, **kw))):  # fmt: skip
        assert torch.equal(grouped.n_iter, whole.n_iter)
        # Rounding of the reductions, which group terms by the padded width: plans to 1e-12 relative;
        # the log scalings, O(1) numbers that may lie near 0, to 1e-12 absolute (seen: 2.7e-15 after
        # 170 log-domain iterations, 4.5e-12 relative on a log_u of 6e-4).
        assert torch.allclose(grouped.plan, whole.plan, rtol=1e-12, atol=1e-15)
        for x, y in ((grouped.log_u, whole.log_u), (grouped.log_v, whole.log_v)):
            assert torch.equal(torch.isneginf(x), torch.isneginf(y))
            assert torch.allclose(x, y, rtol=0, atol=1e-12)
    grouped = sinkhorn(Pa, Pb, PM, **kw)
    for k, (ak, bk, _) in enumerate(problems):
        n, m = len(ak), len(bk)
        assert torch.all(grouped.plan[k, n:] == 0) and torch.all(grouped.plan[k, :, m:] == 0)
        assert torch.all(torch.isneginf(grouped.log_u[k, n:])) and torch.all(torch.isneginf(grouped.log_v[k, m:]))


def test_cache_groups_partition_the_batch_within_the_budget(rng):
    """Every problem in exactly one group; a group of several holds at most ``entries`` padded
    entries, and sorting by row buckets keeps its padding small on ragged sizes."""
    from topoot_gpu.transport.padded import cache_groups

    n_sizes = torch.from_numpy(rng.integers(0, 300, 500))
    m_sizes = torch.from_numpy(rng.integers(0, 300, 500))
    n_sizes[:3] = torch.tensor([0, 1, 2000])
    m_sizes[:3] = torch.tensor([5, 0, 2000])  # larger than the budget alone
    groups = cache_groups(n_sizes, m_sizes, entries=200_000)
    assert sorted(torch.cat(groups).tolist()) == list(range(500))
    padded_entries = 0
    for g in groups:
        size = len(g) * int(n_sizes[g].max()) * int(m_sizes[g].max())
        assert len(g) == 1 or size <= 200_000
        padded_entries += size
    real = int((n_sizes * m_sizes).sum())
    assert padded_entries < 1.5 * real  # one padded batch would hold 500 * 2000**2 = 80x more
    assert len(cache_groups(n_sizes, m_sizes, entries=1 << 62)) == 1  # no budget: one group


def test_packed_real_costs_are_the_padded_real_entries(rng):
    from topoot_gpu.transport.padded import pack_result, packed_real_costs, pad_packed
    from topoot_gpu.transport.results import SinkhornResult

    problems, a, b, M, (n_sizes, m_sizes) = packed_problems(rng, SIZES, zero_weights=True)
    ap, bp, Mp = pad_packed(a, b, M, n_sizes, m_sizes)
    real = (ap > 0)[:, :, None] & (bp > 0)[:, None, :]
    fake = SinkhornResult(real, ap, bp, torch.zeros(len(n_sizes)), torch.zeros(len(n_sizes)), "log")
    assert torch.equal(packed_real_costs(a, b, M, n_sizes, m_sizes), pack_result(fake, n_sizes, m_sizes).plan)
    assert torch.equal(pack_result(fake, n_sizes, m_sizes).log_u, a)  # the round trip of the weights


def test_kept_scratch_changes_no_result(rng):
    # The C++ workers keep their scratch between calls (release_scratch() frees it): a solve after
    # larger problems have grown every kept state, and solves from two Python threads at once
    # (which must take different states), equal the solve on fresh scratch, bit for bit.
    import threading

    from topoot_gpu import best_stability, release_scratch

    _, a, b, M, sizes = packed_problems(rng, SIZES)
    diagrams = [torch.from_numpy(np.sort(rng.random((n, 2)), 1)) for n in (7, 40, 1, 25, 60, 3)]
    P, Q = torch.cat(diagrams[::2]), torch.cat(diagrams[1::2])
    p_sizes, q_sizes = torch.tensor([len(d) for d in diagrams[::2]]), torch.tensor([len(d) for d in diagrams[1::2]])

    def solve():
        res = sinkhorn(a, b, M, reg=0.05, max_iter=3000, sizes=sizes, num_threads=2)
        st = best_stability(P, p_sizes, Q, q_sizes, reg=0.3, num_threads=2)
        return [res.plan, res.log_u, res.log_v, res.n_iter, res.err, st.s_row, st.c_row, st.s_col, st.c_col]

    release_scratch()
    fresh = solve()
    assert release_scratch() >= 1 and release_scratch() == 0
    solve()
    _, a2, b2, M2, sizes2 = packed_problems(rng, [(300, 280), (250, 310), (120, 2)])
    sinkhorn(a2, b2, M2, reg=0.05, sizes=sizes2, num_threads=2)
    big = torch.from_numpy(np.sort(rng.random((500, 2)), 1))
    best_stability(big, torch.tensor([300, 200]), big, torch.tensor([250, 250]), reg=0.3, num_threads=2)
    kept = solve()
    both = [None, None]
    threads = [threading.Thread(target=lambda i=i: both.__setitem__(i, solve())) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in (kept, *both):
        assert all(torch.equal(x, y) for x, y in zip(fresh, got))


# Run in a process of its own, with transparent huge pages off (prctl PR_SET_THP_DISABLE) so that
# a matrix's faults are counted in 4 KiB pages, far above what the rest of a call faults in.
_FAULTS_SCRIPT = """
import ctypes, resource, sys
import numpy as np, torch
from topoot_gpu import best_stability, release_scratch
if ctypes.CDLL(None).prctl(41, 1, 0, 0, 0) != 0:
    sys.exit(3)
rng = np.random.default_rng(0)
def faults(sizes, threads):
    P = torch.from_numpy(np.sort(rng.random((sum(sizes), 2)), 1))
    Q = torch.from_numpy(np.sort(rng.random((sum(sizes), 2)), 1))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    best_stability(P, torch.tensor(sizes), Q, torch.tensor(sizes), reg=0.3, num_threads=threads)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
fresh = faults([2000], 1)
grown = faults([2100], 1)
faults([2100, 1000, 300], 2)
later = [faults([2100, 1000, 300], 2) for _ in range(6)]
print(fresh, grown, *later)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts page faults with Linux's prctl")
def test_kept_scratch_is_not_faulted_in_again(tmp_path):
    # The C++ workers' kept matrices are reused, not allocated anew, so their pages are not faulted
    # in again: a problem a little larger than any before (10% more entries) fits in the headroom
    # its block was given (buffer.h), and in a batch the largest problem meets the largest kept
    # state (parallel.h). Counted against a first call's faults, on fresh scratch (a 32 MB matrix).
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )  # out of the source tree: the installed package
    if out.returncode == 3:
        pytest.skip("this kernel refuses prctl(PR_SET_THP_DISABLE)")
    assert out.returncode == 0, out.stderr
    fresh, grown, *later = map(int, out.stdout.split())
    assert fresh > 5000, fresh  # the matrix's pages, counted
    assert grown < fresh / 4, (fresh, grown)
    assert max(later) < fresh / 10, (fresh, later)


@pytest.mark.parametrize("kind", ["band", "random", "quantised"])
def test_cpp_best_stability_equals_numpy_costs_through_sinkhorn(rng, kind):
    # The C++ best_stability (no cost matrix: the largest distance by a pruned scan, the solver's
    # first K^T u summed while K is built, 1 + r as the stabilities' divisor) against the released
    # formulas written out with numpy (correctly rounded sqrt), the public sinkhorn on those costs,
    # and S and each point's first maximum in numpy: the same bits.
    from topoot_gpu import best_stability

    def points(n):
        if kind == "band":  # along the diagonal, as raw-noise diagrams lie: the scan skips most rows
            low = rng.random(n) * 0.9
            return np.stack([low, low + 0.1 * rng.random(n)], 1)
        pts = np.sort(rng.random((n, 2)), 1)
        return np.round(pts * 8) / 8 if kind == "quantised" else pts  # quantised: tied costs and S

    sizes_p, sizes_q = [1, 37, 260, 6], [3, 41, 240, 1]
    Ps, Qs = [points(n) for n in sizes_p], [points(m) for m in sizes_q]
    got = best_stability(
        torch.from_numpy(np.concatenate(Ps)), torch.tensor(sizes_p), torch.from_numpy(np.concatenate(Qs)),
        torch.tensor(sizes_q), reg=0.3, max_iter=2000, stop_thr=1e-9, num_threads=2,
    )  # fmt: skip
    po = qo = 0
    for k, (P, Q) in enumerate(zip(Ps, Qs)):
        n, m = len(P), len(Q)
        dl, dh = P[:, None, 0] - Q[None, :, 0], P[:, None, 1] - Q[None, :, 1]
        d2 = dl * dl + dh * dh
        r = np.sqrt(d2) / (np.sqrt(d2.max()) + 1e-12)
        M = r * r
        a, b = torch.full((1, n), 1 / n, dtype=torch.float64), torch.full((1, m), 1 / m, dtype=torch.float64)
        res = sinkhorn(a, b, torch.from_numpy(M)[None], reg=0.3, max_iter=2000, stop_thr=1e-9)
        assert int(got.n_iter[k]) == int(res.n_iter[0]), k
        S = res.plan[0].numpy() / (1 + np.sqrt(np.maximum(M, 0)))
        i_row, i_col = S.argmax(1), S.argmax(0)  # the first maximum
        np.testing.assert_array_equal(got.s_row[po : po + n].numpy(), S.max(1))
        np.testing.assert_array_equal(got.c_row[po : po + n].numpy(), M[np.arange(n), i_row])
        np.testing.assert_array_equal(got.s_col[qo : qo + m].numpy(), S.max(0))
        np.testing.assert_array_equal(got.c_col[qo : qo + m].numpy(), M[i_col, np.arange(m)])
        po, qo = po + n, qo + m


@pytest.mark.parametrize("cost", ["normalized", "diagonal"])
def test_cpp_best_stability_reads_the_same_rows_from_the_solvers_last_pass(rng, cost):
    # The C++ best_stability takes each plan row from the solver's pass that stops it, as the pass
    # computes it, when its check is expected to stop the solve (the column errors of the two
    # iterations before, extrapolated); else it reads the plan after the solve. offer_margin=0 never
    # offers a pass (the plan read after the solve), inf offers every check after the first (passes
    # that do not stop: their rows dropped, the column bests started again), 1 is the rule. The
    # three give the same bits (and margin 1 is checked against numpy above), as does the solver
    # taking its rows' dot products two at a time.
    from topoot_gpu import _C
    from topoot_gpu.transport.results import SCALING_LIMIT

    sizes_p, sizes_q = [1, 37, 150, 6, 90, 0], [3, 41, 120, 1, 110, 5]
    P = np.concatenate([np.sort(rng.random((n, 2)), 1) for n in sizes_p])
    Q = np.concatenate([np.sort(rng.random((m, 2)), 1) for m in sizes_q])
    P[: sizes_p[0] + sizes_p[1]] = np.round(P[: sizes_p[0] + sizes_p[1]] * 8) / 8  # ties
    p_off, q_off = (np.concatenate([[0], np.cumsum(s)]).astype(np.int64) for s in (sizes_p, sizes_q))
    longest = 0
    for reg in (0.3, 0.05):
        args = (P, p_off, Q, q_off, cost == "diagonal", reg, 3000, 1e-9, SCALING_LIMIT[torch.float64], 2)
        runs = [_C.best_stability(*args, offer_margin=margin) for margin in (0.0, 1.0, float("inf"))]
        # and with every row's dot products two at a time (SinkhornOptions::share_dots_bytes)
        runs.append(_C.best_stability(*args, share_dots_bytes=0))
        longest = max(longest, int(runs[0][4].max()))
        for other in runs[1:]:
            for x, y in zip(runs[0], other):
                np.testing.assert_array_equal(x, y)
    assert longest >= 20  # so at margin inf some passes were offered and did not stop


@pytest.mark.parametrize("cost", ["normalized", "diagonal"])
@pytest.mark.parametrize("kind", ["random", "quantised", "band", "tiny", "huge", "far"])
def test_cpp_best_stability_screened_equals_every_stability_exact(rng, cost, kind):
    # The C++ best_stability estimates each stability in float first and computes exactly only those
    # that may change a best (blocks of eight); screen=False computes every one. Ties (quantised:
    # equal S in a row and in a column), a band along the diagonal (raw-noise diagrams), and scales
    # where the estimates are not trusted: normalized costs of diagrams within 1e-9 or spread to 1e30
    # (1 / scale beyond 2^20 or below 2^-60: every entry exact; the diagonal's d2 then beyond
    # float's range), and two far clusters at reg 0.002 (log domain) whose plan entries between them
    # underflow float. Sizes with partial blocks of eight; both ways to reach the rows (the solver's
    # last pass, or after it).
    from topoot_gpu import _C
    from topoot_gpu.transport.results import SCALING_LIMIT

    def points(n):
        if kind == "band":
            low = rng.random(n) * 0.9
            return np.stack([low, low + 0.1 * rng.random(n)], 1)
        pts = np.sort(rng.random((n, 2)), 1)
        if kind == "quantised":
            return np.round(pts * 6) / 6
        if kind == "far":  # two clusters: the plan between them is ~exp(-1 / reg) smaller
            pts[: n // 2] += 40.0
        return pts * {"tiny": 1e-9, "huge": 1e30}.get(kind, 1.0)

    sizes_p, sizes_q = [1, 37, 150, 9, 0, 64], [3, 41, 123, 1, 5, 70]
    P = np.concatenate([points(n) for n in sizes_p])
    Q = np.concatenate([points(m) for m in sizes_q])
    p_off, q_off = (np.concatenate([[0], np.cumsum(s)]).astype(np.int64) for s in (sizes_p, sizes_q))
    reg = 0.002 if kind == "far" else 0.3
    if cost == "diagonal" and kind == "huge":
        reg = 1e62  # the costs reach 1e60
    args = (P, p_off, Q, q_off, cost == "diagonal", reg, 2000, 1e-9, SCALING_LIMIT[torch.float64], 2)
    for margin in (0.0, 1.0):
        exact = _C.best_stability(*args, offer_margin=margin, screen=False)
        screened = _C.best_stability(*args, offer_margin=margin)
        for x, y in zip(exact, screened):
            np.testing.assert_array_equal(x, y)
    assert np.isfinite(exact[0]).all() and (exact[0] >= 0).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dots_two_rows_at_a_time_are_the_same(rng, dtype):
    # The scaling domain takes its rows' dot products two at a time for long rows
    # (SinkhornOptions::share_dots_bytes, 32 KiB); here at every length and at none, on packed
    # problems with odd row counts and row lengths that leave every kind of tail.
    from topoot_gpu import _C
    from topoot_gpu.transport.padded import flat_layout
    from topoot_gpu.transport.results import SCALING_LIMIT

    sizes = [(1, 1), (3, 5), (7, 2), (13, 31), (9, 33), (64, 40), (21, 77), (40, 130)]
    _, a, b, M, packed = packed_problems(rng, sizes)
    a, b, M = (x.to(dtype) for x in (a, b, M))
    kernel = getattr(_C, "sinkhorn_f32" if dtype == torch.float32 else "sinkhorn_f64")
    runs = [
        kernel(*flat_layout(a, b, M, packed), 0.05, 2000, 1e-6, 0, SCALING_LIMIT[dtype], True, 1, share_dots_bytes=t)
        for t in (2**62, 0)
    ]
    assert runs[0][8]
    for x, y in zip(runs[0][:5], runs[1][:5]):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("domain", ["scaling", "log"])
def test_every_padded_plan_entry_is_written(rng, domain):
    # The C++ backend zeroes only the padding when a problem's real rows and columns come first and
    # writes its real block in place; otherwise it zeroes the whole problem and scatters the real
    # entries. Either way every entry is written: freed NaN memory of the plan's size (reused by the
    # next allocation where glibc keeps freed blocks) must not show through, and each problem's
    # real entries are its own solve's.
    import topoot_gpu

    n = m = 12
    a = torch.zeros(5, n, dtype=torch.float64)
    b = torch.zeros(5, m, dtype=torch.float64)
    real_rows = [range(7), [0, 2, 3, 8, 11], range(n), [], range(4)]
    real_cols = [range(5), [1, 2, 6, 7], range(m), range(3), [0, 3, 9]]
    for k, (rows, cols) in enumerate(zip(real_rows, real_cols)):
        a[k, list(rows)] = torch.from_numpy(rng.random(len(rows)) + 0.1)
        b[k, list(cols)] = torch.from_numpy(rng.random(len(cols)) + 0.1)
        if len(rows) and len(cols):
            a[k] /= a[k].sum()
            b[k] /= b[k].sum()
    M = torch.from_numpy(rng.random((5, n, m)))
    topoot_gpu.keep_freed_memory()
    garbage = np.full(5 * n * m, np.nan)
    del garbage
    got = sinkhorn(a, b, M, reg=0.3, domain=domain, num_threads=1)
    for k, (rows, cols) in enumerate(zip(real_rows, real_cols)):
        rows, cols = list(rows), list(cols)
        pad = torch.ones(n, m, dtype=torch.bool)
        pad[np.ix_(rows, cols)] = False
        assert torch.all(got.plan[k][pad] == 0), k
        if rows and cols:
            alone = sinkhorn(a[k, rows][None], b[k, cols][None], M[k][np.ix_(rows, cols)][None], reg=0.3, domain=domain)
            assert torch.equal(got.plan[k][np.ix_(rows, cols)], alone.plan[0]), k


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("domain", ["scaling", "log"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_plans_written_with_streaming_stores_are_the_same(rng, dtype, domain, layout):
    # Large plans are written with non-temporal stores, each problem's block front to back with its
    # padding (SinkhornOptions::stream_plan_bytes, 16 MiB by default); the C++ kernel is called here
    # with the threshold at 0 and out of reach, on a batch with padding in every place (leading,
    # scattered, whole rows and columns, empty problems) and packed problems of odd sizes, which
    # start at every alignment. Freed NaN memory of the plan's size comes back to the next
    # allocation where glibc keeps freed blocks: an entry left unwritten shows.
    import topoot_gpu
    from topoot_gpu import _C
    from topoot_gpu.transport.padded import flat_layout
    from topoot_gpu.transport.results import SCALING_LIMIT

    sizes = [(1, 1), (3, 5), (7, 2), (0, 3), (13, 11), (2, 0), (9, 31), (64, 33), (5, 5)]
    problems, a, b, M, packed = packed_problems(rng, sizes, zero_weights=True)
    if layout == "padded":
        a, b, M = padded(problems)
        for k in (2, 6):  # padding rows and columns before real ones
            a[k] = a[k].roll(1)
            b[k] = b[k].roll(2)
            M[k] = M[k].roll((1, 2), (0, 1))
        packed = None
    a, b, M = (x.to(dtype) for x in (a, b, M))
    kernel = getattr(_C, "sinkhorn_f32" if dtype == torch.float32 else "sinkhorn_f64")
    code = {"scaling": 0, "log": 1}[domain]
    topoot_gpu.keep_freed_memory()
    runs = []
    for threshold in (2**62, 0):
        garbage = np.full(M.numel(), np.nan, dtype=M.numpy().dtype)
        del garbage
        out = kernel(*flat_layout(a, b, M, packed), 0.05, 2000, 1e-6, code, SCALING_LIMIT[dtype], True, 1,
                     stream_plan_bytes=threshold)  # fmt: skip
        plan_finite = out[8]
        assert plan_finite and np.isfinite(out[0]).all()
        runs.append(out[:5])
    for x, y in zip(*runs):
        np.testing.assert_array_equal(x, y)
    if layout == "padded":  # and the padding is zero
        plan = runs[1][0].reshape(M.shape)
        assert (plan[(a == 0).numpy()] == 0).all() and (plan.transpose(0, 2, 1)[(b == 0).numpy()] == 0).all()
