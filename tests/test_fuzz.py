"""Fuzzing every public function and the CLI with hypothesis: dtypes, shapes (empty included),
strides, extreme finite values, NaN/inf, grad-requiring tensors and wrong types. Each call must end
in a ``ValueError`` whose message starts with the name of an argument, or in a result that holds no
NaN where the inputs held none (and, where a reference exists, equals it). Any other exception, a
crash or a hang fails."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from topoot_gpu import (
    HeadConfig,
    SelectionConfig,
    best_match,
    best_stability,
    cubical_persistence,
    diagram_costs,
    map_features,
    persistence_diagrams,
    pseudo_labels,
    refine,
    sinkhorn,
    stability,
    train_heads,
)

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)

NUMPY_DTYPES = [np.float16, np.float32, np.float64, np.int32, np.uint8, np.bool_, np.complex64]
EXTREMES = [0.0, -0.0, 1.0, -1.0, 5e-324, 1e-300, 1e154, -1e300, 1.7e308, -1.7e308, np.nan, np.inf, -np.inf]


def _elements(dtype) -> st.SearchStrategy:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        top = float(np.finfo(dtype).max)
        extreme = [x for x in EXTREMES if not np.isfinite(x) or abs(x) <= top]
        bound = min(1e6, top)
        return st.one_of(st.floats(-bound, bound, width=8 * dtype.itemsize), st.sampled_from(extreme)).map(dtype.type)
    return hnp.from_dtype(dtype)


@st.composite
def arrays(draw, min_dims=0, max_dims=4, max_side=6) -> object:
    """An array or tensor of any dtype and shape (sides 0..max_side), maybe strided or reversed,
    maybe a tensor that requires grad, maybe something that is not an array at all."""
    kind = draw(st.sampled_from(["numpy", "torch", "torch_grad", "list", "scalar", "none", "string"]))
    if kind in ("none", "string", "scalar"):
        return {"none": None, "string": "maps", "scalar": draw(st.floats(allow_nan=True))}[kind]
    dtype = draw(st.sampled_from(NUMPY_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=0, max_side=max_side))
    a = draw(hnp.arrays(dtype, shape, elements=_elements(dtype)))
    if a.ndim and draw(st.booleans()):
        a = a[(slice(None, None, -1),) * a.ndim]  # negative strides
    if kind == "list":
        return a.tolist()
    if kind == "numpy":
        return a
    t = torch.from_numpy(np.array(a, order="C", copy=True))
    if kind == "torch_grad" and t.is_floating_point():
        t = t.float().requires_grad_(True)
    return t


NAME = re.compile(r"^[A-Za-z_][\w\[\], ]*:")


def _finite(x) -> bool:
    if isinstance(x, torch.Tensor):
        return x.is_floating_point() and bool(torch.isfinite(x).all()) or not x.is_floating_point()
    if isinstance(x, np.ndarray):
        return x.dtype.kind != "f" or bool(np.isfinite(x).all())
    return True


def _all_finite(*inputs) -> bool:
    for x in inputs:
        if isinstance(x, (np.ndarray, torch.Tensor)):
            arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
            if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
                return False
        elif isinstance(x, float) and not np.isfinite(x):
            return False
    return True


def _call(f, *args, **kwargs):
    """The call's result, or None after a ValueError naming an argument; anything else fails."""
    try:
        return f(*args, **kwargs)
    except ValueError as e:
        assert NAME.match(str(e)), f"a ValueError that names no argument: {e!r}"
        return None


@FUZZ
@given(maps=arrays(max_dims=4, max_side=7), filtration=st.sampled_from(["sublevel", "superlevel", "x"]))
def test_fuzz_cubical_persistence(maps, filtration):
    d = _call(cubical_persistence, maps, filtration=filtration)
    if d is not None:
        assert np.isfinite(d.birth).all()
        finite_death = d.death[d.death_pixel >= 0]
        assert np.isfinite(finite_death).all()


