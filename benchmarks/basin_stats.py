"""What the GPU persistence passes see on a map, counted without a GPU: per map and pass, the
minima (basins), the neighbour pairs crossing two basins, the basin-graph edges left after the
segmented minimum, the longest steepest-descent path (what sets the number of pointer-jumping
rounds), and the pass's peak host memory per pixel. The passes are the CUDA kernels' source run
on the host (``topoot_gpu.testing.cuda_host_kernels``). ``benchmarks/gpu_persistence_notes.md`` builds on these.

    python benchmarks/basin_stats.py [--size 224] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: off
from _common import print_table, write_results  # noqa: E402  (before numpy)

import numpy as np  # noqa: E402
import torch  # noqa: E402
# isort: on

from topoot_gpu.persistence import _basins, _cuda  # noqa: E402
from topoot_gpu.testing import cuda_host_kernels, noise_maps, smooth_maps  # noqa: E402

# (name, negate the map, 8-connected, outside node): the H0 pass of construction T and its dual.
PASSES = [("sublevel H0", False, True, False), ("sublevel H1 (dual)", True, False, True)]


def longest_path(parent: torch.Tensor) -> int:
    """Steps of the longest walk to a root along ``parent [B, P + 1]``."""
    node = torch.arange(parent.shape[1]).expand_as(parent)
    steps = 0
    while not torch.equal(nxt := parent.gather(1, node), node):
        node, steps = nxt, steps + 1
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/basin_stats.json)")
    args = ap.parse_args()
    with cuda_host_kernels():
        rng = np.random.default_rng(args.seed)
        B, S = args.batch, args.size
        # Peak memory of one whole H0 pass on noise (the worst case) per pixel: measured first, while
        # the process's high-water mark is still the maps'.
        maps = torch.from_numpy(noise_maps(rng, B, S, S)).float()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        _basins.basin_persistence(
            maps, superlevel=False, conn8_h0=True, dim0=True, dim1=False, kernels=_cuda
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        rows = []
        for kind, make in (("smooth", smooth_maps), ("noise", noise_maps)):
            maps = torch.from_numpy(make(rng, B, S, S)).float().reshape(B, S * S)
            for name, negate, conn8, outside in PASSES:
                w = -maps if negate else maps
                parent = _cuda.descent(w, S, S, conn8, outside)
                steps = longest_path(parent)
                root = _cuda.jump(parent.clone())
                saddle = _cuda.boundary(w, root, S, S, conn8)
                edges = _basins.basin_graph(w, saddle, root, S, conn8)[0]
                minima = int((root[:, :-1] == torch.arange(S * S)).sum())
                rows.append(
                    {
                        "kind": kind,
                        "size": S,
                        "pass": name,
                        "minima_per_map": minima / B,
                        "crossing_pairs_per_map": int((saddle >= 0).sum()) / B,
                        "crossing_pairs_per_pixel": int((saddle >= 0).sum()) / (B * S * S),
                        "basin_graph_edges_per_map": len(edges) / B,
                        "longest_descent_path": steps,
                    }
                )
    peak_bytes = (peak - before) * 1024 / (B * S * S)
    print(f"\nbasin statistics of {B} maps of {S}x{S} (the CUDA kernels' source run on the host)")
    print_table(rows, list(rows[0]))
    print(f"peak memory growth of an H0 pass on noise: {peak_bytes:.0f} bytes per pixel")
    write_results("basin_stats", "basin statistics", args, rows, sections={"noise_h0_peak_bytes_per_pixel": peak_bytes})


if __name__ == "__main__":
    main()
