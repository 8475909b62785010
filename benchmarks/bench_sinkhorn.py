"""Batched Sinkhorn against POT one problem at a time: problems per second and ratio.

Problems are built as TopoOT builds them: two random diagrams of n points each, ``normalized``
costs, uniform weights. For each batch size, n and reg: our solver on the whole batch (default
backend and domain, all threads and one thread) and POT ``ot.sinkhorn`` (its default method) on
the first ``--pot-problems`` problems one by one (a ragged batch: every problem); ours on one
thread, POT and the torch backend (CPU, one thread) in interleaved rounds, ratio = the median
within a round of our problems/s over POT's; all threads: median of repeats after a warm-up.
With a GPU, the torch backend and the Triton kernel also run on it.

``--ragged B``: also a ragged batch of ``B`` problems whose sides are drawn in ``--ragged-sizes``
(default 5..200), once padded to the largest (``diagram_costs``) and once packed (``diagram_costs(...,
packed=True)``, ``sinkhorn(..., sizes=...)``: each problem at its own size); POT solves each problem
at its own size, so the ratio is per problem as a user of either would see it.

Before timing, our plans and ``n_iter`` are compared with POT's loop on the problems POT is timed
on (``max_plan_diff_vs_pot``, ``n_iter_equal_pot``). POT's own batched solver
(``ot.batch.solve_batch``, method ``"sinkhorn"``, on the padded batch) is timed too where the
installed POT has it; its stopping rule is not ``ot.sinkhorn``'s, so it is a timing only. The
torch backend is timed on the CPU too (one thread), as a ratio of times to the C++ backend's.

    python benchmarks/bench_sinkhorn.py [--batches 1 64 1024] [--sizes 16 64 128] [--regs 0.3 0.05]
                                        [--ragged 1024]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: off
from _common import interleaved_seconds, median_seconds, print_table, write_results  # noqa: E402  (before numpy)

import numpy as np  # noqa: E402
import torch  # noqa: E402
# isort: on

from topoot_gpu import diagram_costs, sinkhorn  # noqa: E402


def make_problems(batch: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    P = [np.sort(rng.random((n, 2)), 1) for _ in range(batch)]
    Q = [np.sort(rng.random((n, 2)), 1) for _ in range(batch)]
    return P, Q


def make_ragged(batch: int, lo: int, hi: int, seed: int):
    rng = np.random.default_rng(seed)
    P = [np.sort(rng.random((int(rng.integers(lo, hi + 1)), 2)), 1) for _ in range(batch)]
    Q = [np.sort(rng.random((int(rng.integers(lo, hi + 1)), 2)), 1) for _ in range(batch)]
    return P, Q


def measure(P, Q, reg: float, layout: str, args, ot, pot_problems: int) -> dict:
    """One configuration: ours on the whole batch in ``layout`` (``"padded"``: ``[B, n_max, m_max]``;
    ``"packed"``: each problem at its own size), POT on its first problems one by one (each at its
    own size) and POT's batched solver on the padded batch; our iterates checked against POT's
    loop first; the GPU backends if present."""
    batch = len(P)
    kw = {"reg": reg, "max_iter": args.max_iter}
    if layout == "packed":
        M, a, b, sizes = diagram_costs(P, Q, packed=True)
        kw["sizes"] = sizes
    else:
        M, a, b = diagram_costs(P, Q)
    res = sinkhorn(a, b, M, **kw)
    row = {"layout": layout, "domain": res.domain, "median_n_iter": float(res.n_iter.double().median())}
    t = median_seconds(lambda: sinkhorn(a, b, M, **kw), repeats=args.repeats)
    row["ours_cpu_problems_per_s"] = batch / t
    k = min(batch, pot_problems)
    # Each problem at its own size, as a POT user would pass it.
    real = [tuple(x.numpy() for x in diagram_costs([P[j]], [Q[j]], packed=True)[:3]) for j in range(k)]
    real = [(pa, pb, pM.reshape(len(pa), len(pb))) for pM, pa, pb in real]

    def pot():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [
                ot.sinkhorn(pa, pb, pM, reg, numItermax=args.max_iter, stopThr=1e-9, log=True)
                for pa, pb, pM in real
            ]

    # Same iterates: POT's n_iter and plans within 1e-9 on the problems it is timed on.
    sol = pot()
    ours = sinkhorn(a, b, M, **kw)
    diff, same_iter, off = 0.0, True, 0
    for j, (G, log) in enumerate(sol):
        n, m = G.shape
        if layout == "packed":
            mine = ours.plan[off : off + n * m].reshape(n, m).numpy()
            off += n * m
        else:
            mine = ours.plan[j, :n, :m].numpy()
        diff = max(diff, float(np.abs(mine - G).max()))
        same_iter &= int(ours.n_iter[j]) == int(log["niter"])
    row["max_plan_diff_vs_pot"] = diff
    row["n_iter_equal_pot"] = same_iter
    # Ours on one thread, POT, and the torch backend on the CPU (one thread, torch's own setting)
    # in interleaved rounds; each ratio is the median of the ratios within a round.
    threads = torch.get_num_threads()

    def torch_backend():
        torch.set_num_threads(1)
        try:
            sinkhorn(a, b, M, backend="torch", **kw)
        finally:
            torch.set_num_threads(threads)

    times = interleaved_seconds(
        {"ours": lambda: sinkhorn(a, b, M, num_threads=1, **kw), "pot": pot, "torch": torch_backend},
        repeats=args.repeats,
    )
    row["ours_cpu_1thread_problems_per_s"] = batch / statistics.median(times["ours"])
    row["pot_problems_per_s"] = k / statistics.median(times["pot"])
    row["torch_cpu_1thread_problems_per_s"] = batch / statistics.median(times["torch"])
    row["torch_vs_cpp_1thread_time"] = statistics.median(x / o for x, o in zip(times["torch"], times["ours"]))
    row["ratio_1thread_vs_pot"] = statistics.median((p / k) / (o / batch) for p, o in zip(times["pot"], times["ours"]))
    row["ratio_all_threads_vs_pot"] = row["ours_cpu_problems_per_s"] / row["pot_problems_per_s"]
    row["pot_batch_problems_per_s"] = pot_batch(P[:k], Q[:k], reg, args, ot)
    if torch.cuda.is_available() and layout == "padded":
        ga, gb, gM = (x.cuda() for x in (a, b, M))
        for backend, domain in (("torch", "auto"), ("triton", "log")):

            def run(backend=backend, domain=domain):
                sinkhorn(ga, gb, gM, backend=backend, domain=domain, **kw)
                torch.cuda.synchronize()

            row[f"gpu_{backend}_problems_per_s"] = batch / median_seconds(run, repeats=args.repeats)
    return row


def pot_batch(P, Q, reg: float, args, ot) -> float | None:
    """POT's own batched solver (``ot.batch.solve_batch``, POT >= 0.9.6, method ``"sinkhorn"``) on
    the padded problems: a timing for reference only, its stopping rule differs from ``ot.sinkhorn``
    (its iterates are not POT's loop's). ``None`` where this POT has no ``ot.batch``."""
    try:
        from ot.batch import solve_batch
    except ImportError:
        return None
    M, a, b = (x.numpy() for x in diagram_costs(P, Q))

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            solve_batch(M, reg=reg, a=a, b=b, max_iter=args.max_iter, tol=1e-9, method="sinkhorn", grad="detach")

    return len(P) / median_seconds(run, repeats=args.repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 1024, 4096])
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 128, 256])
    ap.add_argument("--regs", type=float, nargs="+", default=[0.3, 0.05])
    ap.add_argument("--max-iter", type=int, default=1000)
    ap.add_argument("--pot-problems", type=int, default=32, help="problems POT is timed on (per problem)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-elements", type=float, default=2e8, help="skip configurations with more B*n*m")
    ap.add_argument("--ragged", type=int, default=0, help="problems of a ragged batch (0: none)")
    ap.add_argument("--ragged-sizes", type=int, nargs=2, default=[5, 200], help="range of its sides")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/sinkhorn_<device>.json)")
    args = ap.parse_args()

    import ot

    gpu = torch.cuda.is_available()
    rows = []
    for n in args.sizes:
        for batch in args.batches:
            if batch * n * n > args.max_elements:
                continue
            P, Q = make_problems(batch, n, args.seed)
            for reg in args.regs:
                rows.append(
                    {"batch": batch, "n": n, "reg": reg, **measure(P, Q, reg, "padded", args, ot, args.pot_problems)}
                )
                print(f"done batch {batch} n {n} reg {reg}", flush=True)
    if args.ragged:
        lo, hi = args.ragged_sizes
        P, Q = make_ragged(args.ragged, lo, hi, args.seed)
        for reg in args.regs:
            for layout in ("padded", "packed"):
                # POT on every problem: its first few are no sample of the batch's sizes.
                row = measure(P, Q, reg, layout, args, ot, args.ragged)
                rows.append({"batch": args.ragged, "n": f"{lo}..{hi}", "reg": reg, **row})
                print(f"done ragged batch {args.ragged} reg {reg} {layout}", flush=True)
    columns = [
        "batch",
        "n",
        "reg",
        "layout",
        "domain",
        "median_n_iter",
        "ours_cpu_1thread_problems_per_s",
        "ours_cpu_problems_per_s",
        "pot_problems_per_s",
        "ratio_1thread_vs_pot",
        "ratio_all_threads_vs_pot",
        "pot_batch_problems_per_s",
        "torch_vs_cpp_1thread_time",
        "n_iter_equal_pot",
        "max_plan_diff_vs_pot",
    ]
    if gpu:
        columns += ["gpu_torch_problems_per_s", "gpu_triton_problems_per_s"]
    print("\nproblems per second (ratio = ours / POT one by one, same run)")
    print_table(rows, columns)
    write_results("sinkhorn_" + ("gpu" if gpu else "cpu"), "batched sinkhorn vs POT", args, rows)


if __name__ == "__main__":
    main()
