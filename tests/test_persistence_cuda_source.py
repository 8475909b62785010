"""The CUDA kernels' source (as shipped in the package) compiled for the host and run through the
CUDA backend's own wrappers (``persistence_cuda``, with only its launch replaced), against the CPU
union-find core: identical pairs and pixels on every kind of input, whatever order the threads run
in. No GPU needed, so CI tests the kernels' logic on every stop; ``test_persistence_cuda.py``
runs them on a GPU (concurrency included)."""

from __future__ import annotations

import ctypes

import cuda_host
import numpy as np
import pytest
import torch
from test_persistence_triton import batches

from topoot_gpu import cubical_persistence, persistence_cuda
from topoot_gpu.persistence_gpu import basin_persistence
from topoot_gpu.testing import persistence_map_kinds, persistence_shapes, tied_maps

CASES = [(c, f) for c in ("T", "V") for f in ("sublevel", "superlevel")]


@pytest.fixture(scope="module")
def host_kernels(tmp_path_factory) -> ctypes.CDLL:
    lib = cuda_host.build(tmp_path_factory.mktemp("cuda_host"))
    if lib is None:  # CI builds the package's C++ with one, so this skip never happens there
        pytest.skip("no C++ compiler to build the host emulation of the CUDA kernels")
    return lib


@pytest.fixture
def on_host(host_kernels, monkeypatch) -> list[str]:
    """``persistence_cuda`` launches on the host; returns the names of the kernels launched."""
    launched: list[str] = []
    monkeypatch.setattr(persistence_cuda, "_launch", cuda_host.launcher(host_kernels, launched))
    return launched


def rows(fields) -> list[tuple]:
    return sorted(zip(*(f.tolist() for f in fields)))


def cuda_source_rows(t: torch.Tensor, construction: str, filtration: str, dims=(0, 1)) -> list[tuple]:
    return rows(
        basin_persistence(
            t, superlevel=filtration == "superlevel", conn8_h0=construction == "T", dim0=0 in dims, dim1=1 in dims,
            kernels=persistence_cuda,
        )
    )  # fmt: skip


def cpu_rows(t: torch.Tensor, construction: str, filtration: str, dims=(0, 1)) -> list[tuple]:
    d = cubical_persistence(t, construction=construction, filtration=filtration, dims=dims, backend="cpu")
    return rows((d.image, d.dim, d.birth, d.death, d.birth_pixel, d.death_pixel))


@pytest.mark.parametrize("construction,filtration", CASES)
def test_cuda_source_pairs_and_pixels_equal_the_cpu_core(rng, on_host, construction, filtration):
    for maps in batches(rng):
        for dtype in (torch.float64, torch.float32):
            t = torch.from_numpy(maps).to(dtype)
            assert cuda_source_rows(t, construction, filtration) == cpu_rows(t, construction, filtration), (
                f"shape {maps.shape} {dtype}"
            )
    assert {"descent_f32", "descent_f64", "jump", "boundary_f32", "boundary_f64"} <= set(on_host)


@pytest.mark.parametrize("construction,filtration", CASES)
@pytest.mark.parametrize("kind", sorted(persistence_map_kinds))
def test_cuda_source_on_the_persistence_test_maps(rng, on_host, kind, construction, filtration):
    # The CPU core's own parity tests (against GUDHI) run on these kinds and shapes.
    for h, w in persistence_shapes:
        t = torch.from_numpy(persistence_map_kinds[kind](rng, 3, h, w))
        for dtype in (torch.float64, torch.float32):
            assert cuda_source_rows(t.to(dtype), construction, filtration) == cpu_rows(
                t.to(dtype), construction, filtration
            ), f"{kind} {h}x{w} {dtype}"


