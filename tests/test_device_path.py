"""The device path of the selection and of ``refine``: the GPU backends chained (persistence and
transport on the maps' device, nothing on the host but the documented reads), run here on CPU
tensors (the CUDA source through the host emulation, Triton under its interpreter, the torch
backend as is) against the reference; the host synchronisations counted, module by module."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from test_selection import check_parity, small_suite

import topoot_gpu
from topoot_gpu import pseudo_labels, refine
from topoot_gpu.persistence import _basins
from topoot_gpu.refinement import reference
from topoot_gpu.selection import api as selection_api
from topoot_gpu.selection.config import SelectionConfig
from topoot_gpu.testing import blob_maps, count_host_syncs, ring_maps
from topoot_gpu.transport import api as transport_api

PATHS = [("cuda", "torch"), ("cuda", "triton"), ("triton", "torch"), ("triton", "triton")]


@pytest.mark.parametrize("persistence,transport", PATHS)
def test_device_path_labels_equal_the_reference(rng, use_backend, persistence, transport):
    pytest.importorskip("gudhi")
    pytest.importorskip("ot")
    maps = small_suite(rng)[::2]
    near_ties, differ = check_parity(
        maps, SelectionConfig(), persistence_backend=use_backend(persistence), transport_backend=use_backend(transport)
    )
    print(f"\n{len(maps)} maps through {persistence} + {transport}: {near_ties} near-ties, {differ} with another label")


@pytest.mark.parametrize("persistence,transport", [("cuda", "torch"), ("triton", "triton")])
def test_device_path_refine_equals_the_reference_pipeline(rng, use_backend, persistence, transport):
    pytest.importorskip("gudhi")
    pytest.importorskip("ot")
    maps = np.concatenate([blob_maps(rng, 2, 17, 20), ring_maps(rng, 1, 17, 20)])
    features = rng.normal(size=(len(maps), 5, 6, 7)).astype(np.float32)
    seed = int(rng.integers(0, 2**40))
    fast = refine(
        torch.from_numpy(maps), torch.from_numpy(features), seed=seed, persistence_backend=use_backend(persistence),
        transport_backend=use_backend(transport), head_backend="torch",
    )  # fmt: skip
    ref = reference.refine(maps, features, seed=seed)
    assert np.array_equal(fast.pseudo_label.numpy(), ref.pseudo_label)
    for b in range(len(maps)):
        assert (fast.mask[b].numpy() == ref.mask[b]).mean() >= 0.99


def _syncs(maps, config, persistence, transport) -> Counter:
    with count_host_syncs() as events:
        pseudo_labels(torch.from_numpy(maps), config=config, persistence_backend=persistence,
                      transport_backend=transport)  # fmt: skip
    return Counter(module.removeprefix("topoot_gpu.") for _, module in events)


@pytest.mark.parametrize(
    "config",
    [
        SelectionConfig(),
        SelectionConfig(levels=(10, 1000), top_k=2),
        SelectionConfig(level_mode="threshold", levels=(0.3, 0.6)),
    ],
    ids=["default", "three-levels-topk", "threshold"],
)
@pytest.mark.parametrize("transport", ["torch", "triton"])
def test_host_syncs_of_the_device_path_are_the_documented_ones(rng, use_backend, monkeypatch, config, transport):
    monkeypatch.setattr(_basins, "CHECK_KERNELS", False)  # the tests' unwritten-entry checks read the device
    maps = np.concatenate([blob_maps(rng, 2, 16, 19), ring_maps(rng, 1, 16, 19)])
    calls = Counter()
    solve = transport_api.best_stability
    monkeypatch.setattr(selection_api, "best_stability", lambda *a, **k: calls.update(["t"]) or solve(*a, **k))
    syncs = _syncs(maps, config, use_backend("cuda"), use_backend(transport))
    filtrations = sum(1 for d in (config.sub_dims, config.sup_dims) if d)
    assert syncs.pop("selection.api") == selection_api.host_reads(config)
    assert syncs.pop("persistence._basins") == _basins.HOST_READS_PER_PASS * filtrations  # one pass each here
    assert syncs.pop("transport.api") == transport_api.HOST_READS * calls["t"]
    assert syncs.pop("core.validation") == 1  # the maps' finiteness, once
    # The transport backend's own reads (documented in each: sizes of the padded tiles, and for
    # "torch" its stop flags at each convergence check); nothing else waits anywhere.
    assert set(syncs) <= {"transport._torch", "transport.padded", "transport._triton"}, syncs
    if transport == "triton":
        assert syncs == Counter({"transport._triton": calls["t"]})  # one read per call: the tile


def test_host_syncs_counter_sees_what_it_must(rng):
    x = torch.arange(6)
    with count_host_syncs() as events:
        bool((x > 2).any())
        torch.nonzero(x)
        torch.repeat_interleave(x, x)
        torch.repeat_interleave(x, x, output_size=15)  # told its size: no wait
        x[x > 2]
        topoot_gpu.core.host.to_host(x)
    assert [e[0] for e in events] == ["_local_scalar_dense", "nonzero", "repeat_interleave", "index", "_to_copy"]


DEVICE_PATH_SOURCES = ["selection/api.py", "persistence/_basins.py", "transport/_triton.py"]


@pytest.mark.parametrize("path", DEVICE_PATH_SOURCES)
def test_device_path_sources_read_the_host_only_through_to_host(path):
    # .numpy() and .tolist() on CPU tensors are invisible to the counter: none in these files.
    source = (Path(topoot_gpu.__file__).parent / path).read_text()
    assert not re.findall(r"\.(numpy|tolist|item|cpu)\(\)", source)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("persistence,transport", PATHS)
def test_cuda_device_path_gives_the_cpp_core_result(rng, persistence, transport):
    if "triton" in (persistence, transport):
        pytest.importorskip("triton")
    if persistence == "cuda":
        pytest.importorskip("cupy")
    maps = np.concatenate([blob_maps(rng, 6, 40, 48), ring_maps(rng, 2, 40, 48)])
    got = pseudo_labels(torch.from_numpy(maps).cuda(), persistence_backend=persistence, transport_backend=transport)
    want = pseudo_labels(maps)
    assert got.labels.is_cuda
    assert np.array_equal(got.labels.cpu().numpy(), want.labels)
    assert [c and (c.filtration, c.birth_pixel, c.death_pixel) for c in got.candidates] == [
        c and (c.filtration, c.birth_pixel, c.death_pixel) for c in want.candidates
    ]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("persistence,transport", [("cuda", "triton"), ("triton", "torch")])
def test_cuda_device_path_refine_gives_the_cpu_result(rng, persistence, transport):
    if "triton" in (persistence, transport):
        pytest.importorskip("triton")
    if persistence == "cuda":
        pytest.importorskip("cupy")
    maps = torch.from_numpy(np.concatenate([blob_maps(rng, 3, 40, 44), ring_maps(rng, 1, 40, 44)]))
    features = torch.from_numpy(rng.normal(size=(4, 16, 10, 11))).float()
    cpu = refine(maps, features, seed=3)
    gpu = refine(maps.cuda(), features.cuda(), seed=3, persistence_backend=persistence, transport_backend=transport)
    assert gpu.mask.is_cuda and torch.equal(gpu.pseudo_label.cpu(), cpu.pseudo_label)
    assert (gpu.mask.cpu() == cpu.mask).float().mean() >= 0.99
