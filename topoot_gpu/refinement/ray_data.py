"""Refine an archive of map files across a Ray cluster with Ray Data (the extra ``topoot_gpu[ray]``).

The whole job, what ``topoot refine --ray auto`` runs::

    from topoot_gpu.ray import refine_ray
    summary = refine_ray("/shared/maps", "/shared/masks", address="auto")

or :class:`Refiner` as a stage of a pipeline of your own::

    import ray
    from topoot_gpu.ray import Refiner

    ds = ray.data.read_binary_files(paths, include_paths=True)
    entries = ds.map_batches(
        Refiner, fn_constructor_kwargs={"out_dir": "/shared/masks"}, batch_size=16,
        compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1, num_cpus=0.5,
    )
    for row in entries.iter_rows(): ...   # one JSON manifest line per map: row["entry"]

Each actor writes its masks itself, ``<name>_mask.npy`` and ``.png`` atomically in ``out_dir``
under the input's name, exactly as :func:`topoot_gpu.refine_files` (Ray's own writers name files
after blocks, not inputs); the dataset's rows are the manifest, which :func:`refine_ray` writes
on the driver. Inputs and ``out_dir`` must be on a filesystem that every node sees (a shared or
network folder). Masks are those of :func:`topoot_gpu.refine` on the same maps and seed, whatever
the batch size, actor count or the cluster (a head's mask does not depend on its batch), and a
second run writes nothing (outputs there are skipped unless ``overwrite``).

Why it is built this way (each one a way the obvious version fails):

* ``read_binary_files(include_paths=True)``, decoded in the actor: ``read_numpy`` splits arrays
  along their first axis into rows and loses the file names the outputs need.
* ``compute=ActorPoolStrategy(size=...)``: one model per actor, kept between batches (the
  ``concurrency`` argument for this is deprecated).
* ``batch_size`` always set: Ray refuses ``num_gpus`` on actors without one.
* fractional ``num_cpus`` (0.5) per actor: with whole CPUs the actors take every CPU of a small
  node, the read tasks never get one and the pipeline hangs.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.backends import require
from ..core.validation import check_config, check_int, check_number, check_seed
from .config import RefineConfig
from .files import (
    MANIFEST,
    FilesSummary,
    ManifestWriter,
    check_device,
    flush,
    folder_feature_rows,
    input_files,
    load_maps,
    output_folder,
    output_names,
    queue_maps,
)


def _features_folder(features: Any) -> Path | None:
    """The per-input features folder, absolute (actors may start elsewhere), or None."""
    if features is None:
        return None
    path = Path(features)
    if not path.is_dir():
        raise ValueError(
            f"features: {features} is not a folder: with Ray, features come as one file per input "
            "(<input stem>.npy, [C, h, w] or [N, C, h, w]), read by the actor with its input"
        )
    return path.resolve()


def _device(device: str) -> torch.device:
    """``"auto"``: the GPU Ray gave this actor (``CUDA_VISIBLE_DEVICES``), or the CPU without one."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return check_device(device)


