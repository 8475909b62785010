"""refine and torch.ops.topoot.refine: end to end against the reference pipeline, the op's schema
and fake kernel (opcheck), inference_mode / no_grad, torch.compile, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import topoot_gpu
from topoot_gpu import HeadConfig, RefineConfig, SelectionConfig, refine
from topoot_gpu.refinement import reference
from topoot_gpu.testing import blob_maps, ring_maps

AGREEMENT = 0.999


def _maps(rng, b=3, h=28, w=32) -> np.ndarray:
    return np.concatenate([blob_maps(rng, b - 1, h, w, max_blobs=2), ring_maps(rng, 1, h, w)])


def test_refine_matches_the_reference_pipeline(rng):
    pytest.importorskip("gudhi")
    pytest.importorskip("ot")
    maps = _maps(rng)
    features = rng.normal(size=(len(maps), 8, 7, 8)).astype(np.float32)
    seed = int(rng.integers(0, 2**40))
    fast = refine(maps, features, seed=seed)
    ref = reference.refine(maps, features, seed=seed)
    assert np.array_equal(fast.pseudo_label, ref.pseudo_label)
    for b in range(len(maps)):
        assert (fast.mask[b] == ref.mask[b]).mean() >= AGREEMENT
    assert set(fast.seconds) == {"selection", "features", "head"}


@pytest.mark.parametrize(
    "argument,name",
    [
        ("persistence_backend", "reference"),
        ("persistence_backend", "triton"),
        ("persistence_backend", "cuda"),
        ("transport_backend", "torch"),
        ("transport_backend", "triton"),
        ("transport_backend", "reference"),
        ("head_backend", "torch"),
        ("head_backend", "triton"),
        ("head_backend", "reference"),
    ],
)
def test_refine_through_every_backend_matches_the_reference_pipeline(rng, use_backend, argument, name):
    pytest.importorskip("gudhi")
    pytest.importorskip("ot")
    maps = _maps(rng, 2, 18, 21)
    features = rng.normal(size=(len(maps), 6, 6, 7)).astype(np.float32)
    seed = int(rng.integers(0, 2**40))
    fast = refine(maps, features, seed=seed, **{argument: use_backend(name)})
    ref = reference.refine(maps, features, seed=seed)
    assert np.array_equal(fast.pseudo_label, ref.pseudo_label)
    for b in range(len(maps)):
        assert (fast.mask[b] == ref.mask[b]).mean() >= AGREEMENT


def test_refine_returns_the_input_kind_and_shape(rng):
    maps = _maps(rng, 2)
    r_np = refine(maps, seed=1)
    assert isinstance(r_np.mask, np.ndarray) and r_np.mask.dtype == bool and r_np.mask.shape == maps.shape
    r_t = refine(torch.from_numpy(maps).to(torch.float16), seed=1)
    assert isinstance(r_t.mask, torch.Tensor) and r_t.mask.dtype == torch.bool and r_t.mask.shape == maps.shape
    one = refine(torch.from_numpy(maps[1]), seed=1)
    assert one.mask.shape == maps.shape[1:]
    # A map refined alone gives the mask it gets in the batch (same seed).
    batched = refine(torch.from_numpy(maps), seed=1)
    assert (one.mask == batched.mask[1]).float().mean() >= AGREEMENT
    assert torch.equal(refine(torch.from_numpy(maps), seed=1).mask, batched.mask)  # deterministic


def test_constant_map_gives_empty_label_and_mask():
    r = refine(np.full((2, 9, 11), 0.3), seed=0)
    assert not r.pseudo_label.any() and not r.mask.any()
    assert r.candidates == [None, None]


def test_op_under_inference_mode_and_no_grad(rng):
    maps = torch.from_numpy(_maps(rng, 2)).float()
    features = torch.from_numpy(rng.normal(size=(2, 6, 14, 16))).float()
    expected = refine(maps, features, seed=4)
    with torch.inference_mode():
        mask, label = torch.ops.topoot.refine(maps, features, 4)
    assert mask.dtype == torch.bool and mask.shape == maps.shape
    assert torch.equal(mask, expected.mask) and torch.equal(label, expected.pseudo_label)
    with torch.no_grad():
        mask2, _ = torch.ops.topoot.refine(maps, features, 4)
    assert torch.equal(mask2, mask)


def test_op_fields_reach_the_config(rng):
    maps = torch.from_numpy(_maps(rng, 2)).float()
    cfg = RefineConfig(SelectionConfig(levels=(200,), top_m=5, delta_sub=0.3, delta_sup=0.2), HeadConfig(epochs=2))
    mask, label = torch.ops.topoot.refine(
        maps, None, 9, levels=[200.0], top_m=5, delta_sub=0.3, delta_sup=0.2, epochs=2
    )
    expected = refine(maps, config=cfg, seed=9)
    assert torch.equal(mask, expected.mask) and torch.equal(label, expected.pseudo_label)


def test_opcheck(rng):
    maps = torch.from_numpy(_maps(rng, 2, 12, 14)).float()
    features = torch.from_numpy(rng.normal(size=(2, 4, 6, 7))).float()
    torch.library.opcheck(torch.ops.topoot.refine.default, (maps, features, 3), {"epochs": 2})
    torch.library.opcheck(torch.ops.topoot.refine.default, (maps[0], None, 3), {"epochs": 2})


def test_a_compiled_model_calls_the_op_without_graph_break(rng):
    class Refiner(torch.nn.Module):
        def forward(self, maps, features):
            mask, label = torch.ops.topoot.refine(maps * 2.0, features, 5, epochs=2)
            return mask.float().mean(dim=(1, 2)), label

    model = Refiner()
    maps = torch.from_numpy(_maps(rng, 2, 16, 18)).float()
    features = torch.from_numpy(rng.normal(size=(2, 4, 8, 9))).float()
    eager = model(maps, features)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.inference_mode():
        out = compiled(maps, features)
    assert torch.equal(out[0], eager[0]) and torch.equal(out[1], eager[1])


def test_bad_input_raises_value_error(rng):
    maps = torch.from_numpy(_maps(rng, 2, 10, 12)).float()
    features = torch.zeros(2, 3, 5, 6)
    with pytest.raises(ValueError, match="features: batch size"):
        refine(maps, features[:1])
    with pytest.raises(ValueError, match="features: expected"):
        refine(maps, features[0])
    with pytest.raises(ValueError, match="features: on meta"):
        refine(maps, features.to("meta"))
    bad = features.clone()
    bad[1, 2, 3, 4] = float("inf")
    with pytest.raises(ValueError, match="features: contains NaN"):
        refine(maps, bad)
    nan_maps = maps.clone()
    nan_maps[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="maps: contains NaN"):
        refine(nan_maps)
    with pytest.raises(ValueError, match="maps: expected shape"):
        refine(maps[None])
    with pytest.raises(ValueError, match="features"):
        torch.ops.topoot.refine(maps, features[:1], 0)
    with pytest.raises(ValueError, match="config"):
        refine(maps, config=SelectionConfig())
    with pytest.raises(ValueError, match="head_backend"):
        refine(maps, head_backend="cuda")
    with pytest.raises(ValueError, match="seed"):
        refine(maps, seed=1.5)


def test_package_exports():
    for name in ("refine", "RefineConfig", "RefineResult", "HeadConfig", "train_heads", "map_features"):
        assert hasattr(topoot_gpu, name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_op_gives_the_cpu_masks(rng):
    maps = torch.from_numpy(_maps(rng, 3, 40, 44)).float()
    features = torch.from_numpy(rng.normal(size=(3, 16, 10, 11))).float()
    cpu = refine(maps, features, seed=2)
    with torch.inference_mode():
        mask, label = torch.ops.topoot.refine(maps.cuda(), features.cuda(), 2)
    assert mask.device.type == "cuda" and label.device.type == "cuda"
    assert torch.equal(label.cpu(), cpu.pseudo_label)
    assert (mask.cpu() == cpu.mask).float().mean() >= AGREEMENT


def test_keep_freed_memory_sets_glibc_thresholds_or_says_it_cannot():
    import platform

    result = topoot_gpu.keep_freed_memory()
    assert isinstance(result, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert result
    with pytest.raises(ValueError, match="mmap_threshold"):
        topoot_gpu.keep_freed_memory(mmap_threshold=0)
    with pytest.raises(ValueError, match="trim_threshold"):
        topoot_gpu.keep_freed_memory(trim_threshold=2**31)
    with pytest.raises(ValueError, match="trim_threshold"):
        topoot_gpu.keep_freed_memory(trim_threshold=-1)
    assert topoot_gpu.keep_freed_memory(trim_threshold=1 << 30) == result  # a finite threshold
    assert topoot_gpu.keep_freed_memory(trim_threshold=None) == result  # never trim (the default)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_refine_without_features_gives_the_cpu_masks(rng):
    # map_features' blurs are convolutions: full float32 on CUDA (no TF32), so the features, labels
    # and masks are the CPU's.
    maps = torch.from_numpy(_maps(rng, 3, 40, 44)).float()
    cpu = refine(maps, seed=6)
    gpu = refine(maps.cuda(), seed=6)
    assert torch.equal(gpu.pseudo_label.cpu(), cpu.pseudo_label)
    assert (gpu.mask.cpu() == cpu.mask).float().mean() >= AGREEMENT
    torch.testing.assert_close(
        topoot_gpu.map_features(maps.cuda()).cpu(), topoot_gpu.map_features(maps), rtol=0, atol=1e-5
    )
    assert torch.equal(refine(maps.cuda(), seed=6).mask, gpu.mask)  # deterministic on the device
