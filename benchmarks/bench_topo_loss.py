"""Topological losses, forward + backward: ours against the tools people use today.

Per image, forward and backward of two losses on smooth maps (Gaussian-blurred noise, sigma 4,
float64): total persistence (``sum |d - b|`` over the finite pairs of H0 and H1, sublevel, T
construction) and Clough et al.'s Betti loss (one H0 class). Tools:

* ``ours_1thread`` / ``ours_all``: :func:`topoot_gpu.persistence_diagrams` and the losses (the C++
  core on one thread / every core); ``ours_gpu`` with a CUDA device (``--device cuda``);
* ``torch_topological``: ``torch_topological.nn.CubicalComplex`` (pip ``torch-topological``: GUDHI
  per image and channel, ``cofaces_of_persistence_pairs``), the same losses written on its
  diagrams (with a shim: torch-topological 0.1.9 passes GUDHI torch tensors, which GUDHI >= 3.11
  refuses); skipped (with a note) where it is not installed;
* ``gudhi_cofaces``: the plain restatement on GUDHI's pixel pairs, :mod:`topoot_gpu.topology.reference`.

Images per second for each, the ratio of each peer's time to ours on one thread (same run), median
of repeats after a warm-up, JSON ``benchmarks/results/topo_loss_<device>.json``.

    python benchmarks/bench_topo_loss.py [--sizes 256 512] [--batches 1 16 128] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: off
from _common import median_seconds, print_table, write_results  # noqa: E402  (before numpy)

import numpy as np  # noqa: E402
import torch  # noqa: E402
# isort: on

from topoot_gpu import betti_loss, persistence_diagrams, total_persistence  # noqa: E402
from topoot_gpu.testing import smooth_maps  # noqa: E402
from topoot_gpu.topology import reference  # noqa: E402

LOSSES = ("total_persistence", "betti")


def ours(loss: str, threads: int | None):
    def run(x: torch.Tensor) -> torch.Tensor:
        d = persistence_diagrams(x, num_threads=threads)
        if loss == "total_persistence":
            return total_persistence(d, reduction="sum")
        return betti_loss(d, 1, dim=0, reduction="sum")

    return run


def gudhi_cofaces(loss: str):
    def run(x: torch.Tensor) -> torch.Tensor:
        if loss == "total_persistence":
            return reference.total_persistence(x, dim=0).sum() + reference.total_persistence(x, dim=1).sum()
        return reference.betti_loss(x, 1, dim=0).sum()

    return run


def torch_topological_losses(loss: str):
    import gudhi
    import torch_topological.nn.cubical_complex as tt_cubical
    from torch_topological.nn import CubicalComplex

    # torch-topological 0.1.9 hands GUDHI torch tensors, which GUDHI >= 3.11 (nanobind) refuses: give
    # its module a CubicalComplex that reads them as numpy (what older GUDHI did), nothing else.
    class TensorReadingCubicalComplex(gudhi.CubicalComplex):
        def __init__(self, dimensions=None, top_dimensional_cells=None, **kw):
            cells = top_dimensional_cells
            if isinstance(cells, torch.Tensor):
                cells = cells.detach().cpu().numpy()
            super().__init__(dimensions=list(dimensions), top_dimensional_cells=cells, **kw)

    tt_cubical.gudhi = type("gudhi_shim", (), {"CubicalComplex": TensorReadingCubicalComplex})
    complex_ = CubicalComplex()

    def run(x: torch.Tensor) -> torch.Tensor:
        total = x.new_zeros(())
        for infos in complex_(x):  # one list per image: a PersistenceInformation per dimension
            for info in infos:
                dgm = info.diagram
                finite = torch.isfinite(dgm[:, 1])
                pers = (dgm[finite, 1] - dgm[finite, 0]).abs()
                if loss == "total_persistence":
                    total = total + pers.sum()
                elif info.dimension == 0:
                    essential = int((~finite).sum())
                    pers = torch.sort(pers, descending=True).values
                    k = max(0, 1 - essential)
                    total = total + (1 - pers[:k] ** 2).sum() + (pers[k:] ** 2).sum()
        return total

    return run


def timed(fn, maps: np.ndarray, device: torch.device, repeats: int) -> float:
    def step():
        x = torch.from_numpy(maps).to(device).requires_grad_(True)
        fn(x).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return median_seconds(step, repeats=repeats) / len(maps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 128])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peer-images", type=int, default=16, help="at most this many images for the peers")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/topo_loss_<device>.json)")
    args = ap.parse_args()
    device = torch.device(args.device)
    rng = np.random.default_rng(args.seed)
    peers = {"gudhi_cofaces": gudhi_cofaces}
    if importlib.util.find_spec("torch_topological") is not None:
        peers = {"torch_topological": torch_topological_losses, **peers}
    else:
        print("note: torch-topological is not installed (pip install torch-topological): not measured")
    rows = []
    for size in args.sizes:
        for batch in args.batches:
            maps = smooth_maps(rng, batch, size, size)
            for loss in LOSSES:
                row = {"loss": loss, "size": size, "batch": batch}
                row["ours_1thread_ms"] = 1e3 * timed(ours(loss, 1), maps, torch.device("cpu"), args.repeats)
                row["ours_all_ms"] = 1e3 * timed(ours(loss, None), maps, torch.device("cpu"), args.repeats)
                if device.type == "cuda":
                    row["ours_gpu_ms"] = 1e3 * timed(ours(loss, None), maps, device, args.repeats)
                few = maps[: min(batch, args.peer_images)]  # the peers are per image: fewer suffice
                for name, make in peers.items():
                    row[f"{name}_ms"] = 1e3 * timed(make(loss), few, torch.device("cpu"), args.repeats)
                    row[f"{name}_ratio"] = row[f"{name}_ms"] / row["ours_1thread_ms"]
                row["ours_1thread_images_per_s"] = 1e3 / row["ours_1thread_ms"]
                rows.append(row)
                print(f"{loss} {size}x{size} batch {batch}: done", flush=True)
    columns = ["loss", "size", "batch", "ours_1thread_ms", "ours_all_ms"]
    columns += ["ours_gpu_ms"] if device.type == "cuda" else []
    for name in peers:
        columns += [f"{name}_ms", f"{name}_ratio"]
    print("\nforward + backward per image (ms); ratio = peer / ours on one thread")
    print_table(rows, columns)
    write_results(f"topo_loss_{device.type}", "topo_loss", args, rows)


if __name__ == "__main__":
    main()
