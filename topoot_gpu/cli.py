"""The ``topoot`` command.

* ``topoot demo``: the whole refinement on the bundled sample data (four generated 224x224 maps
  with backbone-like features, no download, no GPU): a per-image table, PNG overlays and a JSON
  summary in an output folder.
* ``topoot refine INPUTS... --out DIR``: refine ``.npy`` / ``.npz`` / ``.png`` maps (files,
  folders, globs), write each mask as PNG and ``.npy`` and a manifest, resumably
  (:func:`topoot_gpu.refine_files`); ``--distributed`` under torchrun, ``--ray ADDRESS`` on a Ray
  cluster (:mod:`topoot_gpu.ray`).
* ``topoot eval --maps DIR --gt DIR``: the TopoOT paper's protocol on maps saved from any model, in
  the MVTec AD layout: TopoOT, MEBin and a mu + 3 sigma threshold compared, a table, JSON and two
  pictures (:mod:`topoot_gpu.evaluation`).
* ``topoot bench``: run the benchmarks of a source checkout and print their tables.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import keep_freed_memory, refine
from .core.backends import require
from .core.maps import normalise_maps
from .core.validation import check_seed
from .refinement import files

SAMPLE_DATA = Path(__file__).resolve().parent / "data" / "sample_maps.npz"


def _rgb(gray: np.ndarray) -> np.ndarray:
    g = (255 * np.clip(gray, 0, 1)).astype(np.uint8)
    return np.stack([g, g, g], -1)


def _overlay(base: np.ndarray, mask: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    out = base.astype(np.float64)
    out[mask] = 0.45 * out[mask] + 0.55 * np.array(color)
    return out.astype(np.uint8)


def _save_panels(path: Path, a: np.ndarray, label: np.ndarray, mask: np.ndarray) -> None:
    """map | pseudo-label (red) | mask (green), side by side."""
    from PIL import Image

    base = _rgb(a)
    gap = np.full((a.shape[0], 4, 3), 255, np.uint8)
    panels = [base, gap, _overlay(base, label, (230, 40, 40)), gap, _overlay(base, mask, (40, 200, 60))]
    Image.fromarray(np.concatenate(panels, 1)).save(path)


def demo(args: argparse.Namespace) -> int:
    data = np.load(SAMPLE_DATA)
    maps, features, names = data["maps"].astype(np.float32), data["features"].astype(np.float32), list(data["names"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shape = "x".join(map(str, maps.shape[1:]))
    print(f"topoot demo: refining {len(maps)} bundled {shape} maps (features {list(features.shape[1:])})")
    print(f"writing overlays and summary.json to {out}/\n")
    refine(maps[0][:32, :32], features[0], seed=args.seed)  # warm-up: thread pools, first allocations
    rows, single_masks = [], []
    header = f"{'image':<10} {'candidate':<26} {'label px':>8} {'mask px':>8} {'select ms':>9} {'head ms':>8}"
    print(header)
    print("-" * len(header))
    for b, name in enumerate(names):
        r = refine(maps[b], features[b], seed=args.seed)
        c = r.candidates[0]
        cand = "none" if c is None else f"{c.filtration[:3]} H{c.dim} ({c.low:.3f}, {c.high:.3f})"
        row = {
            "image": name,
            "candidate": None
            if c is None
            else {"filtration": c.filtration, "dim": c.dim, "low": c.low, "high": c.high},
            "pseudo_label_pixels": int(r.pseudo_label.sum()),
            "mask_pixels": int(r.mask.sum()),
            "selection_ms": 1e3 * r.seconds["selection"],
            "head_ms": 1e3 * (r.seconds["features"] + r.seconds["head"]),
        }
        rows.append(row)
        single_masks.append(r.mask)
        print(
            f"{name:<10} {cand:<26} {row['pseudo_label_pixels']:>8} {row['mask_pixels']:>8} "
            f"{row['selection_ms']:>9.1f} {row['head_ms']:>8.1f}"
        )
        panel = out / f"{b}_{name.replace(' ', '_')}.png"
        _save_panels(panel, normalise_maps(maps[b : b + 1])[0], r.pseudo_label, r.mask)
    t0 = time.perf_counter()
    batched = refine(maps, features, seed=args.seed)
    total = time.perf_counter() - t0
    same = all(np.array_equal(batched.mask[b], m) for b, m in enumerate(single_masks))
    print(
        f"\nthe whole batch in one call: {1e3 * total / len(maps):.1f} ms per image "
        f"(CPU, {torch.get_num_threads()} threads); masks equal to one-by-one: {same}"
    )
    summary = {
        "images": rows,
        "batched_ms_per_image": 1e3 * total / len(maps),
        "batched_equals_single": same,
        "seed": args.seed,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"overlays: map | pseudo-label (red) | mask (green) in {out}/")
    return 0


def _progress(maps: int, files_read: int, files_total: int, seconds: float) -> None:
    width = 30
    fill = width * files_read // max(files_total, 1)
    rate = maps / seconds if seconds > 0 else 0.0
    eta = (files_total - files_read) * seconds / files_read if files_read else 0.0
    sys.stderr.write(
        f"\r[{'#' * fill}{'.' * (width - fill)}] {files_read}/{files_total} files, {maps} maps, "
        f"{rate:.1f} maps/s, ETA {eta:.0f} s"
    )
    if files_read == files_total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def refine_command(args: argparse.Namespace) -> int:
    """``topoot refine``: a thin wrapper on :func:`topoot_gpu.refinement.files.refine_files`."""
    seen: set[Path] = set()
    for p in args.maps:
        key = Path(p).resolve()
        if key in seen:
            print(f"note: {p} is listed more than once: refined once", file=sys.stderr)
        seen.add(key)
    common = {"features": args.features, "batch_size": args.batch_size, "seed": args.seed,
              "overwrite": args.overwrite, "progress": None if args.quiet else _progress}  # fmt: skip
    try:
        if args.ray is not None:
            if args.distributed or args.workers:
                print("error: --ray runs its own readers and actors: no --distributed or --workers", file=sys.stderr)
                return 2
            summary = _refine_ray(args, common)
        else:
            summary = files.refine_files(args.maps, args.out, device=args.device or "cpu", num_workers=args.workers,
                                         distributed=args.distributed, **common)  # fmt: skip
    except ImportError as e:
        print(f"error: --ray: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        name, _, message = str(e).partition(": ")
        option = {"out_dir": "out", "device": "device", "features": "features", "actors": "actors"}.get(name)
        where = f"--{option} {getattr(args, option)}" if option else name
        print(f"error: {where}: {message}", file=sys.stderr)
        return 2
    for failure in summary.failures:
        print(f"error: {failure}", file=sys.stderr)
    note = (f"; {summary.skipped} skipped (outputs there)" if summary.skipped else "") + (
        f"; {summary.failed} failed" if summary.failed else ""
    )
    print(f"{summary.done} masks written to {args.out}/{note}; manifest {summary.manifest}")
    return 1 if summary.failed else 0


def _refine_ray(args: argparse.Namespace, common: dict) -> files.FilesSummary:
    from .refinement import ray_data

    import_ray = require("ray.data", "ray", "'ray[data]'")
    import_ray.DataContext.get_current().enable_progress_bars = False  # ours instead (or --quiet)
    return ray_data.refine_ray(args.maps, args.out, address=args.ray, actors=args.actors,
                               device=args.device or "auto", **common)  # fmt: skip


def bench(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    scripts = sorted(folder.glob("bench_*.py"))
    if args.names:
        scripts = [folder / f"bench_{n}.py" for n in args.names]
    missing = [s for s in scripts if not s.is_file()]
    if not scripts or missing:
        print(
            f"error: no benchmark {', '.join(map(str, missing)) or 'bench_*.py'} in {folder}: "
            "run from a source checkout or pass --dir",
            file=sys.stderr,
        )
        return 2
    status = 0
    for s in scripts:
        print(f"== {s.name} ==", flush=True)
        status |= subprocess.run([sys.executable, str(s), *args.extra]).returncode
    return status


def eval_command(args: argparse.Namespace) -> int:
    from . import evaluation

    try:
        result = evaluation.evaluate(
            Path(args.maps), Path(args.gt), methods=tuple(args.method), seed=args.seed, device=args.device,
            normal_dir=None if args.normal is None else Path(args.normal),
        )  # fmt: skip
    except ValueError as e:
        print(f"topoot eval: {e}", file=sys.stderr)
        return 2
    print(evaluation.table(result))
    if args.out is not None:
        evaluation.write_outputs(result, Path(args.out))
        print(f"\nwrote {args.out}/eval.json, pr.png and overlays.png")
    return 0


def _seed(text: str) -> int:
    try:
        seed = int(text)
        check_seed(seed)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected an int in [0, 2**63), got {text!r}") from e
    return seed


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="topoot", description="TopoOT refinement: anomaly maps in, defect masks out")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="refine the bundled sample maps; overlays and summary in --out")
    p.add_argument("--out", default="topoot_demo", help="output folder (default ./topoot_demo)")
    p.add_argument("--seed", type=_seed, default=0)
    p.set_defaults(func=demo)
    p = sub.add_parser("refine", help="refine maps from .npy/.npz/.png files, folders or globs (resumable)")
    p.add_argument(
        "maps", nargs="+", help=".npy ([H, W] or [B, H, W]), .npz (every array), .png files, folders, globs, "
        "or .txt files listing paths"
    )  # fmt: skip
    p.add_argument(
        "--features", default=None, help=".npy/.npz [N, C, h, w] with one row per map of the inputs in order, "
        "or a folder of per-input files <input stem>.npy ([C, h, w] or [N, C, h, w])"
    )  # fmt: skip
    p.add_argument("--out", required=True, help="output folder: NAME_mask.png, NAME_mask.npy, manifest.jsonl")
    p.add_argument("--batch-size", type=_positive, default=16)
    p.add_argument(
        "--device", default=None, help="torch device (default cpu; cuda with --distributed: LOCAL_RANK; with --ray: "
        "auto, each actor's GPU or its CPU)"
    )  # fmt: skip
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--workers", type=int, default=0, help="background reader processes (default 0)")
    p.add_argument("--overwrite", action="store_true", help="refine maps whose outputs exist (default: resume)")
    p.add_argument("--distributed", action="store_true", help="under torchrun: this rank's share of the inputs")
    p.add_argument(
        "--ray", default=None, metavar="ADDRESS", help="on a Ray cluster (auto: this node's; local: start one here): "
        "needs topoot_gpu[ray]; inputs and --out on a filesystem every node sees"
    )  # fmt: skip
    p.add_argument("--actors", type=_positive, default=None, help="with --ray: refining actors (default: one per GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=refine_command)
    p = sub.add_parser("eval", help="score TopoOT, MEBin and thresholding on saved maps (MVTec AD layout)")
    p.add_argument("--maps", required=True, help="maps folder: <defect>/<name>.npy|.npz|.png, good/ for normal images")
    p.add_argument("--gt", required=True, help="ground-truth folder: <defect>/<name>_mask.png")
    p.add_argument("--method", nargs="+", choices=("topoot", "mebin", "thr"), default=["topoot", "mebin", "thr"])
    p.add_argument("--normal", default=None, help="maps of normal images for thr's mu + 3 sigma (default: maps/good)")
    p.add_argument("--out", default=None, help="folder for eval.json, pr.png and overlays.png")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", default="cpu", help="torch device of refine and MEBin (default cpu)")
    p.set_defaults(func=eval_command)
    p = sub.add_parser("bench", help="run the benchmarks (from a source checkout) and print their tables")
    p.add_argument("names", nargs="*", help="benchmarks to run (e.g. refine selection); default all")
    p.add_argument("--dir", default="benchmarks", help="the benchmarks folder (default ./benchmarks)")
    p.set_defaults(func=bench)
    argv = list(sys.argv[1:] if argv is None else argv)
    # After "--": arguments passed on to every benchmark (topoot bench refine -- --channels 64).
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = ap.parse_args(argv[: len(argv) - len(extra) - (1 if "--" in argv else 0)])
    args.extra = extra
    if extra and args.command != "bench":
        ap.error("arguments after -- are for 'topoot bench' only")
    keep_freed_memory()  # reuse the head's large blocks instead of faulting pages in (see allocator.py)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
