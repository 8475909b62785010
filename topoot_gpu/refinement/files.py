"""Refine files of maps into mask files: streamed, resumable, sharded across processes.

:func:`refine_files` is what ``topoot refine`` runs. Inputs (files, folders, globs, or a text file
listing paths) are read by a ``torch.utils.data.DataLoader`` (``num_workers`` background
processes), so that reading and decoding overlap the refinement; maps of one shape are refined
together, ``batch_size`` at a time, with the same masks as :func:`topoot_gpu.refine` on the same
maps and seed whatever the batching, worker count or shard (a head's mask does not depend on its
batch). Each map's mask is written as ``<name>_mask.npy`` and ``<name>_mask.png`` atomically
(a temporary file, then ``os.replace``), so a killed run leaves no half-written mask, and a map
whose two outputs exist is skipped unless ``overwrite``: a second run writes nothing, an
interrupted one resumes. Every map (or unreadable file) gets one JSON line in
``manifest.jsonl``: input, name, outputs, mask pixels, chosen candidate, seconds, device, status
(``done``, ``skipped``, ``failed``) and error. A bad input never raises: it is recorded and the
run goes on.

Several processes (``torchrun --nproc-per-node N -m topoot_gpu refine ... --distributed``) each
take every ``N``-th input file (by rank, no padding, so no file is done twice), write their own
manifest part, and rank 0 merges the parts after a barrier. A Ray cluster runs the same per-file
steps in its actors (:mod:`topoot_gpu.refinement.ray_data`).
"""

from __future__ import annotations

import glob
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.validation import check_config, check_int, check_seed
from .api import refine
from .config import RefineConfig

SUFFIXES = (".npy", ".npz", ".png")
MANIFEST = "manifest.jsonl"


@dataclass(frozen=True)
class FilesSummary:
    """What :func:`refine_files` did: maps refined (``done``), skipped (outputs there already) and
    failed (unreadable files count once), and the manifest written."""

    done: int
    skipped: int
    failed: int
    manifest: Path
    failures: list[str] = field(default_factory=list)


class ManifestWriter:
    """The manifest's JSON lines, written to ``<path>.tmp`` as they come (flushed, so a killed run's
    progress can be read) and moved to ``path`` when the ``with`` block ends without an error;
    counts the entries by status for the :class:`FilesSummary`."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, path.with_suffix(path.suffix + ".tmp")
        self.counts = {"done": 0, "skipped": 0, "failed": 0}
        self.failures: list[str] = []

    @property
    def entries(self) -> int:
        return sum(self.counts.values())

    def __enter__(self) -> ManifestWriter:
        self.fh = open(self.tmp, "w")
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.fh.close()
        if kind is None:
            os.replace(self.tmp, self.path)

    def record(self, **entry: Any) -> None:
        """One entry: ``input``, ``name`` (None for an unreadable file), ``status``, ``error``, ..."""
        self.counts[entry["status"]] += 1
        if entry["status"] == "failed":
            name = f"{entry['name']}: " if entry.get("name") else ""
            self.failures.append(f"{entry['input']}: {name}{entry['error']}")
        self.fh.write(json.dumps(entry) + "\n")
        self.fh.flush()

    def summary(self, manifest: Path) -> FilesSummary:
        return FilesSummary(self.counts["done"], self.counts["skipped"], self.counts["failed"], manifest, self.failures)


def load_maps(path: Path, data: bytes | None = None) -> list[tuple[str, np.ndarray]]:
    """Every map in a file, named after it: ``.npy`` ``[H, W]`` or ``[B, H, W]`` (``NAME_k``), ``.npz``
    (each array, ``NAME_KEY``), ``.png`` (grey levels as they are; colour as luminance, PIL's
    ``convert("L")``, alpha ignored). ``data``: the file's bytes, already read (``path`` then only
    names it and gives its kind). Raises ``ValueError`` for anything else."""
    suffix = path.suffix.lower()
    source = path if data is None else io.BytesIO(data)
    if suffix == ".png":
        from PIL import Image

        with Image.open(source) as img:
            if img.mode not in ("L", "I", "I;16", "F"):
                img = img.convert("L")
            return [(path.stem, np.asarray(img, dtype=np.float64))]
    if suffix == ".npy":
        arrays = {path.stem: np.load(source, allow_pickle=False)}
    elif suffix == ".npz":
        with np.load(source, allow_pickle=False) as z:
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


def load_features(path: Path, ndims: tuple[int, ...] = (4,)) -> np.ndarray:
    """Features from a ``.npy`` or a one-array ``.npz``: ``[N, C, h, w]`` (or another of ``ndims``)."""
    if path.suffix.lower() == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if len(z.files) != 1:
                raise ValueError(f"expected one array in the .npz, found {len(z.files)}")
            f = z[z.files[0]]
    else:
        f = np.load(path, allow_pickle=False)
    if f.ndim not in ndims:
        shapes = " or ".join({3: "[C, h, w]", 4: "[N, C, h, w]"}[d] for d in ndims)
        raise ValueError(f"expected {shapes} features, got shape {f.shape}")
    if f.dtype.kind not in "fiu":
        raise ValueError(f"expected numbers, got dtype {f.dtype}")
    return f


def input_files(inputs: Any) -> list[Path]:
    """The input files, in order, each once: files as given, folders (their ``.npy``, ``.npz`` and
    ``.png`` files, sorted), glob patterns (sorted matches), and ``.txt``/``.lst`` files listing one
    path per line. A path that matches nothing is kept (it is reported as unreadable)."""
    items = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in SUFFIXES and q.is_file())
        elif p.suffix.lower() in (".txt", ".lst") and p.is_file():
            try:
                lines = p.read_text().splitlines()
            except (OSError, UnicodeDecodeError):  # not a list of paths: reported as unreadable
                out.append(p)
                continue
            out += [p.parent / line.strip() for line in lines if line.strip()]
        elif any(c in str(item) for c in "*?[") and not p.exists():
            out += sorted(Path(q) for q in glob.glob(str(item), recursive=True))
        else:
            out.append(p)
    seen: set[Path] = set()
    unique = []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _as_is(item):
    """The DataLoader's per-item conversion: none (its default turns arrays into tensors)."""
    return item


