"""Cubical persistence, H0 + H1 of one filtration (sublevel, construction T), ms per map.

Ours (the C++ core, 1 thread and all threads, birth and death pixels included) against GUDHI
``CubicalComplex`` (with ``cofaces_of_persistence_pairs``, as the released TopoOT code uses it),
GUDHI's 2-D fast path ``gudhi.sklearn.CubicalPersistence`` (no pixels) and CubicalRipser
(``top_dim=True``, with locations). Every tool gets the same float64 maps in the same run.
``CubicalComplex`` and CubicalRipser are timed on the first ``--slow-batch`` maps only (they
are 100x slower); the ratio column is their ms per map over ours on one thread.

    python benchmarks/bench_persistence.py [--batch 64] [--repeats 5] [--sizes 224 512]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: off
from _common import environment, median_seconds, print_table, write_json  # noqa: E402  (before numpy)

import numpy as np  # noqa: E402
# isort: on

from topoot_gpu import cubical_persistence  # noqa: E402
from topoot_gpu.testing import smooth_maps  # noqa: E402


def make_maps(kind: str, batch: int, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.random((batch, size, size))
    return smooth_maps(rng, batch, size, size, sigma=4.0)


def tools(slow_batch: int) -> dict:
    """name -> (function of a [B, H, W] float64 batch, how many maps of the batch it is given)."""
    out = {
        "ours_1thread": (lambda m: cubical_persistence(m, num_threads=1), None),
        "ours_all_threads": (lambda m: cubical_persistence(m), None),
    }
    try:
        import gudhi
        from gudhi.sklearn.cubical_persistence import CubicalPersistence

        fast = CubicalPersistence(homology_dimensions=[0, 1], n_jobs=1)
        out["gudhi_fast_path"] = (lambda m: fast.fit_transform(list(m)), None)

        def cubical_complex(m):
            for a in m:
                cc = gudhi.CubicalComplex(top_dimensional_cells=a)
                cc.compute_persistence(homology_coeff_field=2, min_persistence=0)
                cc.cofaces_of_persistence_pairs()

        out["gudhi_CubicalComplex"] = (cubical_complex, slow_batch)
    except ImportError:
        print("gudhi (with scikit-learn) not installed: skipping the GUDHI columns")
    try:
        import cripser

        out["cubicalripser"] = (lambda m: [cripser.computePH(a, maxdim=1, top_dim=True) for a in m], slow_batch)
    except ImportError:
        print("cripser not installed: skipping the CubicalRipser column")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--slow-batch", type=int, default=4, help="maps given to the 100x slower tools")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    ap.add_argument("--kinds", nargs="+", default=["smooth", "noise"], choices=["smooth", "noise"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/persistence_cpu.json)")
    args = ap.parse_args()

    rows = []
    for size in args.sizes:
        for kind in args.kinds:
            maps = make_maps(kind, args.batch, size, args.seed)
            row = {"size": size, "kind": kind, "batch": args.batch}
            for name, (fn, n) in tools(args.slow_batch).items():
                sub = maps if n is None else maps[:n]
                seconds = median_seconds(lambda fn=fn, sub=sub: fn(sub), repeats=args.repeats)
                row[f"{name}_ms"] = seconds / len(sub) * 1e3
            base = row["ours_1thread_ms"]
            for name in tools(args.slow_batch):
                if name != "ours_1thread":
                    row[f"{name}_ratio"] = row[f"{name}_ms"] / base
            rows.append(row)
            print(f"done {size} {kind}", flush=True)
    columns = ["size", "kind"] + [k for k in rows[0] if k.endswith("_ms") or k.endswith("_ratio")]
    print("\nms per map (H0 + H1, sublevel, construction T); ratio = tool ms / ours 1-thread ms")
    print_table(rows, columns)
    write_json(
        "persistence_cpu",
        {
            "benchmark": "cubical_persistence H0+H1 sublevel T",
            "environment": environment(),
            "args": vars(args),
            "rows": rows,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