@FUZZ
@given(a=arrays(max_dims=3), b=arrays(max_dims=3), M=arrays(max_dims=4), reg=st.sampled_from([0.3, 1e-3, 0, "x", None]))
def test_fuzz_sinkhorn(a, b, M, reg):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # non-convergence is reported, not an error
        r = _call(sinkhorn, a, b, M, reg=reg, max_iter=50)
    if r is not None:
        assert torch.isfinite(r.plan).all()


@st.composite
def consistent_problem(draw):
    """A well-formed batch with extreme but finite values, so the call must succeed."""
    B = draw(st.integers(0, 3))
    n, m = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    scale = draw(st.sampled_from([1e-300, 1e-5, 1.0, 1e5, 1e100]))
    M = draw(hnp.arrays(np.float64, (B, n, m), elements=st.floats(0, 1))) * scale
    return np.full((B, n), 1 / n), np.full((B, m), 1 / m), M


@FUZZ
@given(problem=consistent_problem(), reg=st.sampled_from([1e-3, 0.3, 10.0]))
def test_fuzz_sinkhorn_on_valid_extreme_problems_matches_pot(problem, reg):
    import warnings

    ot = pytest.importorskip("ot")
    a, b, M = problem
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = _call(sinkhorn, a, b, M, reg=reg, max_iter=200, domain="log")
        if r is None:
            return  # M / reg overflowed: refused with a message
        assert torch.isfinite(r.plan).all()
        for k in range(len(M)):
            want = ot.sinkhorn(a[k], b[k], M[k], reg, method="sinkhorn_log", numItermax=200, stopThr=1e-9)
            np.testing.assert_allclose(r.plan[k].numpy(), want, rtol=1e-6, atol=1e-12)


@FUZZ
@given(
    P=st.one_of(arrays(max_dims=3), st.lists(arrays(max_dims=2, max_side=4), max_size=3)),
    Q=st.one_of(arrays(max_dims=3), st.lists(arrays(max_dims=2, max_side=4), max_size=3)),
    kind=st.sampled_from(["normalized", "diagonal", 3]),
)
def test_fuzz_diagram_costs(P, Q, kind):
    r = _call(diagram_costs, P, Q, kind=kind)
    if r is not None:
        assert all(torch.isfinite(x).all() for x in r)


@FUZZ
@given(P=arrays(max_dims=2), p_sizes=arrays(max_dims=1), Q=arrays(max_dims=2), q_sizes=arrays(max_dims=1))
def test_fuzz_best_stability(P, p_sizes, Q, q_sizes):
    r = _call(best_stability, P, p_sizes, Q, q_sizes, reg=0.3, max_iter=50)
    if r is not None:
        assert not torch.isnan(r.s_row).any() and not torch.isnan(r.s_col).any()


@FUZZ
@given(S=arrays(max_dims=3), dim=st.sampled_from([1, 2, 0, "2", True]))
def test_fuzz_best_match(S, dim):
    M = S.clone() if isinstance(S, torch.Tensor) else S
    r = _call(best_match, S, M, dim=dim)
    if r is not None and _all_finite(S):
        assert not torch.isnan(r[0]).any()


@FUZZ
@given(
    x=arrays(max_dims=5, max_side=6),
    dims=st.sampled_from([(0, 1), (0,), (1,), (), (2,), "0"]),
    min_persistence=st.sampled_from([0.0, 0.5, -1, np.float32(0.1), np.nan, "0", None]),
)
def test_fuzz_persistence_diagrams(x, dims, min_persistence):
    from topoot_gpu import total_persistence

    d = _call(persistence_diagrams, x, dims=dims, min_persistence=min_persistence)
    if d is not None:
        loss = total_persistence(d, reduction="sum")
        assert torch.isfinite(loss)
        if x.requires_grad:
            loss.backward()
            assert torch.isfinite(x.grad).all()


@FUZZ
@given(plan=arrays(max_dims=3), M=arrays(max_dims=3))
def test_fuzz_stability(plan, M):
    S = _call(stability, plan, M)
    if S is not None and _all_finite(plan, M):
        assert not torch.isnan(S).any()


