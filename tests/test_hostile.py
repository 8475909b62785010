"""Hostile inputs and long runs (issue 15): grad-requiring inputs, Ctrl-C in the C++ kernels,
bounded memory, extreme finite values, the CLI's bad paths, and one rule for every numeric option.
The fuzz suite over every public function is ``tests/test_fuzz.py``."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

import topoot_gpu
from topoot_gpu import (
    HeadConfig,
    SelectionConfig,
    best_match,
    best_stability,
    cubical_persistence,
    diagram_costs,
    map_features,
    pseudo_labels,
    refine,
    sinkhorn,
    train_heads,
)
from topoot_gpu.core.maps import normalise_maps
from topoot_gpu.testing import blob_maps

HEAD_BACKENDS = ["cpp", "torch", "triton"]


def _head_backend(name: str) -> str:
    if name == "triton":
        pytest.importorskip("triton")
    return name


# --- autograd state of the inputs ---------------------------------------------------------------


@pytest.mark.parametrize("head_backend", HEAD_BACKENDS)
def test_features_that_require_grad_are_trained_on_a_detached_copy(rng, head_backend):
    maps = torch.from_numpy(blob_maps(rng, 2, 20, 18))
    plain = torch.from_numpy(rng.normal(size=(2, 6, 5, 5))).float()
    leaf = plain.clone().requires_grad_(True)
    graph = plain * torch.ones((), requires_grad=True)  # a non-leaf, as a backbone without no_grad gives
    backend = _head_backend(head_backend)
    expected = refine(maps, plain, seed=4, head_backend=backend).mask
    for features in (leaf, graph):
        assert torch.equal(refine(maps, features, seed=4, head_backend=backend).mask, expected)
    labels = refine(maps, plain, seed=4).pseudo_label
    expected_heads = train_heads(plain, labels, seed=2, backend=backend)
    assert torch.equal(train_heads(graph, labels, seed=2, backend=backend), expected_heads)
    assert leaf.grad is None  # nothing flowed back into the caller's graph


def test_op_takes_features_that_require_grad(rng):
    maps = torch.from_numpy(blob_maps(rng, 1, 16, 16))
    features = torch.from_numpy(rng.normal(size=(1, 4, 4, 4))).float()
    mask, label = torch.ops.topoot.refine(maps, features.clone().requires_grad_(True), 1)
    mask0, label0 = torch.ops.topoot.refine(maps, features, 1)
    assert torch.equal(mask, mask0) and torch.equal(label, label0)


@pytest.mark.parametrize("backend", ["cpp", "torch"])
def test_sinkhorn_reads_grad_requiring_inputs_detached(rng, backend):
    M = torch.from_numpy(rng.random((3, 6, 5)))
    a, b = torch.full((3, 6), 1 / 6, dtype=torch.float64), torch.full((3, 5), 0.2, dtype=torch.float64)
    got = sinkhorn(a.requires_grad_(True), b, M.clone().requires_grad_(True), reg=0.3, backend=backend)
    want = sinkhorn(a.detach(), b, M, reg=0.3, backend=backend)
    assert torch.equal(got.plan, want.plan) and not got.plan.requires_grad


# --- Ctrl-C ----------------------------------------------------------------------------------------

INTERRUPTED = r"""
import sys, time
import numpy as np
from topoot_gpu import cubical_persistence, pseudo_labels, sinkhorn
kind, threads = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
def long_call():
    if kind == "sinkhorn":  # about an hour uninterrupted
        a = np.full((2048, 128), 1 / 128)
        sinkhorn(a, a, rng.random((2048, 128, 128)), reg=1e-3, max_iter=10**6, stop_thr=0.0, num_threads=threads)
    elif kind == "persistence":
        m = rng.random((1, 3000, 3000))
        for _ in range(1000):
            cubical_persistence(m, num_threads=threads)
    else:
        m = rng.random((4, 224, 224))
        for _ in range(1000):
            pseudo_labels(m)
try:
    print("start", flush=True)
    long_call()
