"""End to end: the reference pipeline (released semantics, one image at a time) against ``refine``.

The reference is ``topoot_gpu.refinement.reference.refine``: GUDHI + POT selection and the released head
(pairs built pixel by pixel, a DataLoader over them, the head run again on both pixels of every
pair, 200 Sinkhorn iterations under autograd), image by image. ``refine`` runs the batch.

Maps: anomaly-like 224x224 maps (blobs on smooth noise) whose pseudo-label is not constant (a
constant label is returned untrained by both, which would flatter neither); backbone-like features
``[C, 28, 28]`` (random, float32), C = 64 and 256. Per image: seconds and images per second, the
ratio reference / refine in the same run, pixel agreement of the masks, and the head's achieved
FLOP/s (matrix-product FLOPs of training and inference, divided by the head's wall time).
torch uses every core for both. Median of repeats after a warm-up (the reference: one run).
``--device cuda``: ``refine`` gets CUDA tensors (the head on the GPU; the selection on the host
with the default ``"auto"`` backends, on the GPU with ``--persistence-backend cuda|triton
--transport-backend torch|triton``, the device path); the reference stays on the CPU, as released;
JSON ``refine_<device type>.json``.

    python benchmarks/bench_refine.py [--channels 64 256] [--batch 8] [--ref-images 2] [--repeats 3] [--device cpu]
        [--head-backends auto torch triton] [--precisions fp32 bf16]

``--precisions fp32 bf16``: a row per ``HeadConfig.precision``, with its mask agreement and speed-up
against the fp32 row of the same run, and the minor page faults per image (``getrusage``) of the timed
calls (the warm-up, whose first touch of a growing heap faults every page in, is left out as from the
times).
PatchCore's width: ``--channels 1536 --ref-images 0`` (the reference's head takes minutes there).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: off
from _common import median_seconds, print_table, write_results  # noqa: E402  (before numpy)

import numpy as np  # noqa: E402
import torch  # noqa: E402
# isort: on

from topoot_gpu import HeadConfig, RefineConfig, pseudo_labels, refine  # noqa: E402
from topoot_gpu.head.config import PRECISIONS  # noqa: E402
from topoot_gpu.refinement import reference  # noqa: E402
from topoot_gpu.testing import blob_maps  # noqa: E402


def anomaly_maps(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``n`` blob maps whose pseudo-label is neither empty nor the whole map."""
    out: list[np.ndarray] = []
    while len(out) < n:
        maps = blob_maps(rng, 2 * n, size, size, max_blobs=2)
        labels = pseudo_labels(maps).labels.reshape(2 * n, -1)
        keep = labels.any(1) & ~labels.all(1)
        out += list(maps[keep])
    return np.stack(out[:n])