class _Reader(torch.utils.data.Dataset):
    """One input file per item, read in a DataLoader worker: ``(index, maps or None, error)``."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, load_maps(self.files[i]), None
        except Exception as e:  # unreadable: recorded, never raised
            return i, None, f"{type(e).__name__}: {e}"


def _atomic_write(path: Path, write: Callable[[Any], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_mask(out_dir: Path, name: str, mask: np.ndarray) -> tuple[Path, Path]:
    """``<name>_mask.npy`` and ``<name>_mask.png``, each written atomically."""
    from PIL import Image

    npy, png = out_dir / f"{name}_mask.npy", out_dir / f"{name}_mask.png"
    _atomic_write(npy, lambda fh: np.save(fh, mask))
    _atomic_write(png, lambda fh: Image.fromarray(mask.astype(np.uint8) * 255).save(fh, format="PNG"))
    return npy, png


def output_folder(out_dir: str | os.PathLike, *, clear_stale: bool) -> Path:
    """``out_dir``, created (a ``ValueError`` naming ``out_dir`` if it cannot be); with
    ``clear_stale``, the temporary files a killed run left half-written are removed."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"out_dir: cannot create {out} ({e.strerror or e})") from e
    if clear_stale:
        for stale in out.glob(".*_mask.*.tmp"):
            stale.unlink(missing_ok=True)
    return out


def check_device(device: str) -> torch.device:
    """``device`` as a ``torch.device`` that works here, or a ``ValueError`` naming ``device``."""
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except Exception as e:  # an unknown device, or CUDA on a CPU-only torch (an AssertionError)
        raise ValueError(f"device: {device!r} is not available ({e})") from e
    return dev


def output_names(files: list[Path]) -> dict[int, str]:
    """A distinct base name per file (its stem; ``_2``, ``_3``, ... for a later file with the same
    stem), fixed from the whole input list, so every shard and every run names outputs alike."""
    taken: set[str] = set()
    out = {}
    for i, p in enumerate(files):
        name, k = p.stem, 2
        while name in taken:
            name, k = f"{p.stem}_{k}", k + 1
        taken.add(name)
        out[i] = name
    return out


def _distributed_setup(device: str) -> tuple[int, int, str]:
    import torch.distributed as dist

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo")
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return rank, world, device


