"""Cubical persistence, H0 + H1 of one filtration (sublevel, construction T), ms per map.

Ours (the C++ core, 1 thread and all threads, birth and death pixels included) against GUDHI
``CubicalComplex`` (with ``cofaces_of_persistence_pairs``, as the released TopoOT code uses it),
GUDHI's 2-D fast path ``gudhi.sklearn.CubicalPersistence`` (no pixels) and CubicalRipser
(``computePH_T``: construction T, with locations; every tool's pair counts are checked
against ours before timing). Every tool gets the same float64 maps in the same run.
Ours and GUDHI's fast path run in interleaved rounds (each once per round, on the whole batch):
their ms are medians over the rounds and their ratio columns the median of the ratios within a
round, so a slow spell of a shared machine does not fall on one tool. ``CubicalComplex`` and
CubicalRipser are timed on the first ``--slow-batch`` maps only (they are 100x slower); their
ratio is their median ms per map over ours on one thread.

    python benchmarks/bench_persistence.py [--batch 64] [--repeats 5] [--sizes 224 512]

``--gpu``: the GPU backends instead (``cuda`` and ``triton``, float32 maps on the device): maps per
second at batch 1, 16, 256 and 1024 for the two workloads of the selection (sublevel H1 + superlevel
H0) and all four diagrams (H0 and H1 of both filtrations), against the C++ core on every core and
GUDHI's fast path (both timed on the first ``--ref-maps`` maps, float32 for the core; GUDHI
always computes H0 and H1 of a filtration, so it has one figure for both workloads),
written to ``benchmarks/results/persistence_gpu.json`` with the GPU's name. For the largest batch,
the same JSON breaks the sublevel H1 + superlevel H0 workload down into the stages of
``topoot_gpu.persistence._basins`` (device synchronised after each; median ms over the repeats).

    python benchmarks/bench_persistence.py --gpu [--gpu-batches 1 16 256 1024] [--sizes 224 512]
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: off
from _common import interleaved_seconds, median_seconds, print_table, write_results  # noqa: E402  (before numpy)

import numpy as np  # noqa: E402
# isort: on

from topoot_gpu import cubical_persistence  # noqa: E402
from topoot_gpu.testing import blob_maps, smooth_maps  # noqa: E402

KINDS = ("smooth", "noise", "anomaly")


def make_maps(kind: str, batch: int, size: int, seed: int) -> np.ndarray:
    """``smooth``: blurred noise; ``noise``: raw uniform noise (the most pairs); ``anomaly``: a smooth
    background with a few blobs, what real scorers emit."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.random((batch, size, size))
    if kind == "anomaly":
        return blob_maps(rng, batch, size, size)
    return smooth_maps(rng, batch, size, size, sigma=4.0)


def tools(slow_batch: int) -> dict:
    """name -> (function of a [B, H, W] float64 batch, how many maps of the batch it is given, the
    function's (H0 pairs, H1 pairs) on one map, essential classes included), checked against ours
    before any timing: a tool called wrongly (another construction, a missing dimension) stops the
    run instead of being timed."""

    def ours_counts(a):
        d = cubical_persistence(a[None], num_threads=1)
        return int((d.dim == 0).sum()), int((d.dim == 1).sum())

    out = {
        "ours_1thread": (lambda m: cubical_persistence(m, num_threads=1), None, ours_counts),
        "ours_all_threads": (lambda m: cubical_persistence(m), None, ours_counts),
    }
    try:
        import gudhi
        from gudhi.sklearn.cubical_persistence import CubicalPersistence

        fast = CubicalPersistence(homology_dimensions=[0, 1], n_jobs=1)
        out["gudhi_fast_path"] = (
            lambda m: fast.fit_transform(list(m)), None, lambda a: tuple(len(x) for x in fast.fit_transform([a])[0])
        )  # fmt: skip

        def complex_of(a):
            cc = gudhi.CubicalComplex(top_dimensional_cells=a)
            cc.compute_persistence(homology_coeff_field=2, min_persistence=0)
            return cc

        def cubical_complex(m):
            for a in m:
                complex_of(a).cofaces_of_persistence_pairs()

        def complex_counts(a):
            cc = complex_of(a)
            return tuple(len(cc.persistence_intervals_in_dimension(d)) for d in (0, 1))

        out["gudhi_CubicalComplex"] = (cubical_complex, slow_batch, complex_counts)
    except ImportError:
        print("gudhi (with scikit-learn) not installed: skipping the GUDHI columns")
    try:
        import cripser

        # computePH_T: construction T (top-dimensional cells), as ours and GUDHI's; computePH with
        # top_dim=True computes another complex (no H0, the V construction's H1 on our maps).
        def ripser_counts(a):
            r = np.asarray(cripser.computePH_T(a, maxdim=1))
            return int((r[:, 0] == 0).sum()), int((r[:, 0] == 1).sum())

        out["cubicalripser"] = (lambda m: [cripser.computePH_T(a, maxdim=1) for a in m], slow_batch, ripser_counts)
    except ImportError:
        print("cripser not installed: skipping the CubicalRipser column")
    return out


