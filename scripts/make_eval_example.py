"""An example folder for ``topoot eval``: generated anomaly maps and their masks in the MVTec AD layout.

    python scripts/make_eval_example.py OUT   # OUT/maps/<defect>/NNN.npy, OUT/maps/good/, OUT/ground_truth/
    topoot eval --maps OUT/maps --gt OUT/ground_truth --out OUT/eval

Each anomalous map is a smooth background with one to three blobs, saved at half the masks'
resolution (as a model's map before upsampling); its mask is the top few percent of the full
resolution map, the blobs' cores. No download, no model: the numbers only show the format.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from topoot_gpu.testing import blob_maps, smooth_maps


def main(out: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for defect in ("crack", "hole"):
        (out / "maps" / defect).mkdir(parents=True, exist_ok=True)
        (out / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        for k in range(4):
            m = blob_maps(rng, 1, 128, 128)[0]
            gt = m > np.quantile(m, rng.uniform(0.95, 0.99))
            np.save(out / "maps" / defect / f"{k:03d}.npy", m[::2, ::2].astype(np.float32))
            Image.fromarray((255 * gt).astype(np.uint8)).save(out / "ground_truth" / defect / f"{k:03d}_mask.png")
    (out / "maps" / "good").mkdir(parents=True, exist_ok=True)
    for k in range(4):
        np.save(out / "maps" / "good" / f"{k:03d}.npy", (0.3 * smooth_maps(rng, 1, 64, 64)[0]).astype(np.float32))
    print(f"wrote {out}/maps and {out}/ground_truth")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
