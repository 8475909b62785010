"""The CUDA persistence backend (CuPy + NVRTC) against the CPU core, on a GPU only (skipped visibly
without one): identical pairs and pixels on the persistence tests' kinds of input and on large
mixed batches, poisoned outputs (checked inside the backend), repeated runs identical."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from topoot_gpu import cubical_persistence
from topoot_gpu.testing import blob_maps, persistence_cases, persistence_map_kinds, persistence_shapes, smooth_maps
from topoot_gpu.testing import diagram_rows as _rows
from topoot_gpu.testing import persistence_batches as batches

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
CASES = persistence_cases


@pytest.mark.parametrize("construction,filtration", CASES)
def test_cuda_pairs_and_pixels_equal_the_cpu_core(rng, construction, filtration):
    pytest.importorskip("cupy")
    kw = dict(filtration=filtration, construction=construction)
    for maps in batches(rng):
        for dtype in (torch.float64, torch.float32):
            t = torch.from_numpy(maps).to(dtype)
            assert _rows(cubical_persistence(t.cuda(), backend="cuda", **kw)) == _rows(cubical_persistence(t, **kw))


@pytest.mark.parametrize("construction,filtration", CASES)
def test_cuda_on_the_persistence_test_maps(rng, construction, filtration):
    pytest.importorskip("cupy")
    kw = dict(filtration=filtration, construction=construction)
    for kind, make in sorted(persistence_map_kinds.items()):
        for h, w in persistence_shapes:
            t = torch.from_numpy(make(rng, 3, h, w))
            for dtype in (torch.float64, torch.float32):
                gpu = cubical_persistence(t.to(dtype).cuda(), backend="cuda", **kw)
                assert _rows(gpu) == _rows(cubical_persistence(t.to(dtype), **kw)), f"{kind} {h}x{w} {dtype}"


@pytest.mark.parametrize("size", [224, 512])
def test_cuda_large_mixed_batches_and_repeats(rng, size):
    pytest.importorskip("cupy")
    maps = np.concatenate(
        [smooth_maps(rng, 3, size, size, sigma=4.0), blob_maps(rng, 3, size, size), rng.random((3, size, size))]
    )
    t = torch.from_numpy(maps).float()
    for filtration in ("sublevel", "superlevel"):
        cpu = _rows(cubical_persistence(t, filtration=filtration))
        first = _rows(cubical_persistence(t.cuda(), filtration=filtration, backend="cuda"))
        again = _rows(cubical_persistence(t.cuda(), filtration=filtration, backend="cuda"))
        assert first == cpu and again == first


def test_cuda_largest_supported_map(rng):
    pytest.importorskip("cupy")
    t = torch.from_numpy(rng.random((1, 2048, 2048))).float()
    assert _rows(cubical_persistence(t.cuda(), backend="cuda")) == _rows(cubical_persistence(t))


def test_triton_on_the_gpu_equals_the_cpu_core(rng):
    pytest.importorskip("triton")
    t = torch.from_numpy(np.concatenate([rng.random((4, 224, 224)), smooth_maps(rng, 4, 224, 224)])).float()
    for construction in ("T", "V"):
        gpu = cubical_persistence(t.cuda(), construction=construction, backend="triton")
        assert _rows(gpu) == _rows(cubical_persistence(t, construction=construction))


def test_cuda_batches_in_chunks(rng, monkeypatch):
    pytest.importorskip("cupy")
    from topoot_gpu.persistence import _basins

    t = torch.from_numpy(np.concatenate([smooth_maps(rng, 4, 224, 224, sigma=4.0), rng.random((4, 224, 224))])).float()
    whole = _rows(cubical_persistence(t.cuda(), backend="cuda"))
    monkeypatch.setattr(_basins, "CHUNK_PIXELS", 3 * 224 * 224)
    assert _rows(cubical_persistence(t.cuda(), backend="cuda")) == whole == _rows(cubical_persistence(t))


def test_cuda_on_a_non_default_stream(rng):
    # The kernels go to torch's current stream: work queued there before them (the maps' copy)
    # must be seen, and their results before the host reads them.
    pytest.importorskip("cupy")
    host = torch.from_numpy(np.concatenate([rng.random((4, 96, 80)), smooth_maps(rng, 4, 96, 80)])).float()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        maps = host.cuda(non_blocking=True)
        gpu = cubical_persistence(maps * 1.0, backend="cuda")
    assert _rows(gpu) == _rows(cubical_persistence(host))
