"""Ray Data (issue 17): ``topoot_gpu.ray.Refiner`` in ``map_batches`` and ``refine_ray`` give the
masks ``refine`` gives, with the outputs and manifest of ``refine_files``, on a local Ray started
once for the session with a GPU declared (so the actors take the GPU scheduling path and fall back
to the CPU here)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

from topoot_gpu import refine
from topoot_gpu.cli import main
from topoot_gpu.ray import Refiner, refine_ray
from topoot_gpu.refinement.files import input_files, output_names
from topoot_gpu.testing import ARCHIVE_MAPS, blob_maps, check_archive_outputs, written_masks


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    import ray

    # Ray's workers put the driver's working directory first on their path: started from a source
    # checkout they would import its topoot_gpu (no compiled core) instead of the installed one.
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray"))
    try:
        ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
                 object_store_memory=200 * 2**20)  # fmt: skip
    finally:
        os.chdir(here)
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("batch_size,actors", [(1, None), (7, 2)])
def test_refine_ray_gives_refines_masks_and_resumes(ray_session, archive, tmp_path, batch_size, actors):
    folder, expected = archive
    out = tmp_path / "out"
    gpus = None if actors is None else 0  # None: the declared GPU, one actor on it
    s = refine_ray(folder, out, batch_size=batch_size, actors=actors, gpus_per_actor=gpus, seed=5)
    assert (s.done, s.skipped, s.failed) == (ARCHIVE_MAPS, 0, 1)
    entries = check_archive_outputs(out, expected, done=ARCHIVE_MAPS)
    done = next(e for e in entries if e["status"] == "done")
    assert done["mask_pixels"] == int(written_masks(out)[done["name"]].sum())
    assert done["device"] == "cpu"  # "auto" without CUDA, on the actor given the declared GPU
    # A second run writes nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*_mask.*")}
    again = refine_ray(folder, out, batch_size=batch_size, actors=actors, gpus_per_actor=gpus, seed=5)
    assert (again.done, again.skipped, again.failed) == (0, ARCHIVE_MAPS, 1)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*_mask.*")} == stamps
    # An interrupted run: some outputs missing (one .png only), a half-written temporary left.
    for name in ("m03", "pair_1", "z_a"):
        (out / f"{name}_mask.npy").unlink()
    (out / "s2_mask.png").unlink()
    (out / ".m04_mask.npy.abc.tmp").write_bytes(b"half")
    resumed = refine_ray(folder, out, batch_size=batch_size, actors=actors, gpus_per_actor=gpus, seed=5)
    assert (resumed.done, resumed.skipped, resumed.failed) == (4, ARCHIVE_MAPS - 4, 1)
    check_archive_outputs(out, expected, done=4, skipped=ARCHIVE_MAPS - 4)


def test_refiner_as_a_stage_of_a_users_pipeline(ray_session, tmp_path, rng):
    """The documented map_batches call, with per-input features and clashing stems named apart."""
    import ray.data

    maps = blob_maps(rng, 5, 16, 17)
    features = rng.normal(size=(5, 3, 4, 4)).astype(np.float32)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "f").mkdir()
    np.save(tmp_path / "a" / "x.npy", maps[:2])
    np.save(tmp_path / "f" / "x.npy", features[:2])
    np.save(tmp_path / "a" / "y.npy", maps[2])
    np.save(tmp_path / "f" / "y.npy", features[2])
    np.save(tmp_path / "b" / "y.npy", maps[3])  # output y_2; features by input stem: f/y.npy too
    np.save(tmp_path / "b" / "z.npy", maps[4])  # no features file: fails alone
    files = input_files([tmp_path / "a", tmp_path / "b"])
    names = {str(p.resolve()): n for p, n in zip(files, output_names(files).values())}
    ds = ray.data.read_binary_files(sorted(names), include_paths=True)
    rows = ds.map_batches(
        Refiner, fn_constructor_kwargs={"out_dir": str(tmp_path / "out"), "names": names,
                                        "features": str(tmp_path / "f"), "seed": 3},
        batch_size=2, compute=ray.data.ActorPoolStrategy(size=1), num_gpus=1, num_cpus=0.5,
    ).take_all()  # fmt: skip
    import json

    entries = sorted((json.loads(r["entry"]) for r in rows), key=lambda e: e["input"] + str(e["name"]))
    assert [(e["name"], e["status"]) for e in entries] == [
        ("x_0", "done"), ("x_1", "done"), ("y", "done"), ("y_2", "done"), ("z", "failed")]  # fmt: skip
    assert "no z.npy or z.npz" in entries[4]["error"]
    want = refine(maps[:4], torch.from_numpy(features[[0, 1, 2, 2]]), seed=3).mask
    written = written_masks(tmp_path / "out")
    assert set(written) == {"x_0", "x_1", "y", "y_2"}
    for k, name in enumerate(["x_0", "x_1", "y", "y_2"]):
        assert np.array_equal(written[name], want[k])


def test_topoot_refine_ray_on_the_connected_cluster(ray_session, archive, tmp_path, capsys):
    folder, expected = archive
    out = tmp_path / "out"
    status = main(["refine", str(folder), "--out", str(out), "--seed", "5", "--ray", "auto", "--batch-size", "4",
                   "--quiet"])  # fmt: skip
    assert status == 1  # the corrupt file failed, as it should
    check_archive_outputs(out, expected, done=ARCHIVE_MAPS)
    err = capsys.readouterr().err
    assert "corrupt.npy" in err


def test_bad_arguments_and_a_missing_ray(tmp_path, monkeypatch):
    for kwargs, name in (
        ({"batch_size": 0}, "batch_size"),
        ({"actors": 0}, "actors"),
        ({"cpus_per_actor": -1}, "cpus_per_actor"),
        ({"gpus_per_actor": float("nan")}, "gpus_per_actor"),
        ({"seed": -1}, "seed"),
        ({"device": "nonsense"}, "device"),
        ({"features": tmp_path / "features.npy"}, "features"),
    ):
        with pytest.raises(ValueError, match=f"^{name}:"):
            refine_ray(tmp_path, tmp_path / "out", **kwargs)
    with pytest.raises(ValueError, match="^features:"):
        Refiner(tmp_path / "out", features=tmp_path / "features.npy")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="^out_dir:"):
        refine_ray(tmp_path, tmp_path / "file" / "sub")
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"topoot_gpu\[ray\]"):
        refine_ray(tmp_path, tmp_path / "out")


def test_unreadable_paths_are_recorded_without_starting_ray(tmp_path):
    """Missing inputs never reach Ray (its read would fail the whole dataset)."""
    out = tmp_path / "out"
    s = refine_ray([tmp_path / "missing.npy", tmp_path / "gone" / "*.npy"], out)
    assert (s.done, s.failed) == (0, 1) and "missing.npy" in s.failures[0]
    assert os.path.isfile(out / "manifest.jsonl")