class Refiner:
    """A Ray Data callable class: a batch of input files in, their masks written to ``out_dir``, one
    manifest entry per map out.

    Args:
        out_dir: the output folder (created), on a filesystem every node sees.
        names: output base name per input path (as the batch's ``path`` column gives it), for
            inputs whose stems clash (:func:`topoot_gpu.refinement.files.output_names`); others are
            named after their stem.
        features: a folder of per-input features ``<input stem>.npy``/``.npz`` (``[C, h, w]``, or
            ``[N, C, h, w]`` for an input of ``N`` maps), or None for the maps' own features.
        config, seed: as :func:`topoot_gpu.refine`.
        device: ``"auto"`` (the actor's GPU if Ray gave it one, else the CPU) or a torch device.
        overwrite: refine maps whose outputs exist (default: skip them).
        batch_size: maps refined together (maps of one shape).

    ``__call__(batch)`` takes the columns ``path`` and ``bytes`` of
    ``ray.data.read_binary_files(..., include_paths=True)`` and returns ``{"entry": [JSON line per
    map or unreadable file]}``: the manifest entries of :func:`topoot_gpu.refine_files`. A bad file
    is an entry with ``status: failed``; it never raises.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        names: dict[str, str] | None = None,
        features: str | os.PathLike | None = None,
        config: RefineConfig | None = None,
        device: str = "auto",
        seed: int = 0,
        overwrite: bool = False,
        batch_size: int = 16,
    ) -> None:
        self.config = check_config(config, RefineConfig)
        self.seed = check_seed(seed)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.overwrite = bool(overwrite)
        self.names = dict(names or {})
        folder = _features_folder(features)
        self.features = None if folder is None else folder_feature_rows(folder)
        self.device = _device(device)
        self.out = output_folder(out_dir, clear_stale=False)  # other actors may be writing now

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        entries: list[str] = []

        def record(**entry: Any) -> None:
            entries.append(json.dumps(entry))

        pending: list = []
        for path, data in zip(batch["path"], batch["bytes"]):
            src = str(path)
            p = Path(src)
            try:
                maps = load_maps(p, bytes(data))
            except Exception as e:  # unreadable: recorded, never raised
                record(input=src, name=None, status="failed", error=f"{type(e).__name__}: {e}")
                continue
            queue_maps(src, p.stem, self.names.get(src, p.stem), maps, self.features, -1, self.out,
                       self.overwrite, record, pending)  # fmt: skip
        flush(pending, self.batch_size, self.out, self.device, self.config, self.seed, record, final=True)
        return {"entry": np.array(entries, dtype=object)}


def refine_ray(
    inputs: Any,
    out_dir: str | os.PathLike,
    *,
    address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float = 0.5,
    features: str | os.PathLike | None = None,
    config: RefineConfig | None = None,
    batch_size: int = 16,
    device: str = "auto",
    seed: int = 0,
    overwrite: bool = False,
    progress: Callable[[int, int, int, float], None] | None = None,
) -> FilesSummary:
    """Refine every map of ``inputs`` into mask files in ``out_dir`` on a Ray cluster (module doc),
    with the outputs and manifest of :func:`topoot_gpu.refine_files`.

    Args:
        inputs: a file, folder, glob pattern or ``.txt`` list of paths, or a sequence of those.
        out_dir: the output folder (created), on a filesystem every node sees.
        address: the cluster, as ``ray.init(address=...)`` takes it (``"auto"``: the one this node
            belongs to; ``"local"`` or None: start one here). Ignored if this process is connected
            to Ray already; a cluster this call started is shut down when it returns.
        actors: refining actors (default: one per GPU of the cluster, or 1 without GPUs).
        gpus_per_actor: GPUs each actor asks for (default 1 if the cluster has GPUs, else 0).
        cpus_per_actor: CPUs each actor asks for (default 0.5, so that read tasks are scheduled).
        features: a folder of per-input features (:class:`Refiner`), or None.
        config, seed: as :func:`topoot_gpu.refine`.
        batch_size: input files per actor call, and maps refined together.
        device: the actors' device (:class:`Refiner`).
        overwrite: refine maps whose outputs exist (default: skip them, i.e. resume).
        progress: called as ``progress(maps, files_read, files_total, seconds)``.

    Returns:
        A :class:`topoot_gpu.FilesSummary`.

    Raises:
        ValueError: bad arguments (never for a bad input file).
        ImportError: Ray Data is not installed (``pip install 'topoot_gpu[ray]'``).
    """
    ray = require("ray", "ray", "'ray[data]'")
    require("ray.data", "ray", "'ray[data]'")
    config = check_config(config, RefineConfig)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_seed(seed)
    cpus_per_actor = check_number("cpus_per_actor", cpus_per_actor, minimum=0)
    if actors is not None:
        actors = check_int("actors", actors, minimum=1)
    if gpus_per_actor is not None:
        gpus_per_actor = check_number("gpus_per_actor", gpus_per_actor, minimum=0)
    if device != "auto":
        check_device(device)  # the driver's check; the actors resolve "auto" on their own nodes
    folder = _features_folder(features)
    features = None if folder is None else str(folder)
    out = output_folder(Path(out_dir).resolve(), clear_stale=True)
    files = input_files(inputs)
    names = output_names(files)
    start = time.perf_counter()
    with ManifestWriter(out / MANIFEST) as manifest:
        readable, read = {}, 0
        for i, p in enumerate(files):
            if p.is_file() and os.access(p, os.R_OK):
                readable[str(p.resolve())] = names[i]
            else:  # Ray's read would fail the whole dataset: recorded here instead
                manifest.record(input=str(p), name=None, status="failed", error="not a readable file")
                read += 1
        if readable:
            started = not ray.is_initialized()
            if started:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            try:
                _run(ray, readable, out, manifest, read, len(files), start, progress, actors=actors,
                            gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor, features=features,
                            config=config, batch_size=batch_size, device=device, seed=seed,
                            overwrite=overwrite)  # fmt: skip
            finally:
                if started:
                    ray.shutdown()
    if progress is not None:
        progress(manifest.entries, len(files), len(files), time.perf_counter() - start)
    return manifest.summary(out / MANIFEST)


def _run(ray, readable, out, manifest, read, total, start, progress, *, actors, gpus_per_actor, cpus_per_actor,
         **refiner) -> None:  # fmt: skip
    """The dataset: read, refine on the actors, entries into the manifest as they come."""
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus_per_actor is None:
        gpus_per_actor = 1.0 if gpus >= 1 else 0.0
    if actors is None:
        actors = max(1, int(gpus // gpus_per_actor)) if gpus_per_actor else 1
    refine_kwargs = {"out_dir": str(out), "names": readable, **refiner}
    ds = ray.data.read_binary_files(list(readable), include_paths=True)
    ds = ds.map_batches(
        Refiner, fn_constructor_kwargs=refine_kwargs, batch_size=refiner["batch_size"],
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None,
    )  # fmt: skip
    seen: set[str] = set()
    for row in ds.iter_rows():
        entry = json.loads(row["entry"])
        manifest.record(**entry)
        if entry["input"] not in seen:
            seen.add(entry["input"])
            if progress is not None:
                progress(manifest.entries, read + len(seen), total, time.perf_counter() - start)
