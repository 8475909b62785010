"""Pseudo-labels: the plain reference (GUDHI + POT, one map at a time) against the batched path.

Smooth 224x224 maps (Gaussian-blurred noise, sigma 4) and raw-noise 64x64 maps, batch 64, and
raw-noise 224x224 maps, batch ``--noise-batch`` (2): about 10k sublevel-H1 and 5.6k superlevel-H0
pairs per level map, so dense transport problems of ~10k x 10k points, a new batch every round (as
an archive's images come: the problems' sizes change from call to call). Default SelectionConfig
(the released implementation). The reference runs on the first ``--ref-maps`` maps of each case
(about a quarter of a second per smooth map, ten seconds per 224x224 noise map); ms per map,
ratio = reference / ours (the median of the per-map ratios within interleaved rounds), and whether
the labels agree on those maps (that check is also the reference's warm-up).

    python benchmarks/bench_selection.py [--batch 64] [--noise-batch 2] [--ref-maps 4] [--repeats 3]

``--device-path``: the selection's device path instead (GPU persistence and transport backends
chained on the maps' device, ``--device cuda``, or on CPU tensors to show the path's overhead on
the host: Triton interpreted, the CUDA source emulated, so only tiny sizes make sense there)
against the C++ core in the same run, on smooth and anomaly-like maps at ``--batches``: maps per
second, the host syncs per batch (counted in one extra, untimed run), the time in persistence, in
transport and in the rest of the selection (one more run, the device synchronised around each
call), and the peak device memory per map (CUDA only); labels compared with the C++ core's.

    python benchmarks/bench_selection.py --device-path --device cuda [--batches 1 16 256 1024] [--size 224]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: off
from _common import interleaved_seconds, median_seconds, print_table, write_results  # noqa: E402  (before numpy)

import numpy as np  # noqa: E402
# isort: on

from topoot_gpu import pseudo_labels  # noqa: E402
from topoot_gpu.selection import reference  # noqa: E402
from topoot_gpu.testing import blob_maps, count_host_syncs, cuda_host_kernels, smooth_maps  # noqa: E402


def stage_seconds(run, sync) -> dict[str, float]:
    """One more run with the persistence and transport calls timed (the device synchronised around
    each): seconds in each and in the rest of the selection."""
    import time

    from topoot_gpu.selection import api

    spent = {"persistence": 0.0, "transport": 0.0}
    saved = {"persistence": api.pairs_of_valid_maps, "transport": api.best_stability}

    def timed(stage):
        def call(*a, **k):
            sync()
            start = time.perf_counter()
            out = saved[stage](*a, **k)
            sync()
            spent[stage] += time.perf_counter() - start
            return out

        return call

    api.pairs_of_valid_maps, api.best_stability = timed("persistence"), timed("transport")
    try:
        sync()
        start = time.perf_counter()
        run()
        sync()
        total = time.perf_counter() - start
    finally:
        api.pairs_of_valid_maps, api.best_stability = saved["persistence"], saved["transport"]
    return {**spent, "rest": total - spent["persistence"] - spent["transport"]}


def device_path(args) -> None:
    import contextlib
    from collections import Counter

    import torch

    rng = np.random.default_rng(args.seed)
    dev = torch.device(args.device)
    rows = []

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    with contextlib.ExitStack() as stack:
        if dev.type == "cpu" and args.persistence_backend == "cuda":
            stack.enter_context(cuda_host_kernels())
        backends = dict(persistence_backend=args.persistence_backend, transport_backend=args.transport_backend)
        for kind in ("smooth", "anomaly-like"):
            for batch in args.batches:
                if kind == "smooth":
                    host = smooth_maps(rng, batch, args.size, args.size, sigma=4.0)
                else:
                    host = blob_maps(rng, batch, args.size, args.size, max_blobs=3)
                maps = torch.from_numpy(host).to(dev)

                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                ours = median_seconds(lambda m=maps: (pseudo_labels(m, **backends), sync()), repeats=args.repeats)
                peak = torch.cuda.max_memory_allocated() / batch if dev.type == "cuda" else None
                cpu = median_seconds(lambda h=host: pseudo_labels(h), repeats=args.repeats)
                with count_host_syncs() as events:
                    got = pseudo_labels(maps, **backends)
                stages = stage_seconds(lambda m=maps: pseudo_labels(m, **backends), sync)
                syncs = Counter(m.removeprefix("topoot_gpu.") for _, m in events)
                agree = bool(np.array_equal(got.labels.cpu().numpy(), pseudo_labels(host).labels))
                rows.append(
                    {
                        "maps": f"{kind} {args.size}x{args.size}",
                        "batch": batch,
                        "device_path_maps_per_s": batch / ours,
                        "cpp_core_maps_per_s": batch / cpu,
                        "ratio": cpu / ours,
                        "host_syncs_per_batch": sum(syncs.values()),
                        "syncs_by_module": dict(syncs),
                        "peak_device_bytes_per_map": peak,
                        **{f"{k}_ms_per_batch": v * 1e3 for k, v in stages.items()},
                        "labels_agree": agree,
                    }
                )
                print(f"done {kind} batch {batch}", flush=True)
    print(f"\nmaps per second on {dev}; ratio = C++ core time / device path time (same run)")
    cols = ["maps", "batch", "device_path_maps_per_s", "cpp_core_maps_per_s", "ratio", "host_syncs_per_batch"]
    stages = ["persistence_ms_per_batch", "transport_ms_per_batch", "rest_ms_per_batch"]
    print_table(rows, [*cols, *stages, "peak_device_bytes_per_map", "labels_agree"])
    write_results(f"selection_device_{dev.type}", "pseudo_labels device path vs C++ core", args, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--noise-batch", type=int, default=2, help="raw-noise 224x224 maps (0: leave the case out)")
    ap.add_argument("--ref-maps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/selection_cpu.json)")
    ap.add_argument("--device-path", action="store_true", help="time the device path (see above)")
    ap.add_argument("--device", default="cuda", help="the maps' device with --device-path")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256, 1024])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--persistence-backend", default="cuda", choices=["cuda", "triton"])
    ap.add_argument("--transport-backend", default="triton", choices=["torch", "triton"])
    args = ap.parse_args()
    if args.device_path:
        device_path(args)
        return

    rng = np.random.default_rng(args.seed)
    cases = {
        "smooth 224x224": smooth_maps(rng, args.batch, 224, 224, sigma=4.0),
        "noise 64x64": rng.random((args.batch, 64, 64)),
    }
    if args.noise_batch:  # one batch per round and one for the check and warm-up
        cases["noise 224x224"] = list(rng.random((args.repeats + 1, args.noise_batch, 224, 224)))
    rows = []
    for name, maps in cases.items():
        rounds = maps if isinstance(maps, list) else [maps] * (args.repeats + 1)
        sub = rounds[0][: args.ref_maps]
        agree = bool(np.array_equal(pseudo_labels(sub).labels, reference.pseudo_labels(sub).labels))
        pseudo_labels(rounds[0])  # warm-up of a whole batch (the check above warmed the reference)
        # Interleaved rounds (ours, then the reference, on the round's maps), the ratio the median of
        # the per-map ratios within a round: a slow spell of the shared machine falls on both alike.
        feed = {"ours": iter(rounds[1:]), "reference": iter(rounds[1:])}
        times = interleaved_seconds(
            {
                "ours": lambda feed=feed: pseudo_labels(next(feed["ours"])),
                "reference": lambda feed=feed: reference.pseudo_labels(next(feed["reference"])[: args.ref_maps]),
            },
            repeats=args.repeats,
            warmup=0,
        )
        ours = [t / len(rounds[0]) for t in times["ours"]]
        ref = [t / len(sub) for t in times["reference"]]
        rows.append(
            {
                "maps": name,
                "batch": len(rounds[0]),
                "ours_ms_per_map": statistics.median(ours) * 1e3,
                "reference_ms_per_map": statistics.median(ref) * 1e3,
                "ratio": statistics.median(r / o for r, o in zip(ref, ours)),
                "labels_agree": agree,
            }
        )
        print(f"done {name}", flush=True)
    print("\nms per map; ratio = reference / ours (same run)")
    print_table(rows, ["maps", "batch", "ours_ms_per_map", "reference_ms_per_map", "ratio", "labels_agree"])
    write_results("selection_cpu", "pseudo_labels vs reference", args, rows)


if __name__ == "__main__":
    main()