def refine_files(
    inputs: Any,
    out_dir: str | os.PathLike,
    *,
    features: str | os.PathLike | None = None,
    config: RefineConfig | None = None,
    batch_size: int = 16,
    device: str = "cpu",
    seed: int = 0,
    overwrite: bool = False,
    num_workers: int = 0,
    distributed: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
) -> FilesSummary:
    """Refine every map of ``inputs`` into mask files in ``out_dir`` (module doc).

    Args:
        inputs: a file, folder, glob pattern or ``.txt`` list of paths, or a sequence of those.
        out_dir: the output folder (created).
        features: an ``[N, C, h, w]`` ``.npy``/``.npz``, one per map of the inputs in order (all
            inputs are read once to count their maps); or a folder of per-input files
            ``<input stem>.npy``/``.npz`` (``[C, h, w]``, or ``[N, C, h, w]`` for an input of
            ``N`` maps), the form for sharded archives (each input's features are read with it, a
            missing one fails that input's maps only); or None for the maps' own features.
        config, seed: as :func:`topoot_gpu.refine`.
        batch_size: maps refined together (maps of one shape).
        device: the torch device (``"cuda"`` with ``distributed``: each rank's ``LOCAL_RANK``).
        overwrite: refine maps whose outputs exist (default: skip them, i.e. resume).
        num_workers: background reader processes (0: read in this process).
        distributed: take this process's share of the files by ``RANK``/``WORLD_SIZE`` (torchrun)
            and merge the manifest parts on rank 0.
        progress: called as ``progress(maps, files_read, files_total, seconds)`` after each file
            (``maps``: done, skipped or failed so far).

    Returns:
        A :class:`FilesSummary`.

    Raises:
        ValueError: bad arguments (never for a bad input file).
    """
    config = check_config(config, RefineConfig)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    num_workers = check_int("num_workers", num_workers, minimum=0)
    seed = check_seed(seed)
    # Other ranks may be writing now: only a single process clears what a killed run left.
    out = output_folder(out_dir, clear_stale=not distributed)
    rank, world, device = _distributed_setup(device) if distributed else (0, 1, device)
    dev = check_device(device)
    files = input_files(inputs)
    names = output_names(files)
    rows = feature_rows(files, features) if features is not None else None
    mine = list(range(rank, len(files), world))
    part = out / (f"manifest.rank{rank}.jsonl" if world > 1 else MANIFEST)
    start = time.perf_counter()
    with ManifestWriter(part) as manifest:
        record = manifest.record
        loader = torch.utils.data.DataLoader(
            _Reader([files[i] for i in mine]), batch_size=None, num_workers=num_workers, collate_fn=_as_is,
        )  # fmt: skip
        pending: list[tuple[str, str, np.ndarray, np.ndarray | None]] = []
        for read, (local, maps, error) in enumerate(loader, 1):
            i = mine[int(local)]
            src = str(files[i])
            if maps is None:
                record(input=src, name=None, status="failed", error=error)
                continue
            queue_maps(src, files[i].stem, names[i], maps, rows, i, out, overwrite, record, pending)
            pending = flush(pending, batch_size, out, dev, config, seed, record, final=False)
            if progress is not None:
                progress(manifest.entries, read, len(mine), time.perf_counter() - start)
        flush(pending, batch_size, out, dev, config, seed, record, final=True)
    manifest_path = out / MANIFEST
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank == 0:
            parts = [out / f"manifest.rank{r}.jsonl" for r in range(world)]
            _atomic_write(manifest_path, lambda fh: [fh.write(p.read_bytes()) for p in parts])
            for p in parts:
                p.unlink()
        dist.barrier()
    if progress is not None:
        progress(manifest.entries, len(mine), len(mine), time.perf_counter() - start)
    return manifest.summary(manifest_path)


#: ``rows(file index, input stem, map index in the file, maps in the file)``: that map's features.
FeatureRows = Callable[[int, str, int, int], np.ndarray]


def feature_rows(files: list[Path], features: Any) -> FeatureRows:
    """The features of each map, from ``features``: one ``[N, C, h, w]`` array file with a row per map
    of all ``files`` in order (they are read once here to count their maps), or a folder of
    per-input files (:func:`folder_feature_rows`). Raises ``ValueError`` (naming ``features``) for a
    missing or unreadable array, or one whose rows do not match the maps."""
    path = Path(features)
    if path.is_dir():
        return folder_feature_rows(path)
    try:
        array = load_features(path)
    except Exception as e:
        raise ValueError(f"features: {e}") from e
    offsets, total = {}, 0
    for i, p in enumerate(files):
        try:
            n = len(load_maps(p))
        except Exception:
            n = 0  # unreadable: reported when read
        offsets[i] = total
        total += n
    if total != len(array):
        raise ValueError(f"features: holds {len(array)} images, the inputs hold {total} maps")

    def rows(i: int, stem: str, k: int, n: int) -> np.ndarray:
        return array[offsets[i] + k].astype(np.float32)

    return rows