except KeyboardInterrupt:
    t = time.perf_counter()
    # The library works as before after an interrupt.
    small = rng.random((3, 9, 8))
    d = cubical_persistence(small, num_threads=threads)
    assert len(d) > 0
    print(f"interrupted {time.perf_counter() - t:.3f}", flush=True)
    sys.exit(0)
print("finished", flush=True)
sys.exit(3)
"""


@pytest.mark.parametrize("kind,threads", [("sinkhorn", 2), ("sinkhorn", 1), ("persistence", 1), ("selection", 2)])
def test_ctrl_c_interrupts_long_cpp_calls_within_two_seconds(tmp_path, kind, threads):
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, kind, str(threads)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "start"
        time.sleep(1.0)  # well inside the long call
        sent = time.perf_counter()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=30)
        elapsed = time.perf_counter() - sent
    finally:
        child.kill()
    assert child.returncode == 0, err[-2000:]
    assert "interrupted" in out
    assert elapsed < 2.0, f"{kind}: {elapsed:.2f} s from SIGINT to exit"


# --- memory bounds -------------------------------------------------------------------------------

BOUNDED = r"""
import resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import numpy as np, torch
from topoot_gpu import pseudo_labels, refine
from topoot_gpu.core.maps import normalised_map_features
rng = np.random.default_rng(0)
# 1024 x 1024 noise blurred with sigma 1: ~54k candidates per level map, dense 54k x 54k problems.
blurred = normalised_map_features(torch.from_numpy(rng.random((1, 1024, 1024))))[:, 1].double().numpy()
try:
    labels = pseudo_labels(blurred).labels
    print("labels", labels.shape)
except ValueError as e:
    print("refused:", e)
    assert "max_memory" in str(e) and "GiB" in str(e)
