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

from topoot_gpu.testing import write_eval_layout


def main(out: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    write_eval_layout(out / "maps", out / "ground_truth", rng, size=128, per_defect=4, normal=4, quantiles=(0.95, 0.99))
    print(f"wrote {out}/maps and {out}/ground_truth")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
