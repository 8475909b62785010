"""The ``topoot`` command, run as a user runs it: from a scratch folder, since from the repository
root ``python -m`` would import the source tree (which has no compiled ``_C``), not the installed
package."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from topoot_gpu import refine
from topoot_gpu.testing import blob_maps, ring_maps

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_topoot(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "topoot_gpu", *args], capture_output=True, text=True, timeout=600, cwd=cwd
    )


def test_demo_refines_the_bundled_maps(tmp_path):
    pytest.importorskip("PIL")
    out = run_topoot("demo", "--out", "demo_out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "label px" in out.stdout and "mask px" in out.stdout
    folder = tmp_path / "demo_out"
    summary = json.loads((folder / "summary.json").read_text())
    assert len(summary["images"]) == 4 and summary["batched_equals_single"]
    assert any(row["mask_pixels"] > 0 for row in summary["images"])
    pngs = sorted(folder.glob("*.png"))
    assert len(pngs) == 4
    from PIL import Image

    with Image.open(pngs[0]) as img:
        assert img.size == (3 * 224 + 8, 224) and img.mode == "RGB"


def test_refine_writes_masks_and_reports_unreadable_files(tmp_path, rng):
    from PIL import Image

    maps = np.concatenate([blob_maps(rng, 2, 30, 26), ring_maps(rng, 1, 30, 26)])
    np.save(tmp_path / "two.npy", maps[:2])
    np.savez(tmp_path / "more.npz", ring=maps[2])
    Image.fromarray((255 * (maps[0] - maps[0].min()) / np.ptp(maps[0])).astype(np.uint8)).save(tmp_path / "img.png")
    (tmp_path / "broken.npy").write_bytes(b"not a numpy file")
    features = rng.normal(size=(4, 5, 10, 9)).astype(np.float32)
    np.save(tmp_path / "features.npy", features)
    out = run_topoot(
        "refine", "two.npy", "broken.npy", "more.npz", "img.png", "--features", "features.npy",
        "--out", "masks", "--batch-size", "2", "--seed", "3", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 1  # one file could not be read; the others were processed
    assert "broken.npy" in out.stderr and "4 masks written" in out.stdout
    assert "4/4 files" in out.stderr and "maps/s" in out.stderr  # the progress bar
    names = ["two_0", "two_1", "more_ring", "img"]
    for k, name in enumerate(names):
        mask = np.load(tmp_path / "masks" / f"{name}_mask.npy")
        assert mask.dtype == bool and mask.shape == (30, 26)
        with Image.open(tmp_path / "masks" / f"{name}_mask.png") as img:
            assert np.array_equal(np.asarray(img) > 0, mask)
        if k < 3:  # the same as the library call
            assert np.array_equal(mask, refine(maps[k], features[k], seed=3).mask)


def test_refine_rejects_mismatched_features(tmp_path, rng):
    np.save(tmp_path / "m.npy", blob_maps(rng, 2, 12, 12))
    np.save(tmp_path / "f.npy", np.zeros((3, 2, 4, 4), np.float32))
    out = run_topoot("refine", "m.npy", "--features", "f.npy", "--out", "o", cwd=tmp_path)
    assert out.returncode == 2 and "features" in out.stderr


def test_bench_runs_a_benchmark_and_prints_its_table(tmp_path):
    out = run_topoot(
        "bench", "refine", "--dir", str(BENCHMARKS), "--",
        "--size", "32", "--low", "8", "--channels", "4", "--batch", "2", "--ref-images", "1",
        "--repeats", "1", "--out", str(tmp_path / "r.json"), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "ratio" in out.stdout and "refine_s_per_image" in out.stdout
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert rows[0]["channels"] == 4 and rows[0]["ratio"] > 0


def test_bad_arguments_exit_nonzero(tmp_path):
    out = run_topoot("refine", "x.npy", "--out", "o", "--batch-size", "0", cwd=tmp_path)
    assert out.returncode != 0 and "batch-size" in out.stderr
    out = run_topoot("bench", "nosuch", "--dir", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 2 and "no benchmark" in out.stderr
