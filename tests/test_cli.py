"""The ``topoot`` command, run as a user runs it."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_end_to_end():
    out = subprocess.run(
        [sys.executable, "-m", "topoot_gpu", "demo", "--size", "48"], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "H1 pairs" in out.stdout and "pseudo-labels" in out.stdout and "pixels" in out.stdout


def test_bad_arguments_exit_nonzero(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "topoot_gpu", "demo", "--size", "0"], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode != 0 and "size" in out.stderr
