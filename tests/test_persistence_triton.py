"""The GPU persistence algorithm (basins, pointer jumping, elder rule on the basin graph) through
its Triton kernels, against the CPU union-find core: identical pairs with identical birth and death
pixels, every filtration, construction and dimension set, on fresh inputs of every kind.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set in conftest.py before
the kernel module is imported), so the logic is tested on every CI run; maps stay small there.
"""

from __future__ import annotations

import os

import pytest
import torch

if os.environ.get("CI"):
    import triton  # noqa: F401  (CI installs it: a missing triton must fail, not skip)
else:
    pytest.importorskip("triton")

from topoot_gpu import cubical_persistence  # noqa: E402
from topoot_gpu.persistence import _triton as kernels  # noqa: E402
from topoot_gpu.persistence._basins import basin_graph  # noqa: E402
from topoot_gpu.testing import diagram_rows as rows  # noqa: E402
from topoot_gpu.testing import persistence_batches as batches  # noqa: E402
from topoot_gpu.testing import persistence_cases, tied_maps  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# On a GPU these are the compiled Triton kernels' tests, so `pytest -m cuda` runs them there.
pytestmark = [pytest.mark.cuda] if torch.cuda.is_available() else []
CASES = persistence_cases


@pytest.mark.parametrize("construction,filtration", CASES)
def test_triton_pairs_and_pixels_equal_the_cpu_core(rng, construction, filtration):
    for maps in batches(rng):
        for dtype in (torch.float64, torch.float32):
            t = torch.from_numpy(maps).to(dtype)
            kw = dict(filtration=filtration, construction=construction)
            gpu = cubical_persistence(t.to(DEVICE), backend="triton", **kw)
            cpu = cubical_persistence(t, backend="cpp", **kw)
            assert rows(gpu) == rows(cpu), f"shape {maps.shape} {dtype}"
            assert gpu.batch_size == cpu.batch_size and gpu.shape == cpu.shape


def test_dims_subsets_and_single_map(rng):
    m = torch.from_numpy(tied_maps(rng, 1, 11, 13, levels=3)[0])
    for dims, threads in (((0,), 1), ((1,), 2), ((0, 1), None)):
        gpu = cubical_persistence(m.to(DEVICE), backend="triton", dims=dims, num_threads=threads)
        cpu = cubical_persistence(m, backend="cpp", dims=dims)
        assert rows(gpu) == rows(cpu)
        assert set(gpu.dim.tolist()) <= set(dims)


def test_kernels_give_basins_and_crossing_saddles(rng):
    # A direct check of the passes on a map small enough to reason about: two minima.
    a = torch.tensor([[0.0, 1.0, 2.0, 1.5, 0.5]], dtype=torch.float64, device=DEVICE)
    parent = kernels.descent(a.reshape(1, -1), 1, 5, conn8=True, outside=False)
    assert parent.cpu().tolist() == [[0, 0, 1, 4, 4, 5]]
    root = kernels.jump(parent)
    assert root.cpu().tolist() == [[0, 0, 0, 4, 4, 5]]
    saddle = kernels.boundary(a.reshape(1, -1), root, 1, 5, conn8=True).view(5, 4)
    # Only the pair (2, 3) crosses the basins; its saddle is pixel 2 (value 2.0, the later one).
    assert saddle[:, 0].cpu().tolist() == [-1, -1, 2, -1, -1]
    assert (saddle[:, 1:] == -1).all()
    # The dual pass: every border pixel descends to the outside node 5.
    dual = kernels.descent(-a.reshape(1, -1), 1, 5, conn8=False, outside=True)
    assert dual.cpu().tolist() == [[5, 5, 5, 5, 5, 5]]


def test_jump_reads_nothing_back_on_the_host(monkeypatch):
    # The rounds are launched back to back: no flag is read on the host (a .item()/bool per round
    # was a device synchronisation per round).
    a = torch.arange(40, dtype=torch.float64, device=DEVICE).reshape(1, -1)
    parent = kernels.descent(a, 1, 40, conn8=False, outside=False)

    def synchronising(*args):
        raise AssertionError("jump read a value back on the host")

    for name in ("item", "__bool__", "tolist", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, synchronising)
    root = kernels.jump(parent)
    monkeypatch.undo()
    assert root.cpu().tolist() == [[0] * 40 + [40]]


