"""The host-side step of the GPU persistence backends: the elder rule on the basin graph
(``_C.basin_merge``, ``csrc/cpu/basin_merge_host.cpp``), on the CPU that drives the GPU.

The basin graphs are the ones the CUDA kernels give, computed here without a GPU by the same
kernel source compiled for the host (``topoot_gpu.testing.cuda_host_kernels``); the merge is then timed alone, on
one thread and on every core: ms per call, us per map, edges per map, ns per edge. One pass
(sublevel H0, 8-connected) of 224x224 smooth (sigma 4) and raw-noise maps at batch 1, 16 and 256,
and one 2048x2048 noise map. Median of repeats after a warm-up.

    python benchmarks/bench_basin_merge.py [--size 224] [--batches 1 16 256] [--large-size 2048] [--repeats 10]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: off
from _common import median_seconds, print_table, write_results  # noqa: E402  (before numpy)

import numpy as np  # noqa: E402
import torch  # noqa: E402
# isort: on

from topoot_gpu import _C  # noqa: E402
from topoot_gpu.persistence import _basins, _cuda  # noqa: E402
from topoot_gpu.testing import cuda_host_kernels, noise_maps, smooth_maps  # noqa: E402


def merge_arguments(maps: np.ndarray) -> tuple:
    """What the sublevel H0 pass (8-connected) gives ``_C.basin_merge``, but the thread count."""
    B, H, W = maps.shape
    edges = _basins.basin_edges(torch.from_numpy(maps).float().reshape(B, H * W), H, W, True, False, _cuda)
    return (*edges, H * W, False, 0, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256])
    ap.add_argument("--large-size", type=int, default=2048, help="one noise map of this side (0: none)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/basin_merge_cpu.json)")
    args = ap.parse_args()
    with cuda_host_kernels():
        rng = np.random.default_rng(args.seed)
        rows = []
        configs = [(kind, args.size, batch) for kind in ("smooth", "noise") for batch in args.batches]
        configs += [("noise", args.large_size, 1)] if args.large_size else []
        for kind, size, batch in configs:
            make = smooth_maps if kind == "smooth" else noise_maps
            fixed = merge_arguments(make(rng, batch, size, size))
            n_edges = int(fixed[0][-1])
            row = {"kind": kind, "size": size, "batch": batch, "edges_per_map": n_edges / batch}
            for label, threads in (("1thread", 1), ("all_threads", os.cpu_count() or 1)):
                seconds = median_seconds(lambda f=fixed, t=threads: _C.basin_merge(*f, t), repeats=args.repeats)
                row[f"{label}_ms"] = seconds * 1e3
                row[f"{label}_us_per_map"] = seconds / batch * 1e6
                row[f"{label}_ns_per_edge"] = seconds / max(n_edges, 1) * 1e9
            rows.append(row)
            print(f"done {kind} {size} batch {batch}", flush=True)
    print("\nbasin_merge (sublevel H0 pass, 8-connected), on this CPU")
    print_table(rows, list(rows[0]))
    write_results("basin_merge_cpu", "basin_merge", args, rows)


if __name__ == "__main__":
    main()
