"""refine_files (issue 17): folders of maps into mask files, streamed, resumable, sharded. The same
masks as refine whatever the batch size, reader workers or shard; nothing missing or duplicated; a
second run writes nothing; a killed run resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from topoot_gpu import refine, refine_files
from topoot_gpu.testing import ARCHIVE_MAPS as N_MAPS
from topoot_gpu.testing import blob_maps, check_archive_outputs, manifest_entries, written_masks


@pytest.mark.parametrize("batch_size,workers", [(1, 0), (7, 3), (16, 1)])
def test_the_same_masks_as_refine_whatever_the_batching_and_readers(archive, tmp_path, batch_size, workers):
    folder, expected = archive
    out = tmp_path / f"out_{batch_size}_{workers}"
    summary = refine_files(folder, out, batch_size=batch_size, num_workers=workers, seed=5)
    assert (summary.done, summary.skipped, summary.failed) == (N_MAPS, 0, 1)
    entries = check_archive_outputs(out, expected, done=N_MAPS)
    assert sorted(e["name"] for e in entries if e["status"] == "done") == sorted(expected)
    written = written_masks(out)
    done = next(e for e in entries if e["status"] == "done")
    assert done["mask_pixels"] == int(written[done["name"]].sum()) and done["seconds"] >= 0


def test_a_second_run_writes_nothing_and_overwrite_rewrites(archive, tmp_path):
    folder, expected = archive
    out = tmp_path / "out"
    refine_files(folder, out, seed=5)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*_mask.*")}
    again = refine_files(folder, out, seed=5)
    assert (again.done, again.skipped, again.failed) == (0, N_MAPS, 1)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*_mask.*")} == stamps
    forced = refine_files([folder / "m00.npy", folder / "s1.npy"], out, seed=5, overwrite=True)
    assert (forced.done, forced.skipped) == (2, 0)


KILLED = """
import sys
from topoot_gpu import refine_files
refine_files(sys.argv[1], sys.argv[2], seed=5, batch_size=1)
"""


def test_a_killed_run_resumes_to_the_same_result(archive, tmp_path):
    folder, expected = archive
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", KILLED, str(folder), str(out)], cwd=tmp_path)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("*_mask.png"))) < 5:
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    partial = len(list(out.glob("*_mask.npy")))
    assert 0 < partial < N_MAPS, "the run was not killed mid-way"
    summary = refine_files(folder, out, seed=5)
    assert summary.skipped >= partial - 1 and summary.done + summary.skipped == N_MAPS
    written = written_masks(out)
    assert set(written) == set(expected)
    assert all(np.array_equal(written[k], v) for k, v in expected.items())
    assert not list(out.glob(".*.tmp"))


def test_torchrun_two_ranks_share_the_files_and_merge_themanifest_entries(archive, tmp_path):
    folder, expected = archive
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A session of its own: on a timeout the ranks go too, not only the launcher.
    child = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "topoot_gpu", "refine", str(folder), "--out", str(out), "--seed", "5", "--distributed", "--quiet",
         "--batch-size", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = child.communicate(timeout=600)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    run = subprocess.CompletedProcess(child.args, child.returncode, stdout, stderr)
    assert run.returncode in (0, 1), run.stderr[-3000:]  # 1: the corrupt file failed, as it should
    written = written_masks(out)
    assert set(written) == set(expected)
    assert all(np.array_equal(written[k], v) for k, v in expected.items())
    entries = manifest_entries(out)
    assert len(entries) == N_MAPS + 1 and len({e["input"] + str(e["name"]) for e in entries}) == N_MAPS + 1
    assert not list(out.glob("manifest.rank*"))


def test_inputs_globs_lists_and_errors(archive, tmp_path):
    folder, expected = archive
    listing = folder / "some.txt"
    listing.write_text("m00.npy\nm01.npy\n\nm00.npy\n")
    out = tmp_path / "out"
    s = refine_files([str(folder / "s*.npy"), listing], out, seed=5)
    assert s.done == 6 and set(written_masks(out)) == {"s0", "s1", "s2", "s3", "m00", "m01"}
    binary = tmp_path / "binary.txt"  # a .txt that is no list of paths: one unreadable input, no raise
    binary.write_bytes(b"\xff\xfe\x00garbage")
    s = refine_files(binary, tmp_path / "out_binary")
    assert (s.done, s.failed) == (0, 1) and "binary.txt" in s.failures[0]
    for kwargs, name in (
        ({"batch_size": 0}, "batch_size"),
        ({"num_workers": -1}, "num_workers"),
        ({"seed": "1"}, "seed"),
        ({"device": "nonsense"}, "device"),
        ({"features": folder / "missing.npy"}, "features"),
    ):
        with pytest.raises(ValueError, match=f"^{name}:"):
            refine_files(folder, out, **kwargs)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="^out_dir:"):
        refine_files(folder, tmp_path / "file" / "sub")


def test_features_one_per_map_in_order(tmp_path, rng):
    maps = blob_maps(rng, 3, 16, 16)
    np.save(tmp_path / "a.npy", maps[:2])
    np.save(tmp_path / "b.npy", maps[2])
    features = rng.normal(size=(3, 4, 5, 5)).astype(np.float32)
    np.save(tmp_path / "f.npy", features)
    s = refine_files([tmp_path / "a.npy", tmp_path / "b.npy"], tmp_path / "out", features=tmp_path / "f.npy", seed=2)
    assert s.done == 3
    want = refine(maps, torch.from_numpy(features), seed=2).mask
    for k, name in enumerate(["a_0", "a_1", "b"]):
        assert np.array_equal(np.load(tmp_path / "out" / f"{name}_mask.npy"), want[k])


def test_features_per_input_from_a_folder(tmp_path, rng):
    """Sharded archives keep one features file per input: ``[C, h, w]`` or ``[N, C, h, w]``; a
    missing or mismatched one fails that input's maps only."""
    maps = blob_maps(rng, 5, 16, 16)
    inputs = tmp_path / "maps"
    inputs.mkdir()
    np.save(inputs / "a.npy", maps[:2])
    np.save(inputs / "b.npy", maps[2])
    np.save(inputs / "c.npy", maps[3])
    np.save(inputs / "d.npy", maps[4])
    features = rng.normal(size=(5, 4, 5, 5)).astype(np.float32)
    folder = tmp_path / "features"
    folder.mkdir()
    np.save(folder / "a.npy", features[:2])
    np.savez(folder / "b.npz", features[2])  # [C, h, w] for an input of one map
    np.save(folder / "d.npy", features[3:5])  # two rows for an input of one map
    s = refine_files(inputs, tmp_path / "out", features=folder, seed=2)
    assert (s.done, s.failed) == (3, 2)
    assert any("c.npy" in f and "no c.npy or c.npz" in f for f in s.failures)
    assert any("d.npy" in f and "holds 2 images, the input holds 1 maps" in f for f in s.failures)
    want = refine(maps[:3], torch.from_numpy(features[:3]), seed=2).mask
    for k, name in enumerate(["a_0", "a_1", "b"]):
        assert np.array_equal(np.load(tmp_path / "out" / f"{name}_mask.npy"), want[k])