def test_cuda_source_dims_subsets_and_thread_orders(rng, on_host):
    t = torch.from_numpy(rng.random((2, 17, 23)))
    for dims in ((0,), (1,), (0, 1)):
        expected = cpu_rows(t, "T", "sublevel", dims)
        # Each call launches with fresh seeds, so each runs the threads in other orders.
        for _ in range(3):
            assert cuda_source_rows(t, "T", "sublevel", dims) == expected


@pytest.mark.parametrize("size,filtrations", [(224, ("sublevel", "superlevel")), (2048, ("sublevel",))])
def test_cuda_source_large_noise_maps(rng, on_host, size, filtrations):
    # Raw noise: hundreds of thousands of minima at 2048 x 2048, the largest supported map.
    t = torch.from_numpy(rng.random((1, size, size))).float()
    for filtration in filtrations:
        assert cuda_source_rows(t, "T", filtration) == cpu_rows(t, "T", filtration)


@pytest.mark.parametrize("kernel", ["descent_f32", "boundary_f32"])
def test_unwritten_outputs_are_caught(rng, on_host, monkeypatch, kernel):
    # The wrappers poison their outputs: a launch that writes nothing must not pass silently.
    emulated = persistence_cuda._launch

    def skip_one(name, *args):
        if name != kernel:
            emulated(name, *args)

    monkeypatch.setattr(persistence_cuda, "_launch", skip_one)
    t = torch.from_numpy(rng.random((2, 9, 11))).float()
    with pytest.raises(RuntimeError, match="unwritten"):
        cuda_source_rows(t, "T", "sublevel")


def test_batches_larger_than_a_chunk_run_in_chunks(rng, on_host, monkeypatch):
    # Chunks of 2 maps (then 1): the image indices must continue across chunks.
    from topoot_gpu import persistence_gpu

    t = torch.from_numpy(np.concatenate([rng.random((3, 13, 9)), tied_maps(rng, 2, 13, 9, levels=3)]))
    monkeypatch.setattr(persistence_gpu, "CHUNK_PIXELS", 2 * 13 * 9 + 5)
    for construction, filtration in CASES:
        assert cuda_source_rows(t, construction, filtration) == cpu_rows(t, construction, filtration)
    assert on_host.count("descent_f64") == 3 * 2 * len(CASES)  # 3 chunks, 2 passes


def test_basin_merge_benchmark_runs(tmp_path):
    """``benchmarks/bench_basin_merge.py`` end to end on tiny maps."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_basin_merge.py"
    out = tmp_path / "merge.json"
    args = ["--size", "16", "--batches", "1", "3", "--large-size", "24", "--repeats", "1", "--out", str(out)]
    run = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["kind"], r["size"], r["batch"]) for r in rows] == [
        ("smooth", 16, 1), ("smooth", 16, 3), ("noise", 16, 1), ("noise", 16, 3), ("noise", 24, 1)
    ]  # fmt: skip
    assert all(r["1thread_ms"] > 0 and r["all_threads_ms"] > 0 for r in rows)
    assert all(r["edges_per_map"] > 0 for r in rows if r["kind"] == "noise")  # a smooth map may be one basin


def test_basin_stats_runs(tmp_path):
    """``benchmarks/basin_stats.py`` end to end on tiny maps; its counts against plain ones."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "basin_stats.py"
    out = tmp_path / "stats.json"
    run = subprocess.run(
        [sys.executable, str(script), "--size", "12", "--batch", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    passes = ["sublevel H0", "sublevel H1 (dual)"]
    assert [(r["kind"], r["pass"]) for r in result["rows"]] == [(k, p) for k in ("smooth", "noise") for p in passes]
    for r in result["rows"]:
        assert r["minima_per_map"] >= (1 if r["pass"] == "sublevel H0" else 0)  # the dual pass drains outside
        assert r["basin_graph_edges_per_map"] <= r["crossing_pairs_per_map"]
        assert r["crossing_pairs_per_pixel"] == pytest.approx(r["crossing_pairs_per_map"] / 144)
    assert result["noise_h0_peak_bytes_per_pixel"] >= 0
