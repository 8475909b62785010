"""``topoot eval``: the TopoOT paper's protocol on anomaly maps a user saved from any model.

Layout (MVTec AD's): ``--maps DIR`` holds one map per test image, ``DIR/<defect>/<name>.npy`` (or
``.npz`` / ``.png``, read as :func:`topoot_gpu.refinement.files.load_maps` reads them; ``DIR/test/...``
also works), ``DIR/good/`` the normal test images; ``--gt DIR`` holds the masks,
``DIR/<defect>/<name>_mask.png`` (or ``<name>.png``; non-zero = defect). A map whose size differs from
its mask is resized to the mask's size (bilinear, ``align_corners=False``), as a model's map is
upsampled to its image.

Protocol: only the anomalous test images are scored. Per image, precision ``TP / (TP + FP)`` (0 for
an empty mask), recall ``TP / (TP + FN)``, F1 ``2PR / (P + R)`` (0 if both are 0) and IoU
``TP / (TP + FP + FN)``, each averaged over the images; pixel AUROC over every pixel of those images
(for a binary mask, ``(TPR + TNR) / 2``; for the maps themselves, the rank statistic with ties
counted half). Methods:

* ``topoot``: :func:`topoot_gpu.refine` (maps batched by size, ``--seed``);
* ``mebin``: :func:`topoot_gpu.mebin_thresholds` with ``range="image"`` (each map from its own
  range, so the result does not depend on how the images are batched);
* ``thr``: ``map > mu + 3 sigma``, mean and standard deviation of every pixel of the normal maps
  (``--normal DIR``, else ``DIR/good`` of ``--maps``); skipped, with a note, when there are none.

Outputs in ``--out``: ``eval.json`` (every number, per method and per image), ``pr.png`` (the
per-image-averaged precision-recall curve of one global threshold swept over the maps, with each
method's point on it) and ``overlays.png`` (map, ground truth and each method's mask, true positives
green, false positives red, misses blue).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .core.validation import check_choice
from .mebin.api import mebin_thresholds
from .refinement.api import refine
from .refinement.files import SUFFIXES, load_maps

METHODS = ("topoot", "mebin", "thr")
NORMAL = "good"


@dataclass
class Item:
    """One test image: its defect type, name, map and ground-truth mask (None for a normal image)."""

    defect: str
    name: str
    map: np.ndarray
    gt: np.ndarray | None


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 0


def _resize(a: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if a.shape == shape:
        return a
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))[None, None]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def _map_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def load_items(maps_dir: Path, gt_dir: Path | None) -> list[Item]:
    """Every map of ``maps_dir`` (MVTec layout) with its mask from ``gt_dir`` (normal images: None)."""
    root = maps_dir / "test" if (maps_dir / "test").is_dir() else maps_dir
    if not root.is_dir():
        raise ValueError(f"maps: {maps_dir} is not a folder")
    items = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in _map_files(folder):
            for name, a in load_maps(path):
                gt = None
                if folder.name != NORMAL:
                    if gt_dir is None:
                        raise ValueError("gt: needed for the anomalous images")
                    candidates = [gt_dir / folder.name / f"{name}_mask.png", gt_dir / folder.name / f"{name}.png"]
                    found = [c for c in candidates if c.is_file()]
                    if not found:
                        raise ValueError(f"gt: no mask for {folder.name}/{name} (looked for {candidates[0]})")
                    gt = _read_mask(found[0])
                    a = _resize(a, gt.shape)
                items.append(Item(folder.name, name, a, gt))
    if not any(it.gt is not None for it in items):
        raise ValueError(f"maps: no anomalous maps under {root} (expected <defect>/<name>.npy beside good/)")
    return items


def pixel_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUROC of ``scores`` for the binary ``labels`` (Mann-Whitney, ties counted half); NaN if one class
    is missing."""
    scores, labels = scores.ravel(), labels.ravel().astype(bool)
    pos = int(labels.sum())
    neg = labels.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    values, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = (ends - (counts - 1) / 2.0)[inverse]  # average 1-based rank of each tie group
    return float((ranks[labels].sum() - pos * (pos + 1) / 2.0) / (pos * neg))


