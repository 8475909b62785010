"""anomalib post-processing: MEBin from persistence against anomalib's, TopoOT against its threshold.

A batch of ``--batch`` anomaly-like ``--size`` x ``--size`` maps (``[B, 1, H, W]``, what anomalib's
``forward`` gets), through ``forward(InferenceBatch)`` of:

* anomalib's ``MEBinPostProcessor`` and :class:`topoot_gpu.anomalib.PersistenceMEBinPostProcessor`:
  ms per map and their ratio; the masks and thresholds are checked identical before timing;
* anomalib's default ``PostProcessor`` (one threshold) and
  :class:`topoot_gpu.anomalib.TopoOTPostProcessor` (refine: selection and head): ms per map.

anomalib's MEBin labels every map 64 times with 1000 rounds of max-pooling (about a minute per
256x256 map on a 2-core CPU), image after image, so its cost per map does not depend on the batch:
it is timed on the first ``--anomalib-maps`` maps of the batch (default 2), ours on the whole batch
and on that same sub-batch (the identity check uses the sub-batch, whose MEBin range is its own).
Median of ``--repeats`` after one warm-up (anomalib's MEBin: ``--anomalib-repeats``, no warm-up:
a run is a minute and has nothing to warm). Needs anomalib: run it in ``.venv-anomalib``
(``make test-anomalib`` builds it). JSON ``benchmarks/results/postprocess_<device>.json``.

    .venv-anomalib/bin/python benchmarks/bench_postprocess.py [--batch 32] [--size 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: off
from _common import median_seconds, print_table, write_results  # noqa: E402  (before numpy)

import numpy as np  # noqa: E402
import torch  # noqa: E402
# isort: on

from anomalib.data import InferenceBatch  # noqa: E402
from anomalib.post_processing import MEBinPostProcessor, PostProcessor  # noqa: E402

from topoot_gpu.anomalib import PersistenceMEBinPostProcessor, TopoOTPostProcessor  # noqa: E402
from topoot_gpu.testing import blob_maps  # noqa: E402


def timed(fn, repeats: int, warmup: int, device: torch.device) -> float:
    def run():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return median_seconds(run, repeats=repeats, warmup=warmup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--anomalib-maps", type=int, default=2, help="maps anomalib's MEBin is timed on (default 2)")
    ap.add_argument("--anomalib-repeats", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/postprocess_<device>.json)")
    args = ap.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(os.cpu_count() or 1)
    rng = np.random.default_rng(args.seed)
    maps = torch.from_numpy(blob_maps(rng, args.batch, args.size, args.size).astype(np.float32))[:, None].to(device)
    head = maps[: args.anomalib_maps]
    ours_mebin, their_mebin = PersistenceMEBinPostProcessor().to(device), MEBinPostProcessor().to(device)
    topoot, default = TopoOTPostProcessor().to(device), PostProcessor().to(device)

    t0 = time.perf_counter()
    theirs = their_mebin(InferenceBatch(anomaly_map=head))  # also the first of the timed runs below
    first = time.perf_counter() - t0
    mine = ours_mebin(InferenceBatch(anomaly_map=head))
    identical = bool(torch.equal(mine.pred_mask, theirs.pred_mask))
    if not identical:
        sys.exit("PersistenceMEBinPostProcessor's masks differ from MEBinPostProcessor's: not timing")
    times = [first] + [
        timed(lambda: their_mebin(InferenceBatch(anomaly_map=head)), 1, 0, device)
        for _ in range(args.anomalib_repeats - 1)
    ]
    anomalib_mebin = float(np.median(times)) / len(head)
    ours_head = timed(lambda: ours_mebin(InferenceBatch(anomaly_map=head)), args.repeats, 1, device) / len(head)
    ours_batch = timed(lambda: ours_mebin(InferenceBatch(anomaly_map=maps)), args.repeats, 1, device) / len(maps)
    refine_batch = timed(lambda: topoot(InferenceBatch(anomaly_map=maps)), args.repeats, 1, device) / len(maps)
    threshold_batch = timed(lambda: default(InferenceBatch(anomaly_map=maps)), args.repeats, 1, device) / len(maps)
    rows = [
        {"post-processor": "MEBinPostProcessor (anomalib)", "maps": len(head), "ms/map": 1e3 * anomalib_mebin,
         "ratio": 1.0},
        {"post-processor": "PersistenceMEBinPostProcessor", "maps": len(head), "ms/map": 1e3 * ours_head,
         "ratio": anomalib_mebin / ours_head},
        {"post-processor": "PersistenceMEBinPostProcessor", "maps": len(maps), "ms/map": 1e3 * ours_batch,
         "ratio": anomalib_mebin / ours_batch},
        {"post-processor": "PostProcessor (anomalib, threshold)", "maps": len(maps), "ms/map": 1e3 * threshold_batch,
         "ratio": ""},
        {"post-processor": "TopoOTPostProcessor (refine)", "maps": len(maps), "ms/map": 1e3 * refine_batch,
         "ratio": ""},
    ]  # fmt: skip
    print(f"{args.batch} maps {args.size}x{args.size} on {device}; MEBin masks identical: {identical}")
    print_table(rows, ["post-processor", "maps", "ms/map", "ratio"])
    write_results(f"postprocess_{device.type}", "bench_postprocess", args, rows,
                  sections={"mebin_masks_identical": identical,
                            "ratio_is": "anomalib's MEBin ms per map / this row's ms per map"})  # fmt: skip


if __name__ == "__main__":
    main()
