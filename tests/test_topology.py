"""Differentiable persistence diagrams and topological losses: GUDHI parity of the forward, the
losses and their gradients against the plain restatement on GUDHI's pixel pairs
(topology.reference), gradcheck, the op (opcheck, torch.compile), errors."""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
import pytest
import torch

from topoot_gpu import (
    DiagramBatch,
    betti_loss,
    diagram_distance,
    partial_persistence,
    persistence_diagrams,
    total_persistence,
)
from topoot_gpu.testing import persistence_batches, persistence_cases, smooth_maps

gudhi = pytest.importorskip("gudhi")
from topoot_gpu.topology import reference  # noqa: E402  (needs GUDHI)

CASES = persistence_cases


def _rows(d: DiagramBatch) -> list[Counter]:
    """Per map: the multiset of (dim, birth, death)."""
    K = d.values.shape[-2]
    values, dims = d.values.reshape(-1, K, 2).detach(), d.dim.reshape(-1, K)
    return [
        Counter((int(k), float(b), float(e)) for k, (b, e) in zip(dims[i].tolist(), values[i].tolist()) if k >= 0)
        for i in range(len(values))
    ]


def _gudhi_rows(maps: np.ndarray, construction: str, filtration: str) -> list[Counter]:
    out = []
    for a in maps:
        s = 1.0 if filtration == "sublevel" else -1.0
        x = s * np.asarray(a, dtype=np.float64)
        cc = gudhi.CubicalComplex(top_dimensional_cells=x) if construction == "T" else gudhi.CubicalComplex(vertices=x)
        cc.compute_persistence(homology_coeff_field=2, min_persistence=0)
        out.append(Counter((dim, s * b, s * d) for dim, (b, d) in cc.persistence() if b != d))
    return out


def test_forward_diagrams_equal_gudhi_on_the_persistence_suite(rng):
    for maps in persistence_batches(rng):
        x = torch.from_numpy(np.asarray(maps, dtype=np.float64))
        for construction, filtration in CASES:
            d = persistence_diagrams(x, construction=construction, filtration=filtration)
            assert _rows(d) == _gudhi_rows(maps, construction, filtration), (construction, filtration)
            # The values are the map at the pixels, and the counts match the rows.
            flat = x.reshape(len(x), -1)
            real = d.pixels >= 0
            idx = d.pixels.clamp(min=0)
            gathered = torch.gather(flat, 1, idx.reshape(len(x), -1)).reshape(idx.shape)
            assert torch.equal(torch.where(real, gathered, 0), torch.where(real, d.values, 0))
            assert torch.equal(d.counts, (d.dim >= 0).sum(-1))


def test_channels_and_min_persistence(rng):
    x = torch.from_numpy(smooth_maps(rng, 6, 11, 13, sigma=1.5)).reshape(2, 3, 11, 13)
    d = persistence_diagrams(x)
    assert d.values.shape[:2] == (2, 3) and d.counts.shape == (2, 3)
    single = persistence_diagrams(x.reshape(6, 11, 13))
    assert _rows(d) == _rows(single)
    cut = float(
        np.median(np.abs(np.diff(d.values.detach().numpy(), axis=-1))[np.isfinite(d.values.detach().numpy()[..., 1])])
    )
    kept = persistence_diagrams(x, min_persistence=cut)
    for full, part in zip(_rows(d), _rows(kept)):
        want = Counter({r: c for r, c in full.items() if not np.isfinite(r[2]) or abs(r[2] - r[1]) > cut})
        assert part == want


