"""``scripts/gpu_check.sh --dry-run``: the GPU machine's script run without a GPU (stand-in
nvidia-smi, Triton interpreter, the CUDA source on the host, tiny benchmarks), so that a bug in it
never costs device time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"


def test_gpu_check_dry_run(tmp_path):
    pytest.importorskip("gudhi")
    pytest.importorskip("ot")
    if not os.environ.get("CI"):
        pytest.importorskip("triton")
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PY": sys.executable, "TOPOOT_COMMIT": "dry-run"}
    args = ["bash", str(SCRIPT), "all", "--dry-run"]
    run = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    logs = ["env.txt", "install.log", "tests.log", "bench.log"]
    jsons = ["persistence_gpu", "sinkhorn_gpu", "refine_cuda", "selection_device"]
    assert files == sorted(logs + [f"{name}.json" for name in jsons])
    assert "dry run: no GPU" in (out / "env.txt").read_text()
    tests_log = (out / "tests.log").read_text()
    assert " passed" in tests_log and "failed" not in tests_log
    for name in jsons:
        payload = json.loads((out / f"{name}.json").read_text())
        assert payload["rows"] and payload["environment"]["commit"] == "dry-run"
    selection = json.loads((out / "selection_device.json").read_text())["rows"]
    assert all(r["labels_agree"] and r["host_syncs_per_batch"] > 0 for r in selection)


def test_gpu_check_refuses_an_unknown_stage(tmp_path):
    run = subprocess.run(["bash", str(SCRIPT), "benchmarks"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2 and "usage" in run.stderr