def folder_feature_rows(folder: Path) -> FeatureRows:
    """Per-input features, for archives read in shards: ``<folder>/<input stem>.npy`` (or ``.npz``),
    ``[C, h, w]`` for an input of one map or ``[N, C, h, w]`` with a row per map of the input. A
    missing or mismatched file raises ``ValueError`` for that input's maps only (recorded as failed
    by the callers). The last file read is kept, so an input's maps read it once."""
    last: dict[str, np.ndarray] = {}

    def rows(i: int, stem: str, k: int, n: int) -> np.ndarray:
        if stem not in last:
            found = [f for f in (folder / f"{stem}.npy", folder / f"{stem}.npz") if f.is_file()]
            if not found:
                raise ValueError(f"features: no {stem}.npy or {stem}.npz in {folder}")
            try:
                a = load_features(found[0], ndims=(3, 4))
            except Exception as e:
                raise ValueError(f"features: {found[0]}: {e}") from e
            last.clear()
            last[stem] = a[None] if a.ndim == 3 else a
        a = last[stem]
        if len(a) != n:
            raise ValueError(f"features: {stem}: holds {len(a)} images, the input holds {n} maps")
        return a[k].astype(np.float32)

    return rows


def queue_maps(
    src: str, stem: str, base: str, maps: list[tuple[str, np.ndarray]], features: FeatureRows | None, i: int,
    out: Path, overwrite: bool, record: Callable[..., None], pending: list,
) -> None:  # fmt: skip
    """One input file's maps: skipped (outputs there, unless ``overwrite``), failed (features), or
    appended to ``pending`` as ``(input, output name, map, features or None)``. ``base`` replaces
    the file's ``stem`` in its maps' names (:func:`output_names`)."""
    for k, (name, a) in enumerate(maps):
        name = base + name[len(stem) :]
        outputs = (out / f"{name}_mask.npy", out / f"{name}_mask.png")
        if not overwrite and all(p.is_file() for p in outputs):
            record(input=src, name=name, status="skipped", error=None, outputs=[str(p) for p in outputs])
            continue
        try:
            f = None if features is None else features(i, stem, k, len(maps))
        except ValueError as e:
            record(input=src, name=name, status="failed", error=str(e))
            continue
        pending.append((src, name, a, f))


def flush(pending, batch_size: int, out: Path, device, config, seed: int, record, *, final: bool):
    """Refine the pending maps in batches of one shape (full batches only unless ``final``); returns
    what is left."""
    by_shape: dict[tuple, list] = {}
    for item in pending:
        by_shape.setdefault((item[2].shape, item[3] is None or item[3].shape), []).append(item)
    left = []
    for group in by_shape.values():
        while len(group) >= batch_size or (final and group):
            batch, group = group[:batch_size], group[batch_size:]
            for (src, name, _, _), result, seconds, error in _refine_batch(batch, device, config, seed):
                if error is not None:
                    record(input=src, name=name, status="failed", error=error)
                    continue
                mask, label, candidate = result
                try:
                    outputs = write_mask(out, name, mask)
                except OSError as e:
                    record(input=src, name=name, status="failed", error=f"cannot write its mask ({e})")
                    continue
                record(
                    input=src, name=name, status="done", error=None, outputs=[str(p) for p in outputs],
                    mask_pixels=int(mask.sum()), label_pixels=int(label.sum()), seconds=seconds, device=str(device),
                    candidate=None if candidate is None else {
                        "filtration": candidate.filtration, "dim": candidate.dim, "low": candidate.low,
                        "high": candidate.high,
                    },
                )  # fmt: skip
        left += group
    return left


def _refine_batch(batch, device, config, seed: int) -> Iterator[tuple]:
    """``(item, (mask, label, candidate), seconds per map, error)`` per map; a refused batch (a
    ``ValueError``) is refined map by map, so that one bad map costs only itself."""
    x = torch.from_numpy(np.stack([b[2] for b in batch])).to(device)
    f = None if batch[0][3] is None else torch.from_numpy(np.stack([b[3] for b in batch])).to(device)
    t0 = time.perf_counter()
    try:
        r = refine(x, f, config=config, seed=seed)
    except ValueError as e:
        if len(batch) == 1:
            yield batch[0], None, 0.0, str(e)
            return
        for item in batch:
            yield from _refine_batch([item], device, config, seed)
        return
    seconds = (time.perf_counter() - t0) / len(batch)
    masks, labels = r.mask.cpu().numpy(), r.pseudo_label.cpu().numpy()
    for k, item in enumerate(batch):
        yield item, (masks[k], labels[k], r.candidates[k]), seconds, None