@pytest.mark.parametrize("construction,filtration", CASES)
def test_losses_and_gradients_equal_the_gudhi_restatement(rng, construction, filtration):
    maps = rng.random((3, 9, 10))  # no ties: GUDHI's pixels are ours
    kw = dict(construction=construction, filtration=filtration)
    t = float(np.median(maps))
    for dim in (0, 1):
        for name, ours, ref in (
            ("total", lambda x, k=dim: total_persistence(persistence_diagrams(x, **kw), dim=k, p=2, reduction="none"),
             lambda x, k=dim: reference.total_persistence(x, dim=k, p=2, **kw)),
            ("betti", lambda x, k=dim: betti_loss(persistence_diagrams(x, **kw), 2, dim=k, reduction="none"),
             lambda x, k=dim: reference.betti_loss(x, 2, dim=k, **kw)),
            ("partial", lambda x, k=dim: partial_persistence(persistence_diagrams(x, **kw), t, dim=k, reduction="none"),
             lambda x, k=dim: reference.partial_persistence(x, t, dim=k, **kw)),
        ):  # fmt: skip
            x1 = torch.from_numpy(maps.copy()).requires_grad_(True)
            x2 = torch.from_numpy(maps.copy()).requires_grad_(True)
            l1, l2 = ours(x1), ref(x2)
            torch.testing.assert_close(l1, l2, rtol=1e-12, atol=1e-12, msg=f"{name} dim {dim}")
            w = torch.from_numpy(rng.random(3))
            (l1 * w).sum().backward()
            (l2 * w).sum().backward()
            torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=1e-12, msg=f"{name} dim {dim}")


def test_gradcheck_on_maps_without_ties(rng):
    x = torch.from_numpy(rng.random((2, 6, 7))).requires_grad_(True)
    for construction, filtration in CASES:

        def losses(x, construction=construction, filtration=filtration):
            d = persistence_diagrams(x, construction=construction, filtration=filtration)
            return (
                total_persistence(d, p=2, reduction="none"),
                betti_loss(d, 1, dim=0, reduction="none"),
                partial_persistence(d, 0.5, reduction="none"),
            )

        assert torch.autograd.gradcheck(losses, (x,), eps=1e-7, atol=1e-6)


def test_the_gradient_goes_to_the_birth_and_death_pixels(rng):
    x = torch.from_numpy(rng.random((1, 8, 8))).requires_grad_(True)
    d = persistence_diagrams(x, dims=(0,))
    total_persistence(d, reduction="sum").backward()
    g = x.grad.reshape(-1)
    finite = d.finite()[0]
    births, deaths = d.pixels[0, finite, 0], d.pixels[0, finite, 1]
    expected = torch.zeros_like(g)
    expected.index_add_(0, births, torch.full((len(births),), -1.0, dtype=g.dtype))
    expected.index_add_(0, deaths, torch.ones(len(deaths), dtype=g.dtype))
    assert torch.equal(g, expected)


def test_diagram_distance_entropic_tends_to_the_exact_matching(rng):
    pytest.importorskip("scipy")
    x = torch.from_numpy(rng.random((2, 7, 8))).requires_grad_(True)
    y = torch.from_numpy(rng.random((2, 7, 8)))
    dx, dy = persistence_diagrams(x, dims=(0,)), persistence_diagrams(y, dims=(0,))
    exact = diagram_distance(dx, dy, dim=0, exact=True, reduction="none")
    with warnings.catch_warnings():
        # At reg 1e-3 near-tied matchings can keep Sinkhorn from stop_thr within max_iter (warned):
        # the plan is then feasible only up to its marginal error, so its cost may sit a little
        # below the optimum (seen: 8.4e-6 below). A feasible plan never does.
        warnings.simplefilter("ignore", RuntimeWarning)
        entropic = diagram_distance(dx, dy, dim=0, reg=1e-3, reduction="none")
    assert (entropic >= exact - 1e-4).all()
    torch.testing.assert_close(entropic, exact, rtol=0.05, atol=1e-4)
    # Against a brute-force matching of two tiny diagrams.
    assert diagram_distance(dx, dx, dim=0, exact=True, reduction="sum").item() == 0.0
    exact.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_reductions_and_errors(rng):
    x = torch.from_numpy(rng.random((2, 3, 6, 6)))
    d = persistence_diagrams(x)
    per = total_persistence(d, reduction="none")
    assert per.shape == (2, 3)
    torch.testing.assert_close(total_persistence(d), per.mean())
    torch.testing.assert_close(total_persistence(d, reduction="sum"), per.sum())
    targets = torch.tensor([[1, 2, 3], [0, 1, 2]])
    per_target = betti_loss(d, targets, dim=0, reduction="none")
    for i in range(2):
        for j in range(3):
            one = persistence_diagrams(x[i : i + 1, j])
            torch.testing.assert_close(per_target[i, j], betti_loss(one, int(targets[i, j]), dim=0, reduction="sum"))
    for call, name in (
        (lambda: persistence_diagrams(x.numpy()), "x"),
        (lambda: persistence_diagrams(x[0, 0]), "x"),
        (lambda: persistence_diagrams(x.int()), "x"),
        (lambda: persistence_diagrams(x, dims=(2,)), "dims"),
        (lambda: persistence_diagrams(x, dims=()), "dims"),
        (lambda: persistence_diagrams(x, construction="Q"), "construction"),
        (lambda: persistence_diagrams(x, min_persistence="0"), "min_persistence"),
        (lambda: total_persistence(d, reduction="avg"), "reduction"),
        (lambda: total_persistence(d, p=0), "p"),
        (lambda: total_persistence(x), "diagrams"),
        (lambda: betti_loss(d, -1, dim=0), "target"),
        (lambda: betti_loss(d, torch.tensor([1.5]), dim=0), "target"),
        (lambda: betti_loss(d, 1, dim=2), "dim"),
        (lambda: partial_persistence(d, float("nan")), "threshold"),
        (lambda: diagram_distance(d, persistence_diagrams(x[0]), dim=0), "target"),
    ):
        with pytest.raises(ValueError, match=f"^{name}:"):
            call()
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="maps: contains NaN"):
        persistence_diagrams(bad)