def check_pair_counts(table: dict, maps: np.ndarray, label: str) -> None:
    """Every tool's H0 and H1 pair counts on the first map equal ours, or the run stops."""
    want = table["ours_1thread"][2](maps[0])
    for name, (_, _, counts) in table.items():
        got = counts(maps[0])
        if tuple(got) != tuple(want):
            raise SystemExit(f"{name} on {label}: (H0, H1) pairs {tuple(got)}, ours {tuple(want)}: not the same "
                             "complex, so not timed")  # fmt: skip


def scaling_exponents(rows: list[dict], names: list[str]) -> list[dict]:
    """Per kind and tool, the exponent ``k`` of ``ms ~ pixels**k``, least squares over the sizes."""
    out = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        sub = [r for r in rows if r["kind"] == kind]
        if len(sub) < 2:
            continue
        x = np.log([r["size"] ** 2 for r in sub])
        row = {"kind": kind}
        for name in names:
            y = np.log([r[f"{name}_ms"] for r in sub])
            row[f"{name}_exponent"] = float(np.polyfit(x, y, 1)[0])
        out.append(row)
    return out


WORKLOADS = {
    "subH1+supH0": [("sublevel", (1,)), ("superlevel", (0,))],
    "four diagrams": [("sublevel", (0, 1)), ("superlevel", (0, 1))],
}


def stage_milliseconds(maps, backend: str, passes, repeats: int) -> dict:
    """Median ms per stage of ``persistence._basins`` for one run of ``passes`` on ``maps`` (float32 on
    the device), the device synchronised at every stage's end; ``other`` is the rest of the run
    (validation-free entry, the essential class, assembling the fields)."""
    import torch

    from topoot_gpu.persistence import _basins

    kernels = importlib.import_module(f"topoot_gpu.persistence._{backend}")

    def sync():
        if maps.device.type == "cuda":
            torch.cuda.synchronize(maps.device)

    def once() -> dict:
        times = dict.fromkeys((*_basins.STAGES, "other", "total"), 0.0)
        last = 0.0

        def on_stage(name):
            nonlocal last
            sync()
            now = time.perf_counter()
            times[name] += now - last
            last = now

        for filtration, dims in passes:
            sync()
            start = last = time.perf_counter()
            _basins.basin_persistence(
                maps, superlevel=filtration == "superlevel", conn8_h0=True, dim0=0 in dims, dim1=1 in dims,
                kernels=kernels, on_stage=on_stage,
            )  # fmt: skip
            sync()
            end = time.perf_counter()
            times["other"] += end - last
            times["total"] += end - start
        return times

    once()  # warm-up: compilation, caches
    runs = [once() for _ in range(repeats)]
    return {f"{k}_ms": statistics.median(r[k] for r in runs) * 1e3 for k in runs[0]}


