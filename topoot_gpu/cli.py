"""The ``topoot`` command.

``topoot demo``: persistence diagrams, pseudo-labels and timings of a few generated anomaly-like
maps (fixed seed, no download, no GPU needed).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import cubical_persistence, pseudo_labels
from .testing import blob_maps, quantised_maps, smooth_maps


def _demo_maps(size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2026)
    return {
        "two blobs on noise": blob_maps(rng, 1, size, size, max_blobs=2)[0],
        "smooth noise (sigma 4)": smooth_maps(rng, 1, size, size, sigma=4.0)[0],
        "quantised to 1000 levels": quantised_maps(rng, 1, size, size, levels=1000)[0],
    }


def demo(args: argparse.Namespace) -> int:
    maps = _demo_maps(args.size)
    batch = np.stack(list(maps.values()))
    print(f"topoot demo: cubical persistence of {len(maps)} generated {args.size}x{args.size} maps\n")
    for filtration in ("sublevel", "superlevel"):
        t0 = time.perf_counter()
        d = cubical_persistence(batch, filtration=filtration, construction="T")
        ms = (time.perf_counter() - t0) * 1e3
        print(f"== {filtration} filtration, construction T: {ms:.2f} ms for the batch ==")
        for b, name in enumerate(maps):
            h0, h1 = d.intervals(b, 0), d.intervals(b, 1)
            print(f"  {name}: {len(h0)} H0 pairs, {len(h1)} H1 pairs")
            for dim in (0, 1):
                part = d.select(image=b, dim=dim)
                finite = np.isfinite(part.death)
                if not finite.any():
                    continue
                pers = np.abs(part.death - part.birth)
                pers[~finite] = -1
                k = int(np.argmax(pers))
                i, j = divmod(int(part.birth_pixel[k]), args.size)
                print(
                    f"    most persistent H{dim}: ({part.birth[k]:.4f}, {part.death[k]:.4f}), born at pixel ({i}, {j})"
                )
    t0 = time.perf_counter()
    sel = pseudo_labels(batch)
    ms = (time.perf_counter() - t0) * 1e3
    print(f"\n== pseudo-labels (released TopoOT selection): {ms:.1f} ms for the batch ==")
    for b, name in enumerate(maps):
        c = sel.candidates[b]
        if c is None:
            print(f"  {name}: no candidate, empty label")
            continue
        print(
            f"  {name}: {c.filtration} H{c.dim} candidate ({c.low:.4f}, {c.high:.4f}), score {c.score:.3f}; "
            f"label = map >= {sel.thresholds[b]:.4f}: {int(sel.labels[b].sum())} pixels"
        )
    try:
        import gudhi
    except ImportError:
        print("\n(GUDHI not installed: no reference timing; pip install 'topoot_gpu[test]')")
        return 0
    t0 = time.perf_counter()
    for a in batch:
        cc = gudhi.CubicalComplex(top_dimensional_cells=a)
        cc.compute_persistence(homology_coeff_field=2, min_persistence=0)
        cc.cofaces_of_persistence_pairs()
    ref_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    cubical_persistence(batch, num_threads=1)
    ms = (time.perf_counter() - t0) * 1e3
    print(f"\nGUDHI CubicalComplex, same batch, sublevel: {ref_ms:.1f} ms; ours on one thread: {ms:.2f} ms")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="topoot", description="TopoOT persistence-and-transport kernels")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="persistence diagrams and timings of generated maps")
    p.add_argument("--size", type=int, default=224, help="map side in pixels (default 224)")
    p.set_defaults(func=demo)
    args = ap.parse_args(argv)
    if getattr(args, "size", 1) < 1:
        ap.error("--size must be positive")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