def test_op_passes_opcheck(rng):
    x = torch.from_numpy(rng.random((3, 7, 6)))
    for construction, filtration in CASES:
        torch.library.opcheck(
            torch.ops.topoot.persistence_pixels.default, (x, [0, 1], construction, filtration, 0.0, "auto")
        )


def test_a_compiled_model_whose_loss_calls_it(rng):
    class Smoother(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1, dtype=torch.float64)

        def forward(self, x):
            y = torch.sigmoid(self.conv(x[:, None]))[:, 0]
            d = persistence_diagrams(y, dims=(0,), filtration="superlevel")
            return betti_loss(d, 1, dim=0) + 0.1 * total_persistence(d)

    model = Smoother()
    x = torch.from_numpy(rng.random((2, 10, 9)))
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), eager)
    compiled(x).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_diagrams_and_gradients_equal_the_cpu(rng):
    x = torch.from_numpy(rng.random((2, 3, 16, 15)))
    for backend in ("auto", "cuda", "triton"):
        xc = x.cuda().requires_grad_(True)
        xh = x.clone().requires_grad_(True)
        dc, dh = persistence_diagrams(xc, backend=backend), persistence_diagrams(xh)
        assert torch.equal(dc.pixels.cpu(), dh.pixels) and torch.equal(
            dc.values.detach().cpu().nan_to_num(), dh.values.detach().nan_to_num()
        )
        total_persistence(dc).backward()
        total_persistence(dh).backward()
        assert torch.equal(xc.grad.cpu(), xh.grad)


def test_the_example_leaves_one_bright_component(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "examples" / "topological_loss.py"
    run = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path / "out.png")], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    assert "components above 0.5: before 4, after 1" in run.stdout
    assert (tmp_path / "out.png").is_file()


def test_exact_matching_equals_brute_force_on_tiny_diagrams(rng):
    import itertools

    pytest.importorskip("scipy")
    from topoot_gpu.topology.api import _exact_matching

    for _ in range(20):
        n, m = int(rng.integers(0, 4)), int(rng.integers(0, 4))
        P = torch.from_numpy(np.sort(rng.random((n, 2)), 1))
        Q = torch.from_numpy(np.sort(rng.random((m, 2)), 1))
        to_diag_p = ((P[:, 1] - P[:, 0]) ** 2 / 2).tolist()
        to_diag_q = ((Q[:, 1] - Q[:, 0]) ** 2 / 2).tolist()
        best = np.inf
        # Every partial matching: choose which P points are matched, to which distinct Q points.
        for k in range(min(n, m) + 1):
            for rows in itertools.combinations(range(n), k):
                for cols in itertools.permutations(range(m), k):
                    cost = sum(float(((P[r] - Q[c]) ** 2).sum()) for r, c in zip(rows, cols))
                    cost += sum(to_diag_p[i] for i in range(n) if i not in rows)
                    cost += sum(to_diag_q[j] for j in range(m) if j not in cols)
                    best = min(best, cost)
        assert float(_exact_matching(P, Q)) == pytest.approx(best, rel=1e-12, abs=1e-15)
