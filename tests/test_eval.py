"""``topoot eval`` end to end on a generated MVTec-layout folder, against a plain restatement."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from topoot_gpu import mebin_thresholds, refine
from topoot_gpu.cli import main
from topoot_gpu.evaluation import pixel_auroc
from topoot_gpu.testing import write_eval_layout


def write_layout(root, rng):
    """Two defect types of anomaly-like maps at half the masks' resolution (resized by eval), .npy and
    .png maps, and normal maps in good/."""
    return write_eval_layout(root / "maps", root / "gt", rng, size=64, per_defect=3, normal=2, png_last=True)


def restated(root, truth):
    """The protocol restated: maps upsampled with torch's bilinear resize, each method image by image."""
    import torch
    import torch.nn.functional as F

    from topoot_gpu.refinement.files import load_maps

    def load(path):
        a = load_maps(path)[0][1]
        return F.interpolate(torch.from_numpy(a)[None, None], size=(64, 64), mode="bilinear")[0, 0].numpy()

    maps = {key: load(next((root / "maps" / key[0]).glob(f"{key[1]}.*"))) for key in truth}
    normal = np.concatenate([np.load(p).ravel() for p in sorted((root / "maps" / "good").glob("*.npy"))])
    threshold = normal.astype(np.float64).mean() + 3 * normal.astype(np.float64).std()
    masks = {
        "topoot": {k: refine(a.astype(np.float32)).mask for k, a in maps.items()},
        "mebin": {k: mebin_thresholds(a.astype(np.float32))[0] for k, a in maps.items()},
        "thr": {k: a > threshold for k, a in maps.items()},
    }
    out = {}
    for method, ms in masks.items():
        rows = []
        for key, gt in truth.items():
            m = ms[key]
            tp, fp, fn = (m & gt).sum(), (m & ~gt).sum(), (~m & gt).sum()
            p = tp / (tp + fp) if tp + fp else 0.0
            r = tp / (tp + fn)
            rows.append((p, r, 2 * p * r / (p + r) if p + r else 0.0, tp / (tp + fp + fn)))
        out[method] = np.mean(rows, axis=0)
    return maps, masks, threshold, out


def test_eval_end_to_end(tmp_path, rng, capsys):
    from sklearn.metrics import roc_auc_score

    truth = write_layout(tmp_path, rng)
    out = tmp_path / "out"
    assert main(["eval", "--maps", str(tmp_path / "maps"), "--gt", str(tmp_path / "gt"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "eval.json").read_text())
    maps, masks, threshold, want = restated(tmp_path, truth)
    assert result["images"] == 6 and result["normal_images"] == 2
    assert result["thr_threshold"] == pytest.approx(threshold, rel=1e-12)
    flat_gt = np.concatenate([truth[k].ravel() for k in truth])
    assert result["map_pixel_auroc"] == pytest.approx(
        roc_auc_score(flat_gt, np.concatenate([maps[k].ravel() for k in truth])), abs=1e-12
    )
    for method in ("topoot", "mebin", "thr"):
        got = result["methods"][method]
        np.testing.assert_allclose([got["precision"], got["recall"], got["f1"], got["iou"]], want[method], atol=1e-12)
        flat = np.concatenate([masks[method][k].ravel() for k in truth])
        assert got["pixel_auroc"] == pytest.approx(roc_auc_score(flat_gt, flat), abs=1e-12)
        assert len(got["per_image"]) == 6
        assert method in printed
    for picture in ("pr.png", "overlays.png"):
        with Image.open(out / picture) as img:
            assert img.size[0] > 300 and img.size[1] > 300


def test_eval_methods_and_missing_pieces(tmp_path, rng, capsys):
    write_layout(tmp_path, rng)
    assert main(["eval", "--maps", str(tmp_path / "maps"), "--gt", str(tmp_path / "gt"), "--method", "mebin"]) == 0
    assert "topoot" not in capsys.readouterr().out
    for p in (tmp_path / "maps" / "good").iterdir():
        p.unlink()
    assert main(["eval", "--maps", str(tmp_path / "maps"), "--gt", str(tmp_path / "gt"), "--method", "thr"]) == 0
    assert "thr skipped" in capsys.readouterr().out
    (tmp_path / "gt" / "hole" / "001_mask.png").unlink()
    assert main(["eval", "--maps", str(tmp_path / "maps"), "--gt", str(tmp_path / "gt")]) == 2
    assert "no mask for hole/001" in capsys.readouterr().err
    assert main(["eval", "--maps", str(tmp_path / "nowhere"), "--gt", str(tmp_path / "gt")]) == 2


def test_evaluate_checks_its_arguments(tmp_path, rng):
    from topoot_gpu.evaluation import evaluate

    write_layout(tmp_path, rng)
    for kwargs, arg in (({"methods": ("topoot", "otsu")}, "methods"), ({"methods": "mebin"}, "methods"),
                        ({"methods": ()}, "methods"), ({"device": "gpu0"}, "device")):  # fmt: skip
        with pytest.raises(ValueError, match=arg):
            evaluate(tmp_path / "maps", tmp_path / "gt", **kwargs)


def test_pixel_auroc_with_ties(rng):
    from sklearn.metrics import roc_auc_score

    scores = rng.integers(0, 5, 500).astype(np.float64)
    labels = rng.random(500) < 0.3
    assert pixel_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(pixel_auroc(scores, np.zeros(500, bool)))
