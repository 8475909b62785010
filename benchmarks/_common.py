"""Shared helpers of the benchmarks: timing, environment record, table and JSON output."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

# Idle BLAS/OpenMP workers spin on a core after use; on a small machine they steal time from
# whatever is measured. Every tool runs under the same setting. Benchmarks import this module
# before numpy so that it takes effect.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

RESULTS = Path(__file__).resolve().parent / "results"

# The same allocator setting as the topoot CLI, for ours and the reference alike (same process).
from topoot_gpu import keep_freed_memory  # noqa: E402

keep_freed_memory()


def median_seconds(fn: Callable[[], object], *, repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after ``warmup`` runs not counted."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_seconds(
    fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall times of each ``fns[name]()`` over ``repeats`` rounds, every round running each function
    once in turn (after ``warmup`` such rounds not counted), so that a slow spell of a shared machine
    falls on every tool of a round alike: pair the times by round for ratios."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else the platform's processor string: the
    machines lent to this project differ between sessions, and so do the ratios against the
    references (POT's numpy and BLAS gained most on a Xeon with a large L3)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def caches() -> str:
    """The CPU's data caches, "L1 48K, L2 2048K, L3 491520K" (Linux sysfs; "" elsewhere): a model
    name under a hypervisor often says no more than "Intel(R) Xeon(R) Processor"."""
    out = []
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (d / "type").read_text().strip() != "Instruction":
                out.append(f"L{(d / 'level').read_text().strip()} {(d / 'size').read_text().strip()}")
        except OSError:
            pass
    return ", ".join(out)


def environment() -> dict:
    """Where and when the numbers were taken: machine, commit, date, device."""
    root = Path(__file__).resolve().parent.parent
    # TOPOOT_COMMIT when given (scripts/gpu_check.sh: the copied tree on the GPU machine has no .git).
    commit = os.environ.get("TOPOOT_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            commit = "unknown"
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "caches": caches(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    for package in ("numpy", "ot", "gudhi"):  # the references' speed is theirs
        try:
            env[package] = __import__(package).__version__
        except ImportError:
            pass
    try:
        import torch

        env["torch"] = torch.__version__
        if torch.cuda.is_available():
            env["device"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    env.setdefault("device", "cpu")
    return env


def print_table(rows: list[dict], columns: list[str]) -> None:
    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).rjust(w) for c, w in zip(columns, widths)))


def write_results(
    name: str,
    benchmark: str,
    args: argparse.Namespace,
    rows: list[dict],
    *,
    environment_extra: dict | None = None,
    sections: dict | None = None,
) -> Path:
    """Every benchmark's JSON: ``{"benchmark", "environment", "args", "rows", **sections}`` at
    ``args.out``, or ``benchmarks/results/<name>.json``."""
    payload = {
        "benchmark": benchmark,
        "environment": environment() | (environment_extra or {}),
        "args": vars(args),
        "rows": rows,
        **(sections or {}),
    }
    path = Path(args.out) if args.out else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {path}")
    return path