def gpu_main(args: argparse.Namespace) -> None:
    import torch

    device = torch.device(args.device)

    def run(backend, m, passes):
        for filtration, dims in passes:
            cubical_persistence(m, filtration=filtration, dims=dims, backend=backend)
        if m.device.type == "cuda":
            torch.cuda.synchronize(m.device)

    rows = []
    for size in args.sizes:
        for kind in args.kinds:
            # The CPU references: maps per second on the first --ref-maps maps, once per workload
            # (their throughput does not depend on the GPU's batch size).
            host = make_maps(kind, args.ref_maps, size, args.seed)
            cpu_maps = torch.from_numpy(host).float()
            reference = {}
            for workload, passes in WORKLOADS.items():
                seconds = median_seconds(lambda m=cpu_maps, p=passes: run("cpp", m, p), repeats=args.repeats)
                reference[workload] = {"cpu_all_threads_maps_per_s": len(host) / seconds}
            try:
                from gudhi.sklearn.cubical_persistence import CubicalPersistence

                # It always computes H0 and H1: one call per filtration, for both workloads.
                fast = CubicalPersistence(homology_dimensions=[0, 1], n_jobs=1)
                seconds = median_seconds(
                    lambda f=fast, a=list(host), n=list(-host): (f.fit_transform(a), f.fit_transform(n)), repeats=1
                )
                for workload in WORKLOADS:
                    reference[workload]["gudhi_fast_path_maps_per_s"] = len(host) / seconds
            except ImportError:
                pass
            for batch in args.gpu_batches:
                maps = torch.from_numpy(make_maps(kind, batch, size, args.seed)).float().to(device)
                for workload, passes in WORKLOADS.items():
                    row = {"size": size, "kind": kind, "batch": batch, "workload": workload}
                    for backend in args.gpu_backends:
                        seconds = median_seconds(lambda b=backend, m=maps, p=passes: run(b, m, p), repeats=args.repeats)
                        row[f"{backend}_maps_per_s"] = batch / seconds
                    row |= reference[workload]
                    for backend in args.gpu_backends:
                        row[f"{backend}_vs_cpu"] = row[f"{backend}_maps_per_s"] / row["cpu_all_threads_maps_per_s"]
                    rows.append(row)
                print(f"done {size} {kind} batch {batch}", flush=True)
    stages = []
    batch = max(args.gpu_batches)
    for size in args.sizes:
        for kind in args.kinds:
            maps = torch.from_numpy(make_maps(kind, batch, size, args.seed)).float().to(device)
            for backend in args.gpu_backends:
                ms = stage_milliseconds(maps, backend, WORKLOADS["subH1+supH0"], args.repeats)
                stages.append({"size": size, "kind": kind, "batch": batch, "backend": backend, **ms})
    columns = ["size", "kind", "batch", "workload"] + [k for k in rows[0] if k.endswith("_per_s") or k.endswith("_cpu")]
    print("\nmaps per second; *_vs_cpu = GPU backend / C++ core on every core")
    print_table(rows, columns)
    print(f"\nms per stage, sublevel H1 + superlevel H0, batch {batch} (device synchronised at each stage's end)")
    print_table(stages, list(stages[0]))
    write_results(
        "persistence_gpu", "cubical_persistence on the GPU", args, rows, sections={"stages_subH1+supH0": stages}
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--slow-batch", type=int, default=4, help="maps given to the 100x slower tools")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/persistence_cpu.json)")
    ap.add_argument("--gpu", action="store_true", help="time the GPU backends (see above)")
    ap.add_argument("--gpu-batches", type=int, nargs="+", default=[1, 16, 256, 1024])
    ap.add_argument("--gpu-backends", nargs="+", default=["cuda", "triton"], choices=["cuda", "triton"])
    ap.add_argument("--device", default="cuda", help="with --gpu: the torch device (cpu only under TRITON_INTERPRET=1)")
    ap.add_argument("--ref-maps", type=int, default=64, help="with --gpu: maps the CPU references are timed on")
    args = ap.parse_args()
    if args.gpu:
        gpu_main(args)
        return

    rows = []
    table = tools(args.slow_batch)
    for size in args.sizes:
        for kind in args.kinds:
            maps = make_maps(kind, args.batch, size, args.seed)
            check_pair_counts(table, maps, f"{kind} {size}x{size}")
            row = {"size": size, "kind": kind, "batch": args.batch}
            # The tools given the whole batch run in interleaved rounds; their ratios are the median
            # of the ratios within a round. The slow ones, on a few maps, are timed on their own.
            fast = {name: (lambda fn=fn, m=maps: fn(m)) for name, (fn, n, _) in table.items() if n is None}
            times = interleaved_seconds(fast, repeats=args.repeats)
            for name, ts in times.items():
                row[f"{name}_ms"] = statistics.median(ts) / len(maps) * 1e3
            for name, (fn, n, _) in table.items():
                if n is not None:
                    sub = maps[:n]
                    seconds = median_seconds(lambda fn=fn, sub=sub: fn(sub), repeats=args.repeats)
                    row[f"{name}_ms"] = seconds / len(sub) * 1e3
            base = row["ours_1thread_ms"]
            for name in table:
                if name == "ours_1thread":
                    continue
                if name in times:
                    row[f"{name}_ratio"] = statistics.median(t / o for t, o in zip(times[name], times["ours_1thread"]))
                else:
                    row[f"{name}_ratio"] = row[f"{name}_ms"] / base
            rows.append(row)
            print(f"done {size} {kind}", flush=True)
    columns = ["size", "kind"] + [k for k in rows[0] if k.endswith("_ms") or k.endswith("_ratio")]
    print("\nms per map (H0 + H1, sublevel, construction T); ratio = tool ms / ours 1-thread ms")
    print_table(rows, columns)
    exponents = scaling_exponents(rows, list(table))
    if exponents:
        print("\nscaling: ms ~ pixels**k, k fitted over the sizes")
        print_table(exponents, list(exponents[0]))
    write_results("persistence_cpu", "cubical_persistence H0+H1 sublevel T", args, rows + exponents)


if __name__ == "__main__":
    main()