@FUZZ
@given(
    maps=arrays(min_dims=2, max_dims=3, max_side=6),
    image=st.sampled_from([0, 1, -1, 99, True, 1.5, "0", np.int64(0)]),
    dim=st.sampled_from([0, 1, 2, None, "1", np.int32(1)]),
    tau=st.sampled_from([0.5, np.float32(0.1), np.nan, np.inf, "x", None, True]),
)
def test_fuzz_diagram_methods(maps, image, dim, tau):
    d = _call(cubical_persistence, maps)
    if d is None:
        return
    _call(d.select, image=image, dim=dim)
    if dim is not None:
        rows = _call(d.intervals, image, dim)
        if rows is not None:
            assert rows.shape[1] == 2
    cut = _call(d.at_threshold, tau)
    if cut is not None:
        assert len(cut) <= len(d)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(maps=arrays(min_dims=2, max_dims=3, max_side=8), features=st.one_of(st.none(), arrays(max_dims=4, max_side=4)))
def test_fuzz_refine_op(maps, features):
    # The op takes tensors only: anything else is refused by the op's schema (a TypeError or
    # RuntimeError raised by torch before our code runs) or by refine's checks (a ValueError).
    if not isinstance(maps, torch.Tensor) or not (features is None or isinstance(features, torch.Tensor)):
        with pytest.raises((TypeError, RuntimeError, ValueError)) as info:
            torch.ops.topoot.refine(maps, features, 0)
        assert info.type is not ValueError or NAME.match(str(info.value))
        return
    out = _call(torch.ops.topoot.refine, maps, features, 0)
    if out is not None:
        assert out[0].shape == maps.shape and out[0].dtype == torch.bool


@FUZZ
@given(maps=arrays(max_dims=4, max_side=9))
def test_fuzz_map_features(maps):
    f = _call(map_features, maps)
    if f is not None:
        assert _finite(f)


@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(maps=arrays(min_dims=2, max_dims=3, max_side=8), seed=st.sampled_from([0, -1, np.int64(5), "1", 2.5]))
def test_fuzz_pseudo_labels_and_refine(maps, seed):
    s = _call(pseudo_labels, maps, config=SelectionConfig(max_iter=200))
    if s is not None:
        assert s.labels.dtype in (np.bool_, torch.bool)
    r = _call(refine, maps, seed=seed, config=None)
    if r is not None:
        assert r.mask.shape == r.pseudo_label.shape


@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
@given(features=arrays(max_dims=5, max_side=5), labels=arrays(max_dims=4, max_side=5))
def test_fuzz_train_heads(features, labels):
    if isinstance(labels, torch.Tensor) and labels.dtype != torch.bool and labels.numel() and labels.dim() == 3:
        labels = labels.detach() > 0
    m = _call(train_heads, features, labels, config=HeadConfig(epochs=1, ot_iter=3))
    if m is not None:
        assert m.dtype == torch.bool


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    content=st.one_of(
        st.binary(max_size=64),
        hnp.arrays(
            st.sampled_from([np.float32, np.float64, np.int16, np.complex64, np.bool_]),
            hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6),
            elements=None,
        ),
    ),
    suffix=st.sampled_from([".npy", ".png", ".npz", ".txt"]),
)
def test_fuzz_cli_refine(tmp_path_factory, content, suffix):
    folder = tmp_path_factory.mktemp("cli")
    path = folder / f"input{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif suffix == ".npz":
        np.savez(path, a=content)
    else:
        with open(path, "wb") as fh:
            np.save(fh, content)
    run = subprocess.run(
        [sys.executable, "-m", "topoot_gpu", "refine", path.name, "--out", "out"],
        capture_output=True, text=True, cwd=folder, timeout=600,
    )  # fmt: skip
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert run.returncode in (0, 1), run.stderr
    if run.returncode == 1:
        assert "error:" in run.stderr
