"""Make the demo's bundled data: topoot_gpu/data/sample_maps.npz.

Four generated 224x224 anomaly-like maps (two blob maps, a ring, a scratch, each drawn again
until its pseudo-label is neither empty nor the whole map; no download) and
backbone-like features for each, [32, 28, 28]: fixed random projections of map statistics on the
28x28 grid a ResNet-style backbone gives for a 224x224 image, plus noise. Stored as float16.

    python scripts/make_sample_data.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from topoot_gpu import pseudo_labels
from topoot_gpu.testing import blob_maps, ring_maps, scratch_maps

OUT = Path(__file__).resolve().parent.parent / "topoot_gpu" / "data" / "sample_maps.npz"


def backbone_features(rng: np.random.Generator, maps: np.ndarray, channels: int = 32, grid: int = 28) -> np.ndarray:
    B, H, W = maps.shape
    pooled = maps.reshape(B, grid, H // grid, grid, W // grid)
    stats = np.stack(
        [pooled.mean((2, 4)), pooled.max((2, 4)), pooled.min((2, 4)), pooled.std((2, 4)), np.ones((B, grid, grid))], 1
    )
    projection = rng.normal(size=(channels, stats.shape[1]))
    features = np.einsum("cs,bsij->bcij", projection, stats)
    return features + 0.05 * rng.normal(size=features.shape)


def with_structure(rng: np.random.Generator, make) -> np.ndarray:
    """The first map from ``make(rng)`` whose pseudo-label is neither empty nor the whole map."""
    while True:
        m = make(rng)
        label = pseudo_labels(m).labels
        if label.any() and not label.all():
            return m[0]


def main() -> None:
    rng = np.random.default_rng(20261123)
    names = ["blob", "two blobs", "ring", "scratch"]
    makers = [
        lambda r: blob_maps(r, 1, 224, 224, max_blobs=1),
        lambda r: blob_maps(r, 1, 224, 224, max_blobs=3),
        lambda r: ring_maps(r, 1, 224, 224),
        lambda r: scratch_maps(r, 1, 224, 224),
    ]
    maps = np.stack([with_structure(rng, make) for make in makers])
    features = backbone_features(rng, maps)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT, maps=maps.astype(np.float16), features=features.astype(np.float16), names=np.array(names))
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
