"""Cubical persistence: exact parity with GUDHI, pixel bookkeeping, batching, errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from topoot_gpu import Diagrams, cubical_persistence, release_scratch
from topoot_gpu.testing import (
    blob_maps,
    numpy_float_dtypes,
    persistence_cases,
    persistence_map_kinds,
    persistence_shapes,
    quantised_maps,
    torch_float_dtypes,
)

gudhi = pytest.importorskip("gudhi")

CASES = persistence_cases


def gudhi_pairs(a: np.ndarray, construction: str, filtration: str, dim: int) -> Counter:
    """GUDHI's (birth, death) multiset, zero-length pairs dropped, in the map's units."""
    s = 1.0 if filtration == "sublevel" else -1.0
    x = s * np.asarray(a, dtype=np.float64)  # 2-D: GUDHI reads the array's shape itself
    cc = gudhi.CubicalComplex(top_dimensional_cells=x) if construction == "T" else gudhi.CubicalComplex(vertices=x)
    cc.compute_persistence(homology_coeff_field=2, min_persistence=0)
    return Counter((s * b, s * d) for b, d in cc.persistence_intervals_in_dimension(dim) if b != d)


def our_pairs(diagrams: Diagrams, image: int, dim: int) -> Counter:
    return Counter(map(tuple, diagrams.intervals(image, dim).tolist()))


def assert_matches_gudhi(maps: np.ndarray, construction: str, filtration: str, **kw) -> Diagrams:
    maps = np.asarray(maps)
    batch = maps[None] if maps.ndim == 2 else maps
    d = cubical_persistence(maps, construction=construction, filtration=filtration, **kw)
    for b, a in enumerate(batch):
        for dim in (0, 1):
            ours, ref = our_pairs(d, b, dim), gudhi_pairs(a, construction, filtration, dim)
            assert ours == ref, (
                f"image {b} H{dim} {construction} {filtration} shape {a.shape}: "
                f"missing {ref - ours}, extra {ours - ref}"
            )
    return d


def assert_pixels_consistent(maps: np.ndarray, d: Diagrams) -> None:
    flat = np.asarray(maps, dtype=np.float64).reshape(d.batch_size, -1)
    assert np.array_equal(flat[d.image, d.birth_pixel], d.birth)
    finite = d.death_pixel >= 0
    assert np.array_equal(flat[d.image[finite], d.death_pixel[finite]], d.death[finite])
    assert np.all(np.isinf(d.death[~finite]))
    # Exactly one essential class per image, in H0.
    assert np.array_equal(np.sort(d.image[~finite]), np.arange(d.batch_size))
    assert np.all(d.dim[~finite] == 0)


@pytest.mark.parametrize("construction,filtration", CASES)
@pytest.mark.parametrize("kind", sorted(persistence_map_kinds))
def test_parity_with_gudhi(rng, kind, construction, filtration):
    for h, w in persistence_shapes:
        maps = persistence_map_kinds[kind](rng, 3, h, w)
        d = assert_matches_gudhi(maps, construction, filtration)
        assert_pixels_consistent(maps, d)


@pytest.mark.parametrize("construction,filtration", CASES)
def test_parity_many_small_random_shapes(rng, construction, filtration):
    for _ in range(60):
        h, w = rng.integers(1, 24, size=2)
        kind = sorted(persistence_map_kinds)[rng.integers(len(persistence_map_kinds))]
        maps = persistence_map_kinds[kind](rng, 1, h, w)[0]
        d = assert_matches_gudhi(maps, construction, filtration)
        assert_pixels_consistent(maps, d)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["smooth", "noise", "quantised1000"])
def test_parity_large(rng, kind):
    maps = persistence_map_kinds[kind](rng, 1, 512, 512)
    for construction, filtration in [("T", "sublevel"), ("V", "superlevel")]:
        d = assert_matches_gudhi(maps, construction, filtration)
        assert_pixels_consistent(maps, d)


@pytest.mark.parametrize("dtype", numpy_float_dtypes)
def test_numpy_dtypes(rng, dtype):
    maps = quantised_maps(rng, 2, 20, 23, levels=50).astype(dtype)
    for construction, filtration in CASES:
        d = assert_matches_gudhi(maps.astype(np.float64), construction, filtration)
        e = cubical_persistence(maps, construction=construction, filtration=filtration)
        assert_pixels_consistent(maps.astype(np.float64), e)
        for b in range(2):
            for dim in (0, 1):
                assert our_pairs(e, b, dim) == our_pairs(d, b, dim)


@pytest.mark.parametrize("dtype", torch_float_dtypes)
def test_torch_inputs(rng, dtype):
    t = torch.from_numpy(blob_maps(rng, 2, 19, 26)).to(dtype)
    exact = t.double().numpy()  # the values the tensor really holds
    for construction, filtration in CASES:
        d = cubical_persistence(t, construction=construction, filtration=filtration)
        ref = assert_matches_gudhi(exact, construction, filtration)
        assert_pixels_consistent(exact, d)
        for b in range(2):
            for dim in (0, 1):
                assert our_pairs(d, b, dim) == our_pairs(ref, b, dim)


def test_batch_equals_one_by_one_and_threads_do_not_matter(rng):
    maps = np.concatenate([persistence_map_kinds[k](rng, 3, 30, 21) for k in sorted(persistence_map_kinds)])
    rng.shuffle(maps)
    for construction, filtration in CASES:
        batch = cubical_persistence(maps, construction=construction, filtration=filtration, num_threads=1)
        for threads in (2, 3, 8):
            other = cubical_persistence(maps, construction=construction, filtration=filtration, num_threads=threads)
            for field in ("image", "dim", "birth", "death", "birth_pixel", "death_pixel"):
                assert np.array_equal(getattr(batch, field), getattr(other, field)), (threads, field)
        for b, a in enumerate(maps):
            single = cubical_persistence(a, construction=construction, filtration=filtration)
            part = batch.select(image=b)
            for field in ("dim", "birth", "death", "birth_pixel", "death_pixel"):
                assert np.array_equal(getattr(single, field), getattr(part, field)), (b, field)


def test_results_do_not_depend_on_earlier_calls(rng):
    # The C++ core keeps its scratch (the parent forest among it) between calls, left dirty by
    # dense maps and clean by sparse ones, over blocks sized by the largest map so far: a sequence
    # of maps of changing sizes and kinds through one kept scratch state (one thread) must give
    # what fresh scratch gives for each map.
    calls = []
    # A dense map leaves the forest dirty, a smaller sparse one cleans what it uses, a larger
    # sparse one then reads further into the block; with each construction and filtration.
    for construction, filtration in CASES:
        for kind, h, w in [("noise", 40, 40), ("blobs", 1, 1), ("blobs", 30, 30), ("smooth", 2, 6), ("ties", 35, 3)]:
            calls.append((persistence_map_kinds[kind](rng, 1, h, w), construction, filtration, (0, 1)))
    for _ in range(40):
        h, w = (int(x) for x in rng.integers(1, 40, size=2))
        kind = sorted(persistence_map_kinds)[rng.integers(len(persistence_map_kinds))]
        construction, filtration = CASES[rng.integers(len(CASES))]
        dims = [(0, 1), (0,), (1,)][rng.integers(3)]
        calls.append((persistence_map_kinds[kind](rng, 1, h, w), construction, filtration, dims))

    def run(call):
        maps, construction, filtration, dims = call
        return cubical_persistence(maps, construction=construction, filtration=filtration, dims=dims, num_threads=1)

    def with_fresh_scratch(call):
        release_scratch()
        return run(call)

    fresh = [with_fresh_scratch(call) for call in calls]
    release_scratch()
    for i, call in enumerate(calls):
        ours = run(call)
        for field in ("dim", "birth", "death", "birth_pixel", "death_pixel"):
            assert np.array_equal(getattr(ours, field), getattr(fresh[i], field)), (i, call[0].shape, field)


def test_tie_free_pixels_match_gudhi(rng):
    # Without ties the pairing is unique, so GUDHI's cells must be ours.
    maps = rng.permutation(40 * 33).reshape(40, 33).astype(np.float64)
    for construction, filtration in CASES:
        ours = cubical_persistence(maps, construction=construction, filtration=filtration)
        ref = cubical_persistence(maps, construction=construction, filtration=filtration, backend="reference")
        key = lambda d: sorted(zip(d.dim, d.birth_pixel, d.death_pixel))  # noqa: E731
        assert key(ours) == key(ref)


@pytest.mark.parametrize("construction,filtration", CASES)
def test_dims_selection(rng, construction, filtration):
    # H1 alone comes from the dual pass with its own saddle list; with H0 it may reuse the primal
    # pass's (maps without adjacent ties): both must give the same pairs and pixels, in order.
    for kind, make in sorted(persistence_map_kinds.items()):
        for h, w in [(1, 6), (16, 16), (23, 40)]:
            maps = make(rng, 2, h, w)
            full = cubical_persistence(maps, construction=construction, filtration=filtration)
            for dim in (0, 1):
                part = cubical_persistence(maps, construction=construction, filtration=filtration, dims=(dim,))
                assert np.all(part.dim == dim)
                sel = full.select(dim=dim)
                for field in ("image", "birth", "death", "birth_pixel", "death_pixel"):
                    assert np.array_equal(getattr(part, field), getattr(sel, field)), (kind, h, w, dim, field)


@pytest.mark.parametrize("construction,filtration", CASES)
def test_at_threshold_is_the_diagram_of_the_level_set(rng, construction, filtration):
    # GUDHI on the map with every value beyond tau sent to infinity is the complex built on
    # the level set: an independent check of the truncation rule.
    maps = quantised_maps(rng, 1, 23, 29, levels=12)[0]
    d = cubical_persistence(maps, construction=construction, filtration=filtration)
    for tau in np.unique(maps)[1:-1:2]:
        cut = d.at_threshold(tau)
        outside = maps > tau if filtration == "sublevel" else maps < tau
        sign = 1.0 if filtration == "sublevel" else -1.0
        level = np.where(outside, sign * np.inf, maps)
        for dim in (0, 1):
            ref = Counter(p for p in gudhi_pairs(level, construction, filtration, dim).elements() if np.isfinite(p[0]))
            assert our_pairs(cut, 0, dim) == ref, (tau, dim)
        finite = cut.death_pixel >= 0
        assert np.array_equal(maps.flat[cut.death_pixel[finite]], cut.death[finite])


def test_diagrams_api(rng):
    maps = blob_maps(rng, 3, 12, 10)
    d = cubical_persistence(maps, filtration="superlevel")
    assert len(d) == d.dim.shape[0] == sum(len(d.intervals(b, k)) for b in range(3) for k in (0, 1))
    assert d.shape == (12, 10) and d.batch_size == 3
    iv = d.intervals(1, 0)
    assert iv.shape[1] == 2 and iv.dtype == np.float64
    assert np.all(iv[:, 0] > iv[:, 1])  # superlevel: birth above death
    with pytest.raises(ValueError, match="image"):
        d.intervals(3, 0)
    with pytest.raises(ValueError, match="tau"):
        d.at_threshold(float("nan"))


BAD_MAPS = {
    "nan": np.array([[0.0, np.nan], [1.0, 2.0]]),
    "inf": np.array([[0.0, np.inf], [1.0, 2.0]]),
    "-inf float32": np.array([[0.0, -np.inf], [1.0, 2.0]], dtype=np.float32),
    "rank 1": np.zeros(5),
    "rank 4": np.zeros((1, 1, 2, 2)),
    "empty H": np.zeros((2, 0, 3)),
    "empty batch": np.zeros((0, 3, 3)),
    "int": np.zeros((3, 3), dtype=np.int64),
    "bool": np.zeros((3, 3), dtype=bool),
    "complex": np.zeros((3, 3), dtype=np.complex128),
    "torch int": torch.zeros(3, 3, dtype=torch.int32),
    "torch nan": torch.tensor([[0.0, float("nan")]]),
    "list": [[0.0, 1.0]],
}


@pytest.mark.parametrize("name", sorted(BAD_MAPS))
def test_bad_maps_raise(name):
    with pytest.raises(ValueError, match="maps"):
        cubical_persistence(BAD_MAPS[name])


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        ({"filtration": "up"}, "filtration"),
        ({"construction": "X"}, "construction"),
        ({"dims": (2,)}, "dims"),
        ({"dims": ()}, "dims"),
        ({"dims": "0"}, "dims"),
        ({"backend": "gpu"}, "backend"),
        ({"num_threads": 0}, "num_threads"),
        ({"num_threads": 1.5}, "num_threads"),
    ],
)
def test_bad_options_raise(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        cubical_persistence(np.zeros((3, 3)), **kwargs)


def test_nan_is_rejected_by_every_backend():
    with pytest.raises(ValueError, match="maps"):
        cubical_persistence(BAD_MAPS["nan"], backend="reference")