"""


def test_selection_on_a_map_with_huge_transport_problems_runs_or_refuses_within_an_address_space_limit(tmp_path):
    run = subprocess.run(
        [sys.executable, "-c", BOUNDED, str(8 * 2**30)], capture_output=True, text=True, cwd=tmp_path, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith(("labels", "refused:")), run.stdout


def test_transport_steps_are_chunked_to_the_budget_with_the_same_results(rng):
    n = rng.integers(1, 30, size=12)
    m = rng.integers(1, 30, size=12)
    P, Q = rng.random((int(n.sum()), 2)), rng.random((int(m.sum()), 2))
    P.sort(1)
    Q.sort(1)
    for backend in ("cpp", "torch"):
        whole = best_stability(P, n, Q, m, reg=0.3, backend=backend)
        largest = int((n * m).max())
        per = topoot_gpu.transport.api.BYTES_PER_ENTRY[backend]
        budget = largest * per * (3 if backend == "torch" else 1)
        small = best_stability(P, n, Q, m, reg=0.3, backend=backend, max_memory=budget)
        for f in ("s_row", "c_row", "s_col", "c_col", "n_iter"):
            if backend == "cpp":  # problem by problem: the same bits
                assert torch.equal(getattr(small, f), getattr(whole, f)), f
            else:  # padded to a chunk's largest problem: the reductions' order changes with the padding
                torch.testing.assert_close(getattr(small, f), getattr(whole, f), rtol=1e-12, atol=1e-15)
        chunks = topoot_gpu.transport.api._memory_plan(n, m, backend, budget, 2)[1]
        assert (len(chunks) > 1) == (backend == "torch")
        with pytest.raises(ValueError, match=r"max_memory: a transport problem of \d+ x \d+ points needs"):
            best_stability(P, n, Q, m, reg=0.3, backend=backend, max_memory=largest * per - 1)


def test_heads_are_trained_in_sub_batches_within_the_budget(rng):
    maps = blob_maps(rng, 3, 20, 18)
    labels = torch.from_numpy(pseudo_labels(maps).labels)
    labels[:, 0, 0], labels[:, 0, 1] = True, False  # every image trains
    features = torch.from_numpy(rng.normal(size=(3, 5, 20, 18))).float()
    whole = train_heads(features, labels, seed=3)
    from topoot_gpu.head.api import bytes_per_image

    per = bytes_per_image("cpp", HeadConfig(), 5, 20 * 18, 4)
    one_at_a_time = train_heads(features, labels, seed=3, config=HeadConfig(max_memory=per))
    assert torch.equal(one_at_a_time, whole)
    with pytest.raises(ValueError, match="max_memory: training the head on one image"):
        train_heads(features, labels, seed=3, config=HeadConfig(max_memory=per - 1))


# --- extreme finite values -----------------------------------------------------------------------


def test_sinkhorn_warns_when_problems_do_not_converge_and_never_returns_nan(rng):
    a = torch.full((2, 5), 0.2, dtype=torch.float64)
    M = torch.from_numpy(rng.random((2, 5, 5)))
    with pytest.warns(RuntimeWarning, match="2 of 2 problems did not reach stop_thr"):
        res = sinkhorn(a, a, M, reg=1e-20)
    assert torch.isfinite(res.plan).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a converging call stays quiet
        sinkhorn(a, a, M, reg=0.5, max_iter=5000)
    with pytest.raises(ValueError, match="M: max \\|M\\| / reg"):
        sinkhorn(a, a, M * 1.7e308, reg=0.3)
    with pytest.warns(RuntimeWarning):  # costs near the float maximum whose M / reg fits: finite plans
        assert torch.isfinite(sinkhorn(a, a, M * 1e300, reg=0.3).plan).all()
    with pytest.raises(ValueError, match="M: max \\|M\\| / reg"):
        sinkhorn(a.float(), a.float(), (M * 1e37).float(), reg=0.01)


def test_normalized_costs_are_scale_free_for_any_finite_points(rng):
    P = [rng.random((int(rng.integers(1, 6)), 2)) for _ in range(3)]
    Q = [rng.random((int(rng.integers(1, 6)), 2)) for _ in range(3)]
    M, a, b = diagram_costs(P, Q)
    # The released normaliser's 1e-12 (M = (D / (max D + 1e-12))^2) moves the costs by about
    # 2e-12 / max D relative to D / max D, and is negligible once the points are scaled up: the
    # costs agree to that (a fixed 1e-12 failed on problems whose largest distance was ~0.5).
    dmax = min(float(np.sqrt(((p[:, None] - q[None]) ** 2).sum(-1)).max()) for p, q in zip(P, Q))
    tol = 4e-12 / dmax + 1e-13
    for e in (600, 1000, 1023):  # coordinates up to ~1.7e308: squares far beyond float64
        Mb, ab, bb = diagram_costs([np.ldexp(p, e) for p in P], [np.ldexp(q, e) for q in Q])
        assert torch.isfinite(Mb).all()
        torch.testing.assert_close(Mb, M, rtol=tol, atol=tol)
        assert torch.equal(ab, a) and torch.equal(bb, b)
    with pytest.raises(ValueError, match="P, Q: squared distances overflow"):
        diagram_costs([np.ldexp(p, 1000) for p in P], Q, kind="diagonal")


def test_maps_spanning_the_float_range_are_normalised_without_overflow(rng):
    m = rng.random((2, 12, 11))
    huge = np.ldexp(2 * m - 1, 1024) * (1 - 2**-53)  # values up to ~+-1.8e308
    with np.errstate(over="ignore"):
        assert np.isfinite(huge).all() and not np.isfinite(huge.max() - huge.min())
    n = normalise_maps(huge)
    assert np.isfinite(n).all() and n.min() == 0 and n.max() == 1
    assert np.array_equal(pseudo_labels(huge).labels, pseudo_labels(np.ldexp(huge, -1024)).labels)
    gudhi = pytest.importorskip("gudhi")  # noqa: F841
    pytest.importorskip("ot")
    from topoot_gpu.selection import reference

    assert np.array_equal(pseudo_labels(huge).labels, reference.pseudo_labels(huge).labels)
    f = map_features(huge)
    assert np.isfinite(f).all()


def test_negative_strides_are_accepted_everywhere(rng):
    maps = rng.random((3, 10, 9))
    flipped = maps[::-1, ::-1, ::-2]
    same = np.ascontiguousarray(flipped)
    d1, d2 = cubical_persistence(flipped), cubical_persistence(same)
    assert np.array_equal(d1.birth, d2.birth) and np.array_equal(d1.death_pixel, d2.death_pixel)
    assert np.array_equal(pseudo_labels(flipped).labels, pseudo_labels(same).labels)
    assert np.array_equal(map_features(flipped), map_features(same))
    a = np.full((2, 4), 0.25)[:, ::-1]
    M = rng.random((2, 4, 4))[:, ::-1, ::-1]
    assert torch.equal(sinkhorn(a, a, M, reg=0.3).plan, sinkhorn(a.copy(), a.copy(), M.copy(), reg=0.3).plan)
    P = [rng.random((3, 2))[::-1], rng.random((4, 2))[:, ::-1]]
    Q = [rng.random((2, 2))[::-1], rng.random((5, 2))]
    got, want = diagram_costs(P, Q), diagram_costs([p.copy() for p in P], [q.copy() for q in Q])
    assert all(torch.equal(x, y) for x, y in zip(got, want))
    pts = rng.random((6, 2))
    got = best_stability(pts[::-1], [2, 4], pts[:, ::-1], [3, 3], reg=0.3)
    want = best_stability(pts[::-1].copy(), [2, 4], pts[:, ::-1].copy(), [3, 3], reg=0.3)
    assert torch.equal(got.s_row, want.s_row) and torch.equal(got.c_col, want.c_col)
    # one element left of a reversed view: C-contiguous by numpy's flags, its stride still negative
    one = np.zeros((2, 1), dtype=np.float16)[::-1][:1]
    assert one.strides[0] < 0 and map_features(one).shape == (8, 1, 1)


# --- clear errors: one rule for numbers, indices, shapes ----------------------------------------------


NOT_NUMBERS = [None, True, np.bool_(False), "0.3", b"1", 1 + 2j, [0.3], float("nan")]


@pytest.mark.parametrize("value", NOT_NUMBERS)
def test_every_numeric_option_rejects_what_is_not_a_number(rng, value):
    a = torch.full((1, 3), 1 / 3, dtype=torch.float64)
    M = torch.rand(1, 3, 3, dtype=torch.float64)
    d = cubical_persistence(rng.random((2, 5, 5)))
    calls = {
        "reg": lambda: sinkhorn(a, a, M, reg=value),
        "stop_thr": lambda: sinkhorn(a, a, M, reg=0.3, stop_thr=value),
        "max_iter": lambda: sinkhorn(a, a, M, reg=0.3, max_iter=value),
        "tau": lambda: d.at_threshold(value),
        "seed": lambda: refine(rng.random((8, 8)), seed=value),
        "num_threads": lambda: cubical_persistence(rng.random((5, 5)), num_threads=value),
    }
    for field in ("reg", "max_iter", "stop_thr", "top_m", "top_k", "delta_sub", "delta_sup", "max_memory"):
        calls[field + " (SelectionConfig)"] = lambda f=field: SelectionConfig(**{f: value})
    for field in ("embed_dim", "epochs", "lr", "pair_batch", "margin", "ot_reg", "ot_iter", "ot_eps", "max_memory"):
        calls[field + " (HeadConfig)"] = lambda f=field: HeadConfig(**{f: value})
    for name, call in calls.items():
        if value is None and name in ("num_threads", "max_memory (SelectionConfig)", "max_memory (HeadConfig)"):
            continue  # None is the documented default there
        with pytest.raises(ValueError, match=f"^{name.split(' ')[0]}:"):
            call()


def test_numpy_scalars_are_numbers_everywhere(rng):
    a = torch.full((1, 3), 1 / 3, dtype=torch.float64)
    M = torch.rand(1, 3, 3, dtype=torch.float64)
    plain = sinkhorn(a, a, M, reg=0.3, max_iter=100)
    numpy = sinkhorn(a, a, M, reg=np.float64(0.3), max_iter=np.int64(100), stop_thr=np.float32(1e-9))
    assert torch.equal(plain.plan, numpy.plan)
    assert SelectionConfig(reg=np.float32(0.5), top_m=np.int32(4)) == SelectionConfig(
        reg=float(np.float32(0.5)), top_m=4
    )
    assert HeadConfig(epochs=np.int64(2), lr=np.float16(0.5)).epochs == 2
    maps = rng.random((8, 8))
    assert np.array_equal(refine(maps, seed=np.uint8(3)).mask, refine(maps, seed=3).mask)
    d = cubical_persistence(rng.random((2, 5, 5)))
    assert len(d.select(image=np.int64(1), dim=np.int32(0))) == len(d.select(image=1, dim=0))


def test_diagram_indices_are_checked(rng):
    d = cubical_persistence(rng.random((2, 6, 6)))
    for call, name in (
        (lambda: d.intervals(0, 7), "dim"),
        (lambda: d.intervals(1.5, 0), "image"),
        (lambda: d.intervals(2, 0), "image"),
        (lambda: d.select(image=99), "image"),
        (lambda: d.select(image=-1), "image"),
        (lambda: d.select(dim=5), "dim"),
        (lambda: d.select(image=True), "image"),
        (lambda: d.select(dim="1"), "dim"),
    ):
        with pytest.raises(ValueError, match=f"^{name}:"):
            call()


def test_best_match_on_empty_lines_and_bad_arguments():
    S = torch.rand(2, 3, 0, dtype=torch.float64)
    s, c, i = best_match(S, S.clone(), dim=2)
    assert s.shape == (2, 3) and (s == 0).all() and torch.isinf(c).all() and (i == -1).all()
    s, c, i = best_match(torch.rand(2, 0, 4), torch.rand(2, 0, 4), dim=1)
    assert s.shape == (2, 4) and (i == -1).all()
    S = torch.rand(2, 3, 4)
    for kwargs, name in (
        ({"dim": "2"}, "dim"),
        ({"dim": 0}, "dim"),
        ({"dim": True}, "dim"),
        ({"dim": 2, "mask": torch.ones(2, 3, 4)}, "mask"),
    ):
        with pytest.raises(ValueError, match=f"^{name}:"):
            best_match(S, S, **kwargs)
    with pytest.raises(ValueError, match="^M:"):
        best_match(S, torch.rand(2, 4, 3), dim=2)
    with pytest.raises(ValueError, match="^S:"):
        best_match(np.zeros((2, 3, 4)), S, dim=2)


def test_map_features_takes_maps_as_every_entry_point_does(rng):
    raw = rng.normal(size=(2, 9, 13)) * 50 + 3
    f = map_features(torch.from_numpy(raw))
    assert f.shape == (2, 8, 9, 13) and f.dtype == torch.float32
    torch.testing.assert_close(f[:, 0], torch.from_numpy(normalise_maps(raw)).float())
    assert isinstance(map_features(raw), np.ndarray) and map_features(raw[0]).shape == (8, 9, 13)
    for bad, pattern in (
        ([[1.0, 2.0]], "maps: expected a numpy array or a torch tensor"),
        (torch.rand(1, 1, 8, 8), "maps: expected shape"),
        (torch.rand(1, 0, 8), "maps: empty dimension"),
        (torch.full((1, 8, 8), float("nan")), "maps: contains NaN"),
        (torch.rand(1, 8, 8, dtype=torch.complex64), "maps: expected a floating dtype"),
        (np.zeros((4, 4), dtype=np.int64), "maps: expected a floating dtype"),
    ):
        with pytest.raises(ValueError, match=pattern):
            map_features(bad)
    assert torch.isfinite(map_features(torch.full((1, 8, 8), 1e300, dtype=torch.float64))).all()


def test_sinkhorn_and_diagram_costs_reject_non_real_inputs():
    a = torch.full((1, 2), 0.5)
    with pytest.raises(ValueError, match="^M:"):
        sinkhorn(a, a, torch.zeros(1, 2, 2, dtype=torch.complex64), reg=0.3)
    for P, name in (
        ("ab", "P"),
        ([np.zeros((2, 2), dtype=np.complex64)], r"P\[0\]"),
        ([np.array([["a", "b"]])], r"P\[0\]"),
    ):
        with pytest.raises(ValueError, match=f"^{name}:"):
            diagram_costs(P, [np.zeros((1, 2))])


def test_empty_labels_and_a_mismatched_op_batch_are_refused():
    with pytest.raises(ValueError, match="^labels: empty dimension"):
        train_heads(torch.rand(2, 4, 3, 32), torch.zeros(2, 0, 32, dtype=torch.bool))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(), pytest.raises(ValueError, match="^features: batch size 3"):
        torch.ops.topoot.refine(torch.rand(2, 16, 16), torch.rand(3, 4, 8, 8))
    with FakeTensorMode(), pytest.raises(ValueError, match="^features: expected"):
        torch.ops.topoot.refine(torch.rand(2, 16, 16), torch.rand(2, 8, 8))


# --- the CLI --------------------------------------------------------------------------------------


def _topoot(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "topoot_gpu", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_cli_goes_on_past_bad_maps_and_unwritable_outputs(tmp_path, rng):
    from PIL import Image

    maps = blob_maps(rng, 4, 24, 20)
    np.save(tmp_path / "good.npy", maps[0])
    Image.fromarray((255 * normalise_maps(maps[1:2])[0]).astype(np.uint8)).save(tmp_path / "good.png")
    bad = maps[2].copy()
    bad[3, 4] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    np.save(tmp_path / "other.npy", maps[3])
    np.save(tmp_path / "late.npy", maps[0])
    (tmp_path / "out" / "other_mask.npy").mkdir(parents=True)  # an output path that is a folder
    run = _topoot(
        "refine", "good.npy", "good.png", "bad.npy", "other.npy", "late.npy", "good.npy", "--out", "out", cwd=tmp_path
    )
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 1
    assert "bad" in run.stderr and "NaN" in run.stderr
    assert "other" in run.stderr and "cannot write" in run.stderr
    assert "listed more than once" in run.stderr
    out = tmp_path / "out"
    # good.npy and good.png both refined, under distinct names; the maps after the bad ones too.
    assert np.array_equal(np.load(out / "good_mask.npy"), refine(maps[0], seed=0).mask)
    assert (out / "good_2_mask.npy").is_file() and (out / "late_mask.npy").is_file()
    assert "3 masks written" in run.stdout and "2 failed" in run.stdout


def test_cli_reports_bad_output_folders_and_devices_cleanly(tmp_path, rng):
    np.save(tmp_path / "m.npy", blob_maps(rng, 1, 12, 12)[0])
    (tmp_path / "file").write_text("x")
    run = _topoot("refine", "m.npy", "--out", "file/sub", cwd=tmp_path)
    assert run.returncode == 2 and "--out" in run.stderr and "Traceback" not in run.stderr
    run = _topoot("refine", "m.npy", "--out", "o", "--device", "nonsense", cwd=tmp_path)
    assert run.returncode == 2 and "--device" in run.stderr and "Traceback" not in run.stderr
    if not torch.cuda.is_available():
        run = _topoot("refine", "m.npy", "--out", "o", "--device", "cuda", cwd=tmp_path)
        assert run.returncode == 2 and "--device cuda" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sqrt_rn_keeps_any_shape_and_strides(rng, dtype):
    # numpy gives a scalar, not an array, for a 0-d input (the fuzz test found stability() failing
    # on one); empty and strided tensors too; the bits are numpy's correctly rounded root.
    from topoot_gpu.core.numerics import sqrt_rn

    x = torch.from_numpy(rng.random((4, 6)) * 10).to(dtype)
    for t in (x[1, 2], x[:0], x[:, ::2].t(), x[None, 1:3]):
        r = sqrt_rn(t)
        assert r.shape == t.shape and r.dtype == dtype
        np.testing.assert_array_equal(r.numpy(), np.sqrt(t.numpy()))