def head_flops(config: HeadConfig, channels: int, low: int, size: int) -> float:
    """Matrix-product FLOPs of one head: ``epochs`` forward + backward passes and one forward.
    The first layer runs on the ``low x low`` feature grid; its input needs no gradient."""
    hid, emb, P = config.hidden(channels), config.embed_dim, size * size
    first = 2 * low * low * channels * hid
    rest = 2 * P * (hid * hid + hid * emb)
    forward = first + rest
    backward = first + 2 * rest  # weight gradients of every layer, input gradients of layers 2, 3
    return config.epochs * (forward + backward) + forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--low", type=int, default=28, help="feature grid side (default 28)")
    ap.add_argument("--channels", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ref-images", type=int, default=2, help="images the reference runs on (0: no reference)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="the torch device refine runs on (cpu, cuda)")
    ap.add_argument(
        "--head-backends", nargs="+", default=["auto"], help="head backends of refine, a row each (default auto)"
    )
    ap.add_argument(
        "--precisions", nargs="+", default=["fp32"], choices=PRECISIONS,
        help="HeadConfig.precision, a row each; agreement and speed-up against fp32 (default fp32)",
    )  # fmt: skip
    ap.add_argument("--persistence-backend", default="auto", help="cuda or triton: the selection's device path")
    ap.add_argument("--transport-backend", default="auto", help="torch or triton: the selection's device path")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/refine_<device>.json)")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device(args.device)

    rng = np.random.default_rng(args.seed)
    maps = anomaly_maps(rng, args.batch, args.size)
    rows = []
    for C in args.channels:
        features = rng.standard_normal((args.batch, C, args.low, args.low)).astype(np.float32)
        n_ref = min(args.ref_images, args.batch)
        ref = reference.refine(maps[:n_ref], features[:n_ref], seed=args.seed) if n_ref else None
        ref_s = sum(ref.seconds.values()) / n_ref if n_ref else None
        maps_on, features_on = torch.from_numpy(maps).to(device), torch.from_numpy(features).to(device)
        fp32_masks = None
        for head_backend in args.head_backends:
            for precision in args.precisions:
                config = RefineConfig(head=HeadConfig(precision=precision))
                runs: list = []
                faults: list = []  # minor page faults of each call

                def run_fast(
                    runs=runs, faults=faults, head_backend=head_backend, config=config, x=maps_on, f=features_on
                ):
                    # refine synchronises before returning
                    kw = dict(persistence_backend=args.persistence_backend, transport_backend=args.transport_backend)
                    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    runs.append(refine(x, f, seed=args.seed, head_backend=head_backend, config=config, **kw))
                    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

                fast_s = median_seconds(run_fast, repeats=args.repeats) / args.batch
                fast = runs[-1]
                fast_mask, fast_label = fast.mask.cpu().numpy(), fast.pseudo_label.cpu().numpy()
                if precision == "fp32" and fp32_masks is None:
                    fp32_masks, fp32_s = fast_mask, fast_s
                head_s = statistics.median(r.seconds["head"] for r in runs[1:]) / args.batch  # warm-up excluded
                flops = head_flops(HeadConfig(), C, args.low, args.size)
                rows.append(
                    {
                        "channels": C,
                        "head_backend": head_backend,
                        "precision": precision,
                        "size": args.size,
                        "batch": args.batch,
                        "reference_s_per_image": ref_s,
                        "reference_selection_s": ref.seconds["selection"] / n_ref if ref else None,
                        "reference_head_s": ref.seconds["head"] / n_ref if ref else None,
                        "refine_s_per_image": fast_s,
                        "refine_selection_s": statistics.median(r.seconds["selection"] for r in runs[1:]) / args.batch,
                        "refine_head_s": head_s,
                        "reference_images_per_s": 1.0 / ref_s if ref else None,
                        "refine_images_per_s": 1.0 / fast_s,
                        "ratio": ref_s / fast_s if ref else None,
                        "mask_agreement": float((ref.mask == fast_mask[:n_ref]).mean()) if ref else None,
                        "labels_identical": bool(np.array_equal(ref.pseudo_label, fast_label[:n_ref])) if ref else None,
                        # against this run's first fp32 row (the same maps, features and seed)
                        "agreement_with_fp32": None if fp32_masks is None else float((fast_mask == fp32_masks).mean()),
                        "speedup_over_fp32": None if fp32_masks is None else fp32_s / fast_s,
                        # the timed calls' (the warm-up's first touch of a growing heap left out, as
                        # from the times)
                        "minor_faults_per_image": statistics.mean(faults[-args.repeats :]) / args.batch,
                        "head_gflop_per_image": flops / 1e9,
                        "head_gflop_per_s": flops / head_s / 1e9,
                    }
                )
                print(f"C={C} head_backend={head_backend} precision={precision}: done", flush=True)
    grid = f"{args.size}x{args.size} maps, features [C, {args.low}, {args.low}]"
    print(f"\nrefine ({device}) vs reference pipeline (cpu), {grid}")
    print_table(
        rows,
        [
            "channels",
            "head_backend",
            "precision",
            "reference_s_per_image",
            "refine_s_per_image",
            "ratio",
            "refine_images_per_s",
            "mask_agreement",
            "agreement_with_fp32",
            "speedup_over_fp32",
            "minor_faults_per_image",
            "head_gflop_per_s",
        ],
    )
    write_results(
        f"refine_{device.type}", "refine", args, rows, environment_extra={"torch_threads": torch.get_num_threads()}
    )


if __name__ == "__main__":
    main()
