"""How far ``HeadConfig(precision="bf16")`` moves the masks from fp32 (not a timing): the head's
parity inputs (``tests/test_head.py``: blob, ring and scratch maps, their pseudo-labels; backbone
features at a quarter of the resolution, full-resolution features, or the map's own features),
one batch per seed and feature kind, trained with both precisions from the same seed. Per batch:
the share of pixels whose mask agrees, and that of the worst single image. JSON
``benchmarks/results/head_precision_agreement_cpu.json``.

    python benchmarks/head_precision_agreement.py [--seeds 6]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# isort: off
from _common import print_table, write_results  # noqa: E402  (before numpy)

import numpy as np  # noqa: E402
import torch  # noqa: E402
# isort: on

from topoot_gpu import HeadConfig, map_features, pseudo_labels, train_heads  # noqa: E402
from topoot_gpu.core.maps import normalise_maps  # noqa: E402
from topoot_gpu.testing import blob_maps, ring_maps, scratch_maps  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=6)
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/, see above)")
    args = ap.parse_args()
    rows = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        h, w = (int(x) for x in rng.integers(24, 48, size=2))
        kinds = (blob_maps(rng, 3, h, w, max_blobs=2), ring_maps(rng, 3, h, w), scratch_maps(rng, 3, h, w))
        maps = np.concatenate(kinds)
        labels = torch.from_numpy(pseudo_labels(maps).labels)
        keep = (labels.flatten(1).any(1) & ~labels.flatten(1).all(1)).numpy()
        maps, labels = maps[keep], labels[keep]
        B = len(labels)
        for kind in ("backbone", "full_resolution", "map"):
            if kind == "backbone":
                features = torch.from_numpy(rng.normal(size=(B, 24, h // 4 + 1, w // 4 + 1))).float()
            elif kind == "full_resolution":
                features = torch.from_numpy(rng.normal(size=(B, 16, h, w))).float()
            else:
                features = map_features(torch.from_numpy(normalise_maps(maps)))
            exact = train_heads(features, labels, seed=seed)
            fast = train_heads(features, labels, seed=seed, config=HeadConfig(precision="bf16"))
            same = (exact == fast).double()
            rows.append({"seed": seed, "features": kind, "images": B, "batch_agreement": float(same.mean()),
                         "worst_image_agreement": float(same.flatten(1).mean(1).min())})  # fmt: skip
    print_table(rows, ["seed", "features", "images", "batch_agreement", "worst_image_agreement"])
    print(f"\nbatches: min {min(r['batch_agreement'] for r in rows):.5f}; "
          f"worst image: {min(r['worst_image_agreement'] for r in rows):.5f}")  # fmt: skip
    write_results("head_precision_agreement_cpu", "head precision bf16 vs fp32 mask agreement", args, rows)


if __name__ == "__main__":
    main()
