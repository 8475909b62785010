"""The benchmark scripts end to end on tiny inputs (each in its own process, as a user runs it):
they run, write their JSON, and what they count agrees with plain counts. Timings are not checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from topoot_gpu.persistence._basins import STAGES

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_gpu_benchmark_runs(tmp_path, monkeypatch):
    """The --gpu mode of bench_persistence.py end to end on tiny maps (what a GPU machine runs; here
    the Triton backend under its interpreter)."""
    if not os.environ.get("CI"):  # CI installs triton: a missing triton must fail there, not skip
        pytest.importorskip("triton")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    script = BENCHMARKS / "bench_persistence.py"
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
    parts = [stages[f"{name}_ms"] for name in (*STAGES, "other")]
    assert all(t >= 0 for t in parts) and stages["total_ms"] == pytest.approx(sum(parts))


def test_basin_stats_runs(tmp_path):
    """``benchmarks/basin_stats.py`` end to end on tiny maps; its counts against plain ones."""
    script = BENCHMARKS / "basin_stats.py"
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


def test_topo_loss_benchmark_runs(tmp_path):
    """``benchmarks/bench_topo_loss.py`` end to end on tiny maps (torch-topological measured where
    installed)."""
    pytest.importorskip("gudhi")
    out = tmp_path / "topo.json"
    args = ["--sizes", "16", "--batches", "2", "--repeats", "1", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_topo_loss.py"), *args], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["loss"], r["size"], r["batch"]) for r in rows] == [("total_persistence", 16, 2), ("betti", 16, 2)]
    assert all(r["ours_1thread_ms"] > 0 and r["gudhi_cofaces_ratio"] > 0 for r in rows)


def test_files_benchmark_runs(tmp_path):
    """``benchmarks/bench_files.py`` end to end on a tiny folder."""
    out = tmp_path / "files.json"
    args = ["--maps", "3", "--size", "12", "--batch-size", "2", "--workers", "0", "1", "--repeats", "1"]
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_files.py"), *args, "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["workers"] for r in rows] == ["-", 0, 1] and all(r["maps_per_s"] > 0 for r in rows)


def test_sinkhorn_benchmark_runs_with_a_ragged_batch(tmp_path):
    """``benchmarks/bench_sinkhorn.py`` on tiny padded and ragged batches (POT on real sizes; the
    ragged one padded and packed)."""
    out = tmp_path / "sinkhorn.json"
    args = ["--batches", "3", "--sizes", "6", "--regs", "0.3", "--ragged", "5", "--ragged-sizes", "2", "9"]
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_sinkhorn.py"), *args, "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [(r["batch"], r["n"], r["layout"]) for r in rows] == [(3, 6, "padded"), (5, "2..9", "padded"),
                                                                  (5, "2..9", "packed")]  # fmt: skip
    assert all(r["pot_problems_per_s"] > 0 and r["ours_cpu_1thread_problems_per_s"] > 0 for r in rows)
    # POT's iterates on the problems it is timed on, in either layout
    assert all(r["n_iter_equal_pot"] and r["max_plan_diff_vs_pot"] <= 1e-9 for r in rows)
    assert all(r["torch_vs_cpp_1thread_time"] > 0 for r in rows)


def test_head_precision_agreement_runs(tmp_path):
    """``benchmarks/head_precision_agreement.py`` end to end on one seed."""
    out = tmp_path / "agreement.json"
    run = subprocess.run(
        [sys.executable, str(BENCHMARKS / "head_precision_agreement.py"), "--seeds", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["features"] for r in rows] == ["backbone", "full_resolution", "map"]
    assert all(0.99 <= r["worst_image_agreement"] <= r["batch_agreement"] <= 1 for r in rows)


def test_refine_benchmark_runs(tmp_path):
    """``benchmarks/bench_refine.py`` end to end on tiny maps with both head precisions and the
    reference on one image: a row per precision, fp32's agreement with itself 1, the fault count of
    the timed calls a count."""
    script = BENCHMARKS / "bench_refine.py"
    out = tmp_path / "refine.json"
    args = ["--channels", "8", "--batch", "2", "--ref-images", "1", "--repeats", "2", "--size", "32", "--low", "8"]
    args += ["--precisions", "fp32", "bf16", "--out", str(out)]
    run = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    rows = json.loads(out.read_text())["rows"]
    assert [r["precision"] for r in rows] == ["fp32", "bf16"]
    assert rows[0]["agreement_with_fp32"] == 1.0 and rows[0]["speedup_over_fp32"] == 1.0
    for r in rows:
        assert 0.0 <= r["mask_agreement"] <= 1.0 and 0.0 <= r["agreement_with_fp32"] <= 1.0
        assert r["minor_faults_per_image"] >= 0 and r["refine_s_per_image"] > 0
