"""The ``topoot`` command.

* ``topoot demo``: the whole refinement on the bundled sample data (four generated 224x224 maps
  with backbone-like features, no download, no GPU): a per-image table, PNG overlays and a JSON
  summary in an output folder.
* ``topoot refine MAPS... --out DIR``: refine ``.npy`` / ``.npz`` / ``.png`` maps, write each
  mask as PNG and ``.npy``.
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
from .core.maps import normalise_maps
from .core.validation import check_seed

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


def _load_maps(path: Path) -> list[tuple[str, np.ndarray]]:
    """Every map in a file, named after it: ``.npy`` ``[H, W]`` or ``[B, H, W]``, ``.npz`` (each
    array), ``.png`` (grey levels; colour images are converted to luminance)."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        from PIL import Image

        with Image.open(path) as img:
            if img.mode not in ("L", "I", "I;16", "F"):
                img = img.convert("L")
            return [(path.stem, np.asarray(img, dtype=np.float64))]
    if suffix == ".npy":
        arrays = {path.stem: np.load(path, allow_pickle=False)}
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            arrays = {f"{path.stem}_{k}": z[k] for k in z.files}
    else:
        raise ValueError("expected a .npy, .npz or .png file")
    out = []
    for name, a in arrays.items():
        if a.ndim == 2:
            out.append((name, a))
        elif a.ndim == 3:
            out += [(f"{name}_{k}", m) for k, m in enumerate(a)]
        else:
            raise ValueError(f"{name}: expected [H, W] or [B, H, W], got shape {a.shape}")
    for name, a in out:
        if a.dtype.kind not in "fiu":
            raise ValueError(f"{name}: expected numbers, got dtype {a.dtype}")
    return [(n, a.astype(np.float64)) for n, a in out]


def _progress(done: int, total: int) -> None:
    width = 30
    fill = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {done}/{total} maps")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _read_inputs(paths: list[str]) -> tuple[list[tuple[str, np.ndarray]], int]:
    """Every map of the input files under a distinct output name, and how many inputs failed. A
    file listed twice is read once; a map whose name another input took first gets ``_2``, ``_3``,
    ... (a note on stderr says so); unreadable files are reported by name."""
    maps: list[tuple[str, np.ndarray]] = []
    failed = 0
    seen_files: set[Path] = set()
    taken: set[str] = set()
    for p in paths:
        path = Path(p)
        key = path.resolve()
        if key in seen_files:
            print(f"note: {p} is listed more than once: refined once", file=sys.stderr)
            continue
        seen_files.add(key)
        try:
            loaded = _load_maps(path)
        except Exception as e:  # unreadable file: report, carry on with the others
            print(f"error: {p}: {e}", file=sys.stderr)
            failed += 1
            continue
        for name, a in loaded:
            unique, k = name, 2
            while unique in taken:
                unique, k = f"{name}_{k}", k + 1
            if unique != name:
                note = f"note: {p}: the name {name!r} is taken by an earlier input; written as {unique!r}"
                print(note, file=sys.stderr)
            taken.add(unique)
            maps.append((unique, a))
    return maps, failed


def refine_files(args: argparse.Namespace) -> int:
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: --out {args.out}: cannot create the folder ({e.strerror or e})", file=sys.stderr)
        return 2
    try:
        device = torch.device(args.device)
        torch.empty(0, device=device)
    except Exception as e:  # an unknown device, or CUDA asked of a CPU-only torch (AssertionError)
        print(f"error: --device {args.device}: {e}", file=sys.stderr)
        return 2
    maps, failed = _read_inputs(args.maps)
    features = None
    if args.features is not None:
        try:
            loaded = _load_features(Path(args.features))
        except Exception as e:
            print(f"error: --features {args.features}: {e}", file=sys.stderr)
            return 2
        if len(loaded) != len(maps):
            print(f"error: --features holds {len(loaded)} images, the maps read are {len(maps)}", file=sys.stderr)
            return 2
        features = loaded
    # Consecutive maps of one shape go together, at most --batch-size at a time.
    batches: list[list[int]] = []
    for i, (_, a) in enumerate(maps):
        if batches and len(batches[-1]) < args.batch_size and maps[batches[-1][0]][1].shape == a.shape:
            batches[-1].append(i)
        else:
            batches.append([i])
    show = len(batches) > 1 and not args.quiet
    done = written = 0
    for idx in batches:
        for group, masks in _refine_batch(maps, features, idx, device, args.seed):
            for i, m in zip(group, masks):
                name = maps[i][0]
                if m is None:
                    failed += 1
                    continue
                try:
                    np.save(out / f"{name}_mask.npy", m)
                    _save_mask_png(out / f"{name}_mask.png", m)
                    written += 1
                except OSError as e:
                    print(f"\nerror: {name}: cannot write its mask ({e})", file=sys.stderr)
                    failed += 1
        done += len(idx)
        if show:
            _progress(done, len(maps))
    print(f"{written} masks written to {out}/" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0


def _refine_batch(maps, features, idx: list[int], device: torch.device, seed: int):
    """``(indices, masks)`` of one batch; when the batch is refused (a ``ValueError``), each map alone,
    so that one bad map costs only itself (``None`` for a map refused alone, with a message)."""
    groups = [idx]
    while groups:
        group = groups.pop(0)
        x = torch.from_numpy(np.stack([maps[i][1] for i in group])).to(device)
        f = None if features is None else torch.from_numpy(np.stack([features[i] for i in group])).float().to(device)
        try:
            yield group, list(refine(x, f, seed=seed).mask.cpu().numpy())
        except ValueError as e:
            if len(group) > 1:
                groups = [[i] for i in group] + groups
            else:
                print(f"\nerror: {maps[group[0]][0]}: {e}", file=sys.stderr)
                yield group, [None]


def _load_features(path: Path) -> np.ndarray:
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if len(z.files) != 1:
                raise ValueError(f"expected one array in the .npz, found {len(z.files)}")
            f = z[z.files[0]]
    else:
        f = np.load(path, allow_pickle=False)
    if f.ndim != 4:
        raise ValueError(f"expected [N, C, h, w] features, got shape {f.shape}")
    return f


def _save_mask_png(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


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
    p = sub.add_parser("refine", help="refine maps from .npy/.npz/.png files")
    p.add_argument("maps", nargs="+", help=".npy ([H, W] or [B, H, W]), .npz (every array) or .png files")
    p.add_argument("--features", default=None, help=".npy/.npz [N, C, h, w]: one per map read, in order")
    p.add_argument("--out", required=True, help="output folder: NAME_mask.png and NAME_mask.npy")
    p.add_argument("--batch-size", type=_positive, default=16)
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=refine_files)
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
