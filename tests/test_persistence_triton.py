"""The GPU persistence algorithm (basins, pointer jumping, elder rule on the basin graph) through
its Triton kernels, against the CPU union-find core: identical pairs with identical birth and death
pixels, every filtration, construction and dimension set, on fresh inputs of every kind.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, set here before
the kernel module is imported), so the logic is tested on every CI run; maps stay small there.
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

from topoot_gpu import cubical_persistence  # noqa: E402
from topoot_gpu import persistence_triton as kernels  # noqa: E402
from topoot_gpu.testing import blob_maps, quantised_maps, ring_maps, scratch_maps, smooth_maps, tied_maps  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CASES = [(c, f) for c in ("T", "V") for f in ("sublevel", "superlevel")]


def rows(d) -> list[tuple]:
    """Every pair as (image, dim, birth, death, birth pixel, death pixel), sorted."""
    return sorted(
        zip(
            d.image.tolist(), d.dim.tolist(), d.birth.tolist(), d.death.tolist(),
            d.birth_pixel.tolist(), d.death_pixel.tolist(),
        )
    )  # fmt: skip


def batches(rng: np.random.Generator) -> list[np.ndarray]:
    h, w = (int(x) for x in rng.integers(5, 24, size=2))
    return [
        rng.random((3, h, w)),  # raw noise: many minima and saddles
        tied_maps(rng, 3, h, w, levels=int(rng.integers(2, 5))),  # ties and plateaus
        quantised_maps(rng, 2, h, w, levels=int(rng.integers(3, 30))),
        np.concatenate([blob_maps(rng, 1, h, w), ring_maps(rng, 1, h, w), scratch_maps(rng, 1, h, w)]),
        smooth_maps(rng, 2, h, w, sigma=1.5),
        np.full((2, h, w), rng.normal()),  # constant
        rng.random((2, 1, int(rng.integers(1, 30)))),  # 1 x N
        rng.random((2, int(rng.integers(1, 30)), 1)),  # N x 1
        rng.random((1, 1, 1)),
    ]


@pytest.mark.parametrize("construction,filtration", CASES)
def test_triton_pairs_and_pixels_equal_the_cpu_core(rng, construction, filtration):
    for maps in batches(rng):
        for dtype in (torch.float64, torch.float32):
            t = torch.from_numpy(maps).to(dtype)
            kw = dict(filtration=filtration, construction=construction)
            gpu = cubical_persistence(t.to(DEVICE), backend="triton", **kw)
            cpu = cubical_persistence(t, backend="cpu", **kw)
            assert rows(gpu) == rows(cpu), f"shape {maps.shape} {dtype}"
            assert gpu.batch_size == cpu.batch_size and gpu.shape == cpu.shape


def test_dims_subsets_and_single_map(rng):
    m = torch.from_numpy(tied_maps(rng, 1, 11, 13, levels=3)[0])
    for dims, threads in (((0,), 1), ((1,), 2), ((0, 1), None)):
        gpu = cubical_persistence(m.to(DEVICE), backend="triton", dims=dims, num_threads=threads)
        cpu = cubical_persistence(m, backend="cpu", dims=dims)
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


@pytest.mark.parametrize("conn8", [True, False])
def test_basin_graph_is_the_lowest_saddle_of_each_basin_pair_in_kruskal_order(rng, conn8):
    # Against a plain loop over every neighbour pair; tied values so that the index tie-break counts.
    from topoot_gpu.persistence_gpu import _basin_graph

    B, H, W = 3, int(rng.integers(2, 12)), int(rng.integers(2, 12))
    maps = torch.from_numpy(tied_maps(rng, B, H, W, levels=int(rng.integers(2, 6)))).to(DEVICE)
    w = maps.reshape(B, H * W)
    root = kernels.jump(kernels.descent(w, H, W, conn8, False))
    got = _basin_graph(w, kernels.boundary(w, root, H, W, conn8), root, W, conn8)
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


def test_gpu_benchmark_runs(tmp_path):
    """The --gpu mode of bench_persistence.py end to end on tiny maps (what a GPU machine runs)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_persistence.py"
    out = tmp_path / "gpu.json"
    args = ["--gpu", "--device", DEVICE, "--gpu-backends", "triton", "--sizes", "12", "--kinds", "noise"]
    args += ["--gpu-batches", "2", "--ref-maps", "2", "--repeats", "1", "--out", str(out)]
    run = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {r["workload"] for r in rows} == {"subH1+supH0", "four diagrams"}
    assert all(r["triton_maps_per_s"] > 0 and r["cpu_all_threads_maps_per_s"] > 0 for r in rows)
    (stages,) = json.loads(out.read_text())["stages_subH1+supH0"]
    assert stages["backend"] == "triton" and stages["batch"] == 2
    from topoot_gpu.persistence_gpu import STAGES

    parts = [stages[f"{name}_ms"] for name in (*STAGES, "other")]
    assert all(t >= 0 for t in parts) and stages["total_ms"] == pytest.approx(sum(parts))