def image_scores(mask: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    tp = int((mask & gt).sum())
    fp = int((mask & ~gt).sum())
    fn = int((~mask & gt).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    iou = tp / (tp + fp + fn) if tp + fp + fn else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "iou": iou}


def _by_shape(maps: list[np.ndarray]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, a in enumerate(maps):
        groups.setdefault(a.shape, []).append(i)
    return groups


def method_masks(method: str, maps: list[np.ndarray], *, threshold: float | None, seed: int,
                 device: str) -> list[np.ndarray]:  # fmt: skip
    """Each map's mask by ``method`` (maps of one size go through in one batch)."""
    if method == "thr":
        return [a > threshold for a in maps]
    out: list[np.ndarray] = [np.empty(0)] * len(maps)
    for idx in _by_shape(maps).values():
        batch = torch.from_numpy(np.stack([maps[i] for i in idx]).astype(np.float32)).to(device)
        masks = refine(batch, seed=seed).mask if method == "topoot" else mebin_thresholds(batch, range="image")[0]
        for i, m in zip(idx, masks.cpu().numpy()):
            out[i] = m
    return out


def pr_curve(maps: list[np.ndarray], gts: list[np.ndarray], points: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-image-averaged (precision, recall) of ``map > t`` for ``points`` thresholds ``t`` spread over
    the quantiles of the maps' values."""
    values = np.concatenate([a.ravel() for a in maps])
    thresholds = np.unique(np.quantile(values, np.linspace(0.0, 1.0, points)))
    precision, recall = [], []
    for t in thresholds:
        s = [image_scores(a > t, g) for a, g in zip(maps, gts)]
        precision.append(np.mean([x["precision"] for x in s]))
        recall.append(np.mean([x["recall"] for x in s]))
    return np.asarray(precision), np.asarray(recall)


def evaluate(maps_dir: Path, gt_dir: Path, *, methods: tuple[str, ...] = METHODS, normal_dir: Path | None = None,
             seed: int = 0, device: str = "cpu") -> dict:  # fmt: skip
    """The protocol of the module doc; returns what ``eval.json`` holds, plus the masks (``"_masks"``)."""
    if isinstance(methods, str) or not methods:
        raise ValueError(f"methods: expected a non-empty sequence of {METHODS}, got {methods!r}")
    for method in methods:
        check_choice("methods", method, METHODS)
    try:
        torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: {e}") from e
    items = load_items(maps_dir, gt_dir)
    anomalous = [it for it in items if it.gt is not None]
    maps = [it.map for it in anomalous]
    gts = [it.gt for it in anomalous]
    normal = [it.map for it in items if it.gt is None]
    if normal_dir is not None:
        normal = [a for p in sorted(normal_dir.rglob("*")) if p.suffix.lower() in SUFFIXES for _, a in load_maps(p)]
    threshold = None
    notes = []
    if normal:
        pixels = np.concatenate([a.ravel() for a in normal])
        threshold = float(pixels.mean() + 3 * pixels.std())
    if "thr" in methods and threshold is None:
        notes.append("thr skipped: no normal maps (maps/good or --normal)")
        methods = tuple(m for m in methods if m != "thr")
    flat_gt = np.concatenate([g.ravel() for g in gts])
    result: dict = {
        "images": len(anomalous),
        "normal_images": len(normal),
        "map_pixel_auroc": pixel_auroc(np.concatenate([a.ravel() for a in maps]), flat_gt),
        "thr_threshold": threshold,
        "notes": notes,
        "methods": {},
        "_masks": {},
    }  # fmt: skip
    for method in methods:
        masks = method_masks(method, maps, threshold=threshold, seed=seed, device=device)
        per_image = [
            {"defect": it.defect, "name": it.name, **image_scores(m, it.gt)} for it, m in zip(anomalous, masks)
        ]
        flat_m = np.concatenate([m.ravel() for m in masks])
        summary = {k: float(np.mean([r[k] for r in per_image])) for k in ("precision", "recall", "f1", "iou")}
        summary["pixel_auroc"] = pixel_auroc(flat_m.astype(np.float64), flat_gt)
        result["methods"][method] = {**summary, "per_image": per_image}
        result["_masks"][method] = masks
    result["_anomalous"] = anomalous
    return result


def table(result: dict) -> str:
    lines = [f"{result['images']} anomalous images ({result['normal_images']} normal); "
             f"pixel AUROC of the maps {result['map_pixel_auroc']:.4f}"]  # fmt: skip
    if result["thr_threshold"] is not None:
        lines.append(f"thr: mu + 3 sigma of the normal maps = {result['thr_threshold']:.6g}")
    lines += result["notes"]
    header = f"{'method':<8} {'precision':>9} {'recall':>7} {'F1':>7} {'IoU':>7} {'px AUROC':>9}"
    lines += ["", header, "-" * len(header)]
    for method, s in result["methods"].items():
        lines.append(f"{method:<8} {s['precision']:>9.4f} {s['recall']:>7.4f} {s['f1']:>7.4f} {s['iou']:>7.4f} "
                     f"{s['pixel_auroc']:>9.4f}")  # fmt: skip
    return "\n".join(lines)


COLOURS = {"topoot": (40, 170, 60), "mebin": (230, 140, 20), "thr": (70, 110, 230)}


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def plot_pr(result: dict, path: Path, size: int = 560) -> None:
    """The per-image-averaged PR curve of one global threshold, and each method's point."""
    from PIL import Image, ImageDraw

    anomalous = result["_anomalous"]
    precision, recall = pr_curve([it.map for it in anomalous], [it.gt for it in anomalous])
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    left, top, right, bottom = 70, 40, size - 20, size - 60
    font, small = _font(16), _font(13)

    def xy(r: float, p: float) -> tuple[float, float]:
        return left + r * (right - left), bottom - p * (bottom - top)

    for k in range(11):
        v = k / 10
        d.line([xy(v, 0), xy(v, 1)], fill=(232, 232, 232))
        d.line([xy(0, v), xy(1, v)], fill=(232, 232, 232))
        d.text((xy(v, 0)[0] - 8, bottom + 6), f"{v:.1f}", fill="black", font=small)
        d.text((left - 34, xy(0, v)[1] - 7), f"{v:.1f}", fill="black", font=small)
    d.rectangle([left, top, right, bottom], outline="black")
    d.text(((left + right) / 2 - 25, bottom + 28), "recall", fill="black", font=font)
    d.text((8, top - 30), "precision (per-image mean)", fill="black", font=font)
    d.line([xy(r, p) for r, p in zip(recall, precision)], fill=(90, 90, 90), width=2)
    legend = [("one global threshold", (90, 90, 90))]
    for method, s in result["methods"].items():
        x, y = xy(s["recall"], s["precision"])
        d.ellipse([x - 7, y - 7, x + 7, y + 7], fill=COLOURS[method], outline="black")
        legend.append((f"{method}: F1 {s['f1']:.3f}, IoU {s['iou']:.3f}", COLOURS[method]))
    for k, (text, colour) in enumerate(legend):
        y = top + 10 + 20 * k
        d.rectangle([right - 250, y + 3, right - 238, y + 15], fill=colour)
        d.text((right - 232, y), text, fill="black", font=small)
    img.save(path)


def plot_overlays(result: dict, path: Path, rows: int = 8, cell: int = 160) -> None:
    """Up to ``rows`` anomalous images: the map, its ground truth, then each method's mask against it
    (true positives green, false positives red, misses blue)."""
    from PIL import Image, ImageDraw

    anomalous = result["_anomalous"][:rows]
    methods = list(result["methods"])
    columns = ["map", "ground truth", *methods]
    head = 22
    img = Image.new("RGB", (cell * len(columns), head + cell * len(anomalous)), "white")
    d = ImageDraw.Draw(img)
    font = _font(14)
    for c, title in enumerate(columns):
        d.text((c * cell + 6, 3), title, fill="black", font=font)
    for r, it in enumerate(anomalous):
        a = it.map
        lo, hi = float(a.min()), float(a.max())
        grey = ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)) * 200 + 30
        base = np.repeat(grey[..., None], 3, axis=2)
        panels = [base, np.where(it.gt[..., None], [230, 230, 230], base * 0.35)]
        for method in methods:
            m = result["_masks"][method][r]
            p = base * 0.55
            p = np.where((m & it.gt)[..., None], [40, 190, 60], p)
            p = np.where((m & ~it.gt)[..., None], [230, 50, 40], p)
            p = np.where((~m & it.gt)[..., None], [60, 90, 235], p)
            panels.append(p)
        for c, p in enumerate(panels):
            tile = Image.fromarray(np.clip(p, 0, 255).astype(np.uint8)).resize((cell - 4, cell - 4), Image.NEAREST)
            img.paste(tile, (c * cell + 2, head + r * cell + 2))
        d.text((4, head + r * cell + 4), f"{it.defect}/{it.name}", fill=(255, 255, 0), font=font)
    img.save(path)


def write_outputs(result: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    (out / "eval.json").write_text(json.dumps(public, indent=2, allow_nan=True) + "\n")
    plot_pr(result, out / "pr.png")
    plot_overlays(result, out / "overlays.png")
