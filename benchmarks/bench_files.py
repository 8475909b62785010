"""Refining a folder of map files: is reading hidden behind the refinement?

A folder of ``--maps`` 224x224 ``.npy`` maps (anomaly-like blobs), refined by
:func:`topoot_gpu.refine_files` with 0, 1 and 2 background reader processes (reading, decoding and
writing masks and manifest included), against :func:`topoot_gpu.refine` on the same maps already in
memory, in batches of the same size (no file I/O at all). Maps per second and the fraction of the
preloaded throughput each reaches; median of repeats after a warm-up, each repeat into a fresh
output folder; the configurations run interleaved, round by round. JSON ``benchmarks/results/files_cpu.json``.

    python benchmarks/bench_files.py [--maps 512] [--batch-size 16] [--workers 0 1 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: off
from _common import median_seconds, print_table, write_results  # noqa: E402  (before numpy)

import numpy as np  # noqa: E402
import torch  # noqa: E402
# isort: on

from topoot_gpu import refine, refine_files  # noqa: E402
from topoot_gpu.testing import blob_maps  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maps", type=int, default=512)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/files_cpu.json)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(args.seed)
    maps = blob_maps(rng, args.maps, args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "maps"
        folder.mkdir()
        for k, m in enumerate(maps):
            np.save(folder / f"map{k:05d}.npy", m)

        def preloaded() -> None:
            for start in range(0, len(maps), args.batch_size):
                refine(maps[start : start + args.batch_size], seed=args.seed)

        def from_files(workers: int) -> None:
            out = Path(tmp) / "out"
            shutil.rmtree(out, ignore_errors=True)
            s = refine_files(folder, out, batch_size=args.batch_size, num_workers=workers, seed=args.seed)
            assert s.done == len(maps) and s.failed == 0

        # Warm-up (thread pools, first allocations) on one batch, not a whole pass; then the
        # configurations interleaved round by round, so that drift over a long run hits all alike.
        refine(maps[: args.batch_size], seed=args.seed)
        runs = {"preloaded": preloaded} | {w: (lambda w=w: from_files(w)) for w in args.workers}
        times: dict = {key: [] for key in runs}
        for _ in range(args.repeats):
            for key, fn in runs.items():
                times[key].append(median_seconds(fn, repeats=1, warmup=0))
        base_s = statistics.median(times["preloaded"])
        rows = [{"reader": "preloaded refine", "workers": "-", "seconds": base_s, "maps_per_s": len(maps) / base_s}]
        for w in args.workers:
            t = statistics.median(times[w])
            rows.append({"reader": "refine_files", "workers": w, "seconds": t, "maps_per_s": len(maps) / t})
    for r in rows:
        r["fraction_of_preloaded"] = r["maps_per_s"] / rows[0]["maps_per_s"]
    print(f"\n{len(maps)} maps of {args.size}x{args.size}, batch size {args.batch_size}")
    print_table(rows, ["reader", "workers", "seconds", "maps_per_s", "fraction_of_preloaded"])
    write_results("files_cpu", "files", args, rows)


if __name__ == "__main__":
    main()