@pytest.mark.parametrize("conn8", [True, False])
def test_basin_graph_is_the_lowest_saddle_of_each_basin_pair_in_kruskal_order(rng, conn8):
    # Against a plain loop over every neighbour pair; tied values so that the index tie-break counts.
    B, H, W = 3, int(rng.integers(2, 12)), int(rng.integers(2, 12))
    maps = torch.from_numpy(tied_maps(rng, B, H, W, levels=int(rng.integers(2, 6)))).to(DEVICE)
    w = maps.reshape(B, H * W)
    root = kernels.jump(kernels.descent(w, H, W, conn8, False))
    got = basin_graph(w, kernels.boundary(w, root, H, W, conn8), root, W, conn8)
    got = list(zip(*(t.cpu().tolist() for t in got)))
    wv, rt = w.cpu().numpy(), root.cpu().numpy()
    steps = [(0, 1), (1, 0), (1, 1), (1, -1)] if conn8 else [(0, 1), (1, 0)]
    lowest = {}
    for b in range(B):
        for i in range(H):
            for j in range(W):
                for di, dj in steps:
                    if 0 <= i + di < H and 0 <= j + dj < W:
                        p, q = i * W + j, (i + di) * W + j + dj
                        if rt[b, p] != rt[b, q]:
                            s = max((wv[b, p], p), (wv[b, q], q))
                            pair = (b, min(rt[b, p], rt[b, q]), max(rt[b, p], rt[b, q]))
                            lowest[pair] = min(lowest.get(pair, s), s)
    assert sorted(got) == sorted((b, int(lowest[b, lo, hi][1]), int(lo), int(hi)) for b, lo, hi in lowest)
    # Kruskal's order: by image, then saddle (value, index).
    assert [(b, wv[b, s], s) for b, s, _, _ in got] == sorted((b, wv[b, s], s) for b, s, _, _ in got)


def test_triton_backend_errors():
    with pytest.raises(ValueError, match="num_threads"):
        cubical_persistence(torch.zeros(3, 3, device=DEVICE), backend="triton", num_threads=0)
    with pytest.raises(ValueError, match="maps: contains NaN"):
        cubical_persistence(torch.tensor([[0.0, float("nan")]], device=DEVICE), backend="triton")
    with pytest.raises(ValueError, match="maps: expected shape"):
        cubical_persistence(torch.zeros(2, 2, 2, 2, device=DEVICE), backend="triton")
    with pytest.raises(ValueError, match="maps: expected a floating dtype"):
        cubical_persistence(torch.zeros(3, 3, dtype=torch.int64, device=DEVICE), backend="triton")


def test_kernels_compile_for_hopper_without_spills():
    # Every specialisation the backend launches, compiled ahead of time for sm_90 (no GPU needed).
    from topoot_gpu.testing import compile_for_hopper

    module = "topoot_gpu.persistence._triton"
    for dtype in ("fp32", "fp64"):
        for outside in (False, True):
            for conn8 in (False, True):
                sig = {"w_ptr": f"*{dtype}", "parent_ptr": "*i64", "H": "i32", "W": "i32", "n_pixels": "i64"}
                sig |= {"OUTSIDE": "constexpr", "CONN8": "constexpr", "BLOCK": "constexpr"}
                const = {"OUTSIDE": outside, "CONN8": conn8, "BLOCK": kernels.BLOCK}
                assert compile_for_hopper(module, "_descent_kernel", sig, const)[1] == 0
        for nd in (2, 4):
            sig = {"w_ptr": f"*{dtype}", "root_ptr": "*i64", "saddle_ptr": "*i64", "H": "i32", "W": "i32"}
            sig |= {"n_pixels": "i64", "ND": "constexpr", "BLOCK": "constexpr"}
            assert compile_for_hopper(module, "_boundary_kernel", sig, {"ND": nd, "BLOCK": kernels.BLOCK})[1] == 0
    sig = {"parent_ptr": "*i64", "flags_ptr": "*i32", "stride": "i64", "n_nodes": "i64"}
    sig |= {"BLOCK": "constexpr"}
    assert compile_for_hopper(module, "_jump_kernel", sig, {"BLOCK": kernels.BLOCK})[1] == 0
    for dtype in ("fp32", "fp64"):
        for outside in (False, True):
            sig = {"w_ptr": f"*{dtype}", **dict.fromkeys(("offsets_ptr", "saddle_ptr", "lo_ptr", "hi_ptr"), "*i64")}
            sig |= {"uf_ptr": "*i64", "young_ptr": "*i64", "P": "i32", "OUTSIDE": "constexpr"}
            assert compile_for_hopper(module, "_merge_kernel", sig, {"OUTSIDE": outside}, num_warps=1)[1] == 0
