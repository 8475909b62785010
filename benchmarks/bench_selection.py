"""Pseudo-labels: the plain reference (GUDHI + POT, one map at a time) against the batched path.

Smooth 224x224 maps (Gaussian-blurred noise, sigma 4) and raw-noise 64x64 maps, batch 64, and
raw-noise 224x224 maps, batch ``--noise-batch`` (2): about 10k sublevel-H1 and 5.6k superlevel-H0
pairs per level map, so dense transport problems of ~10k x 10k points. Default SelectionConfig
(the released implementation). The reference runs on the first ``--ref-maps`` maps of each case
(about a quarter of a second per smooth map, ten seconds per 224x224 noise map); ms per map,
ratio = reference / ours, and whether the labels agree on those maps. Median of repeats after a
warm-up (none for the reference).

    python benchmarks/bench_selection.py [--batch 64] [--noise-batch 2] [--ref-maps 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: off
from _common import median_seconds, print_table, write_results  # noqa: E402  (before numpy)

import numpy as np  # noqa: E402
# isort: on

from topoot_gpu import pseudo_labels  # noqa: E402
from topoot_gpu.selection import reference  # noqa: E402
from topoot_gpu.testing import smooth_maps  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--noise-batch", type=int, default=2, help="raw-noise 224x224 maps (0: leave the case out)")
    ap.add_argument("--ref-maps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/selection_cpu.json)")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    cases = {
        "smooth 224x224": smooth_maps(rng, args.batch, 224, 224, sigma=4.0),
        "noise 64x64": rng.random((args.batch, 64, 64)),
    }
    if args.noise_batch:
        cases["noise 224x224"] = rng.random((args.noise_batch, 224, 224))
    rows = []
    for name, maps in cases.items():
        ours = median_seconds(lambda maps=maps: pseudo_labels(maps), repeats=args.repeats) / len(maps)
        sub = maps[: args.ref_maps]
        ref = median_seconds(lambda sub=sub: reference.pseudo_labels(sub), repeats=args.repeats, warmup=0) / len(sub)
        agree = bool(np.array_equal(pseudo_labels(sub).labels, reference.pseudo_labels(sub).labels))
        rows.append(
            {
                "maps": name,
                "batch": len(maps),
                "ours_ms_per_map": ours * 1e3,
                "reference_ms_per_map": ref * 1e3,
                "ratio": ref / ours,
                "labels_agree": agree,
            }
        )
        print(f"done {name}", flush=True)
    print("\nms per map; ratio = reference / ours (same run)")
    print_table(rows, ["maps", "batch", "ours_ms_per_map", "reference_ms_per_map", "ratio", "labels_agree"])
    write_results("selection_cpu", "pseudo_labels vs reference", args, rows)


if __name__ == "__main__":
    main()
