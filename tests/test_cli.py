"""The ``topoot`` command, run as a user runs it: from a scratch folder, since from the repository
root ``python -m`` would import the source tree (which has no compiled ``_C``), not the installed
package."""

from __future__ import annotations

import subprocess
import sys


def run_topoot(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "topoot_gpu", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_demo_runs_end_to_end(tmp_path):
    out = run_topoot("demo", "--size", "48", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "H1 pairs" in out.stdout and "pseudo-labels" in out.stdout and "pixels" in out.stdout


def test_bad_arguments_exit_nonzero(tmp_path):
    out = run_topoot("demo", "--size", "0", cwd=tmp_path)
    assert out.returncode != 0 and "size" in out.stderr
