"""Pseudo-labels: parity of the batched path with the plain GUDHI + POT reference, the options of
SelectionConfig checked on hand-computed cases, batching, devices, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from topoot_gpu import SelectionConfig, pseudo_labels
from topoot_gpu.testing import blob_maps, quantised_maps, ring_maps, scratch_maps, smooth_maps, tied_maps

pytest.importorskip("gudhi")
pytest.importorskip("ot")
from topoot_gpu.selection.reference import released_pseudo_label  # noqa: E402
from topoot_gpu.transport.reference import stability_pot  # noqa: E402

NEAR_TIE = 1e-9


def suite(rng: np.random.Generator) -> list[np.ndarray]:
    """At least 200 fresh maps of every kind the issue names."""
    maps: list[np.ndarray] = []
    for _ in range(5):
        h, w = rng.integers(20, 44, size=2)
        maps += list(blob_maps(rng, 6, h, w, max_blobs=1))  # one blob
        maps += list(blob_maps(rng, 6, h, w, max_blobs=4))  # several, some touching the border
        maps += list(ring_maps(rng, 5, h, w))
        maps += list(scratch_maps(rng, 5, h, w))
        maps += list(rng.random((4, 32, 32)))  # raw noise
        maps += list(quantised_maps(rng, 4, h, w, levels=int(rng.integers(5, 60))))
        maps += list(tied_maps(rng, 4, h, w, levels=int(rng.integers(2, 6))))
        maps += list(smooth_maps(rng, 3, h, w, sigma=2.0))
        maps.append(np.full((h, w), rng.normal()))  # constant
        maps += [rng.random((1, int(rng.integers(2, 40)))), rng.random((int(rng.integers(2, 40)), 1))]  # 1xN, Nx1
    return maps


def check_parity(maps: list[np.ndarray], config: SelectionConfig, **backends: str) -> tuple[int, int]:
    """Labels identical to the reference on every map that is not a near-tie: one whose best
    candidate is within 1e-9, on every sort key (score, S, C, persistence), of the best candidate
    that would give another label. That excludes fewer maps than the SPEC's "two best scores
    within 1e-9". Maps of one shape go through the batched path together. Returns the number of
    near-ties and how many of them got another label."""
    near_ties = tie_differs = 0
    by_shape: dict[tuple, list[int]] = {}
    for i, m in enumerate(maps):
        by_shape.setdefault(m.shape, []).append(i)
    for idx in by_shape.values():
        fast = pseudo_labels(np.stack([maps[i] for i in idx]), config=config, **backends)
        for j, i in enumerate(idx):
            label, cand, margin = released_pseudo_label(maps[i], config)
            if cand is not None and margin <= NEAR_TIE:
                near_ties += 1
                tie_differs += not np.array_equal(fast.labels[j], label)
                continue
            assert (fast.candidates[j] is None) == (cand is None), f"map {i}: candidate presence differs"
            assert np.array_equal(fast.labels[j], label), (
                f"map {i} {maps[i].shape}: {int((fast.labels[j] != label).sum())} pixels differ; "
                f"ours {fast.candidates[j]}, reference {cand}"
            )
            if cand is not None:
                c = fast.candidates[j]
                # The same structure; its values may differ in the last bit when two level maps hold
                # it (6/9 from k=10 and 666/999 from k=1000) and tie: the SPEC asks for the label.
                assert c.filtration == cand.filtration
                assert c.high == pytest.approx(cand.high, rel=0, abs=1e-12)
                assert c.low == pytest.approx(cand.low, rel=0, abs=1e-12)
                assert c.score == pytest.approx(cand.score, rel=1e-9, abs=1e-12)
    return near_ties, tie_differs


def test_parity_with_reference(rng):
    maps = suite(rng)
    assert len(maps) >= 200
    near_ties, differ = check_parity(maps, SelectionConfig())
    # Near-ties are mostly structural: a sublevel and a superlevel candidate matched to each other
    # share S, C and persistence exactly; both implementations then keep the sublevel one first.
    print(
        f"\n{len(maps)} maps: {near_ties} near-ties (every sort key within {NEAR_TIE}), {differ} of them "
        "with another label; parity on all the others"
    )


def small_suite(rng: np.random.Generator) -> list[np.ndarray]:
    """Small maps of every kind, for the backends that are slow here (interpreted, emulated, POT)."""
    maps: list[np.ndarray] = []
    for _ in range(2):
        h, w = (int(x) for x in rng.integers(10, 20, size=2))
        maps += list(blob_maps(rng, 3, h, w, max_blobs=3)) + list(ring_maps(rng, 2, h, w))
        maps += list(scratch_maps(rng, 2, h, w)) + list(tied_maps(rng, 2, h, w, levels=3))
        maps += list(quantised_maps(rng, 1, h, w, levels=20)) + list(rng.random((2, 12, 12)))
    return maps


@pytest.mark.parametrize(
    "argument,kernel,name",
    [
        ("persistence_backend", "cubical_persistence", "reference"),
        ("persistence_backend", "cubical_persistence", "triton"),
        ("persistence_backend", "cubical_persistence", "cuda"),
        ("transport_backend", "best_stability", "torch"),
        ("transport_backend", "best_stability", "triton"),
        ("transport_backend", "best_stability", "reference"),
    ],
)
def test_parity_with_reference_through_every_backend(rng, use_backend, monkeypatch, argument, kernel, name):
    # The cpp backends are what test_parity_with_reference runs through ("auto" here).
    from topoot_gpu.core import backends

    module = backends.load(kernel, use_backend(name))
    calls = []
    run = getattr(module, kernel)
    monkeypatch.setattr(module, kernel, lambda *a, **k: calls.append(1) or run(*a, **k))
    maps = small_suite(rng)
    near_ties, differ = check_parity(maps, SelectionConfig(), **{argument: name})
    assert calls, f"{argument}={name!r} was not called"
    print(f"\n{len(maps)} maps through {argument}={name!r}: {near_ties} near-ties, {differ} of them with another label")


@pytest.mark.parametrize(
    "config",
    [
        SelectionConfig(cost="diagonal"),
        SelectionConfig(level_mode="threshold", levels=(0.3, 0.6)),
        SelectionConfig(levels=(10, 100, 1000), top_m=3),
        SelectionConfig(top_k=3, sub_dims=(0, 1), sup_dims=(0, 1)),
        SelectionConfig(construction="V", reg=0.05),
    ],
    ids=["diagonal", "threshold", "three-levels", "topk-alldims", "V-reg0.05"],
)
def test_parity_with_reference_options(rng, config):
    maps = [m for m in suite(rng) if m.size >= 4][::3]
    near_ties, differ = check_parity(maps, config)
    print(f"\n{len(maps)} maps: {near_ties} near-ties, {differ} of them with another label")


# Hand-checked cases. A 1 x N strip has no sublevel H1 (every pixel touches the outside), so with
# the default dimensions only superlevel H0 pairs are candidates. The maps are already normalised
# (min 0, max 1).
STRIP = np.array([[0.0, 1.0, 0.0, 0.6, 0.0, 0.3, 0.0]])
# Superlevel H0 of STRIP: the peak 1 is essential; 0.6 and 0.3 die at 0: candidates
# (low, high) = (0, 0.6) and (0, 0.3) in the raw level map, (0, 599/999) and (0, 300/999) in the
# map quantised to 1000 levels. With no sublevel list, the final ranking has S = 0 everywhere and
# goes by persistence: (0, 0.6) first.


def test_delta_sup_sets_the_threshold():
    # threshold = max(0, 0.6 - delta_sup): 0.43, 0.35, 0.25 (now 0.3 at pixel 5 is in), 0
    for delta, expected in [
        (0.17, [0, 1, 0, 1, 0, 0, 0]),
        (0.25, [0, 1, 0, 1, 0, 0, 0]),
        (0.35, [0, 1, 0, 1, 0, 1, 0]),
        (0.7, [1, 1, 1, 1, 1, 1, 1]),
    ]:
        sel = pseudo_labels(STRIP, config=SelectionConfig(delta_sup=delta))
        assert sel.thresholds[0] == pytest.approx(max(0.0, 0.6 - delta))
        assert sel.labels.astype(int).tolist() == [expected], delta
        assert sel.candidates[0].filtration == "superlevel" and sel.candidates[0].high == 0.6


def test_top_k_unites_labels():
    # Ranked by persistence: (0, 0.6), (0, 0.5996), (0, 0.3), (0, 0.3003): thresholds 0.43,
    # 0.4296, 0.13, 0.1303. top_k = 3 adds pixel 5 (0.3 >= 0.13).
    one = pseudo_labels(STRIP, config=SelectionConfig(top_k=1)).labels
    two = pseudo_labels(STRIP, config=SelectionConfig(top_k=2)).labels
    three = pseudo_labels(STRIP, config=SelectionConfig(top_k=3)).labels
    assert one.astype(int).tolist() == two.astype(int).tolist() == [[0, 1, 0, 1, 0, 0, 0]]
    assert three.astype(int).tolist() == [[0, 1, 0, 1, 0, 1, 0]]


def test_sublevel_h0_candidates_and_delta_sub():
    # Sublevel H0 of STRIP: the zeros at 0, 2, 4, 6 merge at 1, 0.6 and 0.3: candidates (0, 1),
    # (0, 0.6), (0, 0.3); the most persistent, (0, 1), gives threshold 1 - delta_sub.
    cfg = SelectionConfig(sub_dims=(0,), sup_dims=())
    sel = pseudo_labels(STRIP, config=cfg)
    assert sel.candidates[0].filtration == "sublevel" and sel.candidates[0].dim == 0
    assert sel.thresholds[0] == pytest.approx(0.65)
    assert sel.labels.astype(int).tolist() == [[0, 1, 0, 0, 0, 0, 0]]
    sel = pseudo_labels(STRIP, config=SelectionConfig(sub_dims=(0,), sup_dims=(), delta_sub=0.5))
    assert sel.labels.astype(int).tolist() == [[0, 1, 0, 1, 0, 0, 0]]


def test_no_candidate_gives_an_empty_label():
    # Sublevel H1 only: a strip has none.
    sel = pseudo_labels(STRIP, config=SelectionConfig(sub_dims=(1,), sup_dims=()))
    assert sel.candidates == [None] and not sel.labels.any() and np.isnan(sel.thresholds[0])
    sel = pseudo_labels(np.full((5, 6), 3.0))  # a constant map normalises to zeros
    assert sel.candidates == [None] and not sel.labels.any()


def test_construction_changes_connectivity():
    # Peaks 1 at (0, 0) and 0.5 at (1, 1) touch diagonally. T: pixels are 8-connected, so 0.5
    # joins 1 at once (a zero-length pair): no superlevel candidate. V: 4-connected, 0.5 dies at 0:
    # candidates (0, 0.5) and, in the map quantised to 1000 levels, (0, 500/999) (0.5 * 999 =
    # 499.5 rounds half to even, up), the more persistent: threshold 500/999 - 0.17.
    a = np.zeros((4, 4))
    a[0, 0], a[1, 1] = 1.0, 0.5
    cfg = {"sub_dims": (), "sup_dims": (0,)}
    t = pseudo_labels(a, config=SelectionConfig(construction="T", **cfg))
    assert t.candidates == [None] and not t.labels.any()
    v = pseudo_labels(a, config=SelectionConfig(construction="V", **cfg))
    assert v.candidates[0].high == pytest.approx(500 / 999) and v.thresholds[0] == pytest.approx(500 / 999 - 0.17)
    assert np.argwhere(v.labels).tolist() == [[0, 0], [1, 1]]


# A strip with non-zero saddles: superlevel H0 pairs (0.6 -> 0.4) and (0.35 -> 0.1), i.e.
# candidates A = (0.4, 0.6) (persistence 0.2) and C = (0.1, 0.35) (persistence 0.25).
SADDLES = np.array([[0.0, 1.0, 0.4, 0.6, 0.1, 0.35, 0.0]])


def test_threshold_levels_truncate():
    # level_mode="threshold", tau = 0.3: the truncated diagram keeps A (born 0.6 >= 0.3, dies
    # 0.4 >= 0.3) and makes C essential (dies at 0.1 < 0.3): level 0 = {A}, level 1 = {A, C}.
    # Comparing {A} with {A, C}: one row, so the plan is b = [1/2, 1/2]; M = [0, ~1] (A to A is
    # 0, A to C is the largest distance); S = [0.5, 0.25]. Both A's get S = 0.5, C gets 0.25:
    # scores A: 1 * 0.2/0.25 = 0.8, C: 0.5 * 1 = 0.5, so top_m = 2 keeps the two A's and the
    # final ranking (S = 0 with no sublevel list) picks A: threshold 0.6 - 0.17 = 0.43.
    cfg = SelectionConfig(level_mode="threshold", levels=(0.3,), top_m=2)
    sel = pseudo_labels(SADDLES, config=cfg)
    assert sel.candidates[0].low == 0.4 and sel.candidates[0].high == 0.6
    assert sel.labels.astype(int).tolist() == [[0, 1, 0, 1, 0, 0, 0]]
    # Quantised level maps instead: both levels hold A and C; the two C's match each other, as
    # do the A's, so scores follow persistence and top_m = 2 keeps the C's; the quantised C
    # (0.1001, 350/999) is the most persistent: threshold 350/999 - 0.17.
    sel = pseudo_labels(SADDLES, config=SelectionConfig(top_m=2))
    assert sel.candidates[0].high == pytest.approx(350 / 999)
    assert sel.labels.astype(int).tolist() == [[0, 1, 1, 1, 0, 1, 0]]


def test_diagonal_cost_option_is_used():
    # With diagonal costs, the one-row problem {A} vs {A, C} has weights [1, 2]/3 (row, then the
    # diagonal) and [1, 1, 1]/3: part of A's mass goes to the diagonal, so its best stability
    # is below the 0.5 of the normalized cost (at most its row mass 1/3).
    cfg = SelectionConfig(level_mode="threshold", levels=(0.3,), top_m=2, cost="diagonal")
    ref_label, ref_cand, _ = released_pseudo_label(SADDLES[0], cfg)
    sel = pseudo_labels(SADDLES, config=cfg)
    assert np.array_equal(sel.labels[0], ref_label[None][0])
    S_a = stability_pot(
        np.array([[0.4, 0.6]]), np.array([[0.4, 0.6], [0.1, 0.35]]), cost=cfg.cost, reg=cfg.reg,
        max_iter=cfg.max_iter, stop_thr=cfg.stop_thr,
    )[0]  # fmt: skip
    assert S_a.max() <= 1 / 3 + 1e-12


def test_batch_equals_one_by_one(rng):
    maps = np.concatenate([blob_maps(rng, 4, 30, 26), tied_maps(rng, 2, 30, 26), np.zeros((1, 30, 26))])
    batch = pseudo_labels(maps)
    for i, m in enumerate(maps):
        one = pseudo_labels(m)
        assert np.array_equal(one.labels, batch.labels[i])
        assert one.candidates[0] == batch.candidates[i]


def test_input_kinds_and_dtypes(rng):
    maps = blob_maps(rng, 2, 24, 20)
    ref = pseudo_labels(maps)
    t = pseudo_labels(torch.from_numpy(maps))
    assert isinstance(t.labels, torch.Tensor) and t.labels.dtype == torch.bool and t.labels.shape == (2, 24, 20)
    assert np.array_equal(t.labels.numpy(), ref.labels)
    single = pseudo_labels(maps[0])
    assert single.labels.shape == (24, 20)
    f32 = pseudo_labels(maps.astype(np.float32))  # the float32 values, selected in float64
    assert f32.labels.dtype == bool


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_inputs_give_the_cpu_labels(rng):
    maps = torch.from_numpy(blob_maps(rng, 3, 32, 32))
    cpu = pseudo_labels(maps)
    gpu = pseudo_labels(maps.cuda())
    assert gpu.labels.device.type == "cuda"
    assert torch.equal(gpu.labels.cpu(), cpu.labels)


@pytest.mark.parametrize(
    "kwargs,arg",
    [
        ({"levels": ("a",)}, "levels"),
        ({"levels": (1.5,)}, "levels"),
        ({"level_mode": "threshold", "levels": (1.5,)}, "levels"),
        ({"level_mode": "bins"}, "level_mode"),
        ({"reg": 0}, "reg"),
        ({"max_iter": 0}, "max_iter"),
        ({"top_m": 0}, "top_m"),
        ({"top_k": 1.5}, "top_k"),
        ({"stop_thr": -1}, "stop_thr"),
        ({"cost": "l1"}, "cost"),
        ({"delta_sub": float("nan")}, "delta_sub"),
        ({"construction": "X"}, "construction"),
        ({"sub_dims": (2,)}, "sub_dims"),
        ({"sub_dims": (), "sup_dims": ()}, "sub_dims"),
        ({"ranking": "sum"}, "ranking"),
    ],
)
def test_bad_config_raises(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        SelectionConfig(**kwargs)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="maps"):
        pseudo_labels(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="config"):
        pseudo_labels(np.zeros((3, 3)), config={"reg": 0.3})
    with pytest.raises(ValueError, match="persistence_backend"):
        pseudo_labels(np.zeros((3, 3)), persistence_backend="gpu")
    with pytest.raises(ValueError, match="transport_backend"):
        pseudo_labels(np.zeros((3, 3)), transport_backend="cuda")


def test_huge_finite_values_are_not_taken_for_infinity():
    # The finiteness check sums first (an overflowing sum falls back to the elementwise test).
    maps = np.zeros((2, 9, 8))
    maps[0, 2:5, 3:6] = 1.7e308
    maps[1, 4, 4] = -1.7e308
    sel = pseudo_labels(maps)
    assert sel.labels[0].sum() == 9 and not sel.labels[0, 0].any()
    with pytest.raises(ValueError, match="maps: contains NaN"):
        pseudo_labels(np.where(maps > 0, np.inf, maps))
