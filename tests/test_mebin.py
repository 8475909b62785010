"""MEBin from one persistence diagram (topoot_gpu.mebin) against the plain restatement that labels
every binarised map with scipy (topoot_gpu.mebin.reference). anomalib's own MEBin is compared in
tests/test_anomalib.py, which runs in the venv that has anomalib."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from topoot_gpu import mebin_counts, mebin_thresholds
from topoot_gpu.mebin.reference import binary_erosion, component_count, mebin_reference
from topoot_gpu.mebin.rule import stable_threshold
from topoot_gpu.testing import mebin_batches, noise_maps


@pytest.mark.parametrize("per_image", [False, True])
def test_counts_thresholds_and_masks_equal_the_reference(rng, per_image):
    for maps in mebin_batches(rng):
        rm, rt, rc = mebin_reference(torch.from_numpy(maps), per_image=per_image)
        rng_name = "image" if per_image else "batch"
        _, counts = mebin_counts(maps, range=rng_name)
        np.testing.assert_array_equal(counts, rc)
        masks, thresholds = mebin_thresholds(torch.from_numpy(maps), range=rng_name)
        assert masks.dtype == torch.bool and masks.shape == maps.shape
        assert thresholds.dtype == torch.float32 and thresholds.shape == (maps.shape[0],)
        assert torch.equal(thresholds, rt)  # bit for bit
        assert torch.equal(masks, rm)


@pytest.mark.parametrize(
    "options",
    [
        {"kernel_size": 1},
        {"kernel_size": 2},
        {"kernel_size": 3},
        {"kernel_size": 7},
        {"erode": False},
        {"sample_rate": 1},
        {"sample_rate": 7, "min_interval_len": 2},
        {"sample_rate": 255},
        {"sample_rate": 300},  # a sweep of one score
        {"min_interval_len": 1},
        {"min_interval_len": 40},
    ],
)
def test_options_equal_the_reference(rng, options):
    for maps in mebin_batches(rng, size=(6, 30))[:6]:
        rm, rt, rc = mebin_reference(torch.from_numpy(maps), **options)
        counting = {k: v for k, v in options.items() if k != "min_interval_len"}
        np.testing.assert_array_equal(mebin_counts(maps, **counting)[1], rc)
        masks, thresholds = mebin_thresholds(torch.from_numpy(maps), **options)
        assert torch.equal(thresholds, rt) and torch.equal(masks, rm)


def test_noise_and_float64(rng):
    """Raw noise (thousands of components, long runs of changing counts) and float64 maps (the
    arithmetic stays in the maps' dtype)."""
    maps = noise_maps(rng, 2, 37, 41)
    rm, rt, rc = mebin_reference(torch.from_numpy(maps), erode=False)
    masks, thresholds = mebin_thresholds(maps, erode=False)
    assert isinstance(masks, np.ndarray) and masks.dtype == bool and thresholds.dtype == np.float64
    np.testing.assert_array_equal(mebin_counts(maps, erode=False)[1], rc)
    np.testing.assert_array_equal(thresholds, rt.numpy())
    np.testing.assert_array_equal(masks, rm.numpy())


@pytest.mark.parametrize("backend", ["cpp", "reference", "triton", "cuda"])
def test_every_persistence_backend_counts_the_same(rng, use_backend, backend):
    if backend == "reference":
        pytest.importorskip("gudhi")
    name = use_backend(backend)
    for maps in mebin_batches(rng, size=(5, 16))[:5]:
        _, rc = mebin_counts(maps)
        _, counts = mebin_counts(torch.from_numpy(maps), persistence_backend=name)
        np.testing.assert_array_equal(counts, rc)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", ["auto", "cuda", "triton"])
def test_cuda_maps_give_the_cpu_result(rng, backend):
    """On the device (erosion and scaling there, the diagrams by each GPU backend or the host core):
    the CPU's masks and thresholds, bit for bit."""
    for maps in mebin_batches(rng, size=(16, 64)):
        want_masks, want_thresholds = mebin_thresholds(torch.from_numpy(maps))
        masks, thresholds = mebin_thresholds(torch.from_numpy(maps).cuda(), persistence_backend=backend)
        assert masks.device.type == "cuda" and thresholds.device.type == "cuda"
        assert torch.equal(masks.cpu(), want_masks) and torch.equal(thresholds.cpu(), want_thresholds)


def test_per_image_range_is_the_image_alone(rng):
    maps = mebin_batches(rng)[1]
    masks, thresholds = mebin_thresholds(maps, range="image")
    for b in range(len(maps)):
        m, t = mebin_thresholds(maps[b : b + 1])
        np.testing.assert_array_equal(m[0], masks[b])
        assert t[0] == thresholds[b]
    # and the batch's composition does not matter: the same image beside others
    m2, t2 = mebin_thresholds(np.concatenate([maps[:1], maps[:1] * 0.1]), range="image")
    np.testing.assert_array_equal(m2[0], masks[0])


def test_shapes_and_kinds(rng):
    maps = mebin_batches(rng)[0]
    m3, t3 = mebin_thresholds(maps)
    m4, t4 = mebin_thresholds(torch.from_numpy(maps)[:, None])
    assert m4.shape == (len(maps), 1, *maps.shape[1:]) and torch.equal(m4[:, 0], torch.from_numpy(m3))
    m2, t2 = mebin_thresholds(maps[0])
    assert m2.shape == maps.shape[1:] and np.ndim(t2) == 0
    np.testing.assert_array_equal(m2, mebin_thresholds(maps[:1])[0][0])
    m16, t16 = mebin_thresholds(torch.from_numpy(maps).half())
    ref, tref = mebin_thresholds(torch.from_numpy(maps).half().float())
    assert torch.equal(m16, ref) and t16.dtype == torch.float32 and torch.equal(t16, tref)


def test_a_constant_batch_gives_empty_masks_at_its_value():
    maps = np.full((2, 9, 11), 0.7, dtype=np.float32)
    masks, thresholds = mebin_thresholds(maps)
    assert not masks.any() and (thresholds == np.float32(0.7)).all()
    assert not mebin_counts(maps)[1].any()


def test_stable_threshold_rule():
    # runs of 2 (len 3), 1 (len 5), 0 (ignored), 2 (len 5): counts 1 and 2 tie at 5; 2 qualified first
    counts = [2, 2, 2, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2]
    assert stable_threshold(counts, min_interval_len=3, sample_rate=4) == (255 - 18 * 4, 2)
    assert stable_threshold(counts, min_interval_len=4, sample_rate=4) == (255 - 7 * 4, 1)
    assert stable_threshold(counts, min_interval_len=6, sample_rate=4) == (255, 0)
    assert stable_threshold([0] * 10, min_interval_len=1, sample_rate=4) == (255, 0)
    assert stable_threshold([3] * 70, min_interval_len=4, sample_rate=4) == (0, 3)  # clipped at 0


def test_reference_helpers_on_hand_made_masks():
    mask = np.zeros((7, 7), dtype=bool)
    mask[0:3, 0:3] = True
    mask[3, 3] = True  # touches the square at a corner only: 8-connected, one component
    mask[6, 6] = True
    assert component_count(mask) == 2
    eroded = binary_erosion(mask, 2)  # window rows i-1..i, cols j-1..j (origin (1, 1))
    expected = np.zeros_like(mask)
    expected[0:3, 0:3] = True  # the whole square: outside the image counts as set; the two specks go
    assert (eroded == expected).all()


@pytest.mark.parametrize(
    "kwargs, arg",
    [
        ({"sample_rate": 0}, "sample_rate"),
        ({"sample_rate": 2.0}, "sample_rate"),
        ({"min_interval_len": 0}, "min_interval_len"),
        ({"kernel_size": 0}, "kernel_size"),
        ({"erode": 1}, "erode"),
        ({"range": "global"}, "range"),
        ({"persistence_backend": "gpu"}, "backend"),
    ],
)
def test_bad_options_raise(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        mebin_thresholds(np.zeros((4, 4), dtype=np.float32), **kwargs)


@pytest.mark.parametrize(
    "maps",
    [np.zeros((2, 3, 4, 4)), np.zeros((4,)), np.zeros((2, 0, 4)), np.array([[np.nan, 0.0]]), np.zeros((2, 2), int)],
)
def test_bad_maps_raise(maps):
    with pytest.raises(ValueError, match="maps"):
        mebin_thresholds(maps)


def test_anomalib_module_without_anomalib_names_the_extra():
    import importlib.util

    if importlib.util.find_spec("anomalib") is not None:
        pytest.skip("anomalib is installed here (tests/test_anomalib.py covers the module)")
    with pytest.raises(ImportError, match=r"topoot_gpu\[anomalib\]"):
        import topoot_gpu.anomalib  # noqa: F401
