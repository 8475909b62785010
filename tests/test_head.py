"""The head (SPEC 5): the fused losses against autograd through the plain formulas, the batched
head against the released head (head.reference.train_released_head), batching, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from topoot_gpu import HeadConfig, map_features, pseudo_labels, train_heads
from topoot_gpu.core import random as rnd
from topoot_gpu.core.maps import normalise_maps
from topoot_gpu.head import _cpp, _torch
from topoot_gpu.head.reference import ot_consistency_loss
from topoot_gpu.head.reference import train_released_head as train_head
from topoot_gpu.testing import blob_maps, ring_maps, scratch_maps

AGREEMENT = 0.999  # SPEC 6: masks agree on at least 99.9% of pixels


def test_hash_is_the_same_in_python_and_torch(rng):
    x = torch.from_numpy(rng.integers(0, 2**32, 1000, dtype=np.int64))
    assert rnd._mix(x).tolist() == [rnd._mix_int(int(v)) for v in x]
    bits = rnd.random_u32(int(rng.integers(0, 2**62)), 3, 200_000)
    assert int(bits.min()) >= 0 and int(bits.max()) < 2**32
    assert abs(bits.double().mean().item() / 2**32 - 0.5) < 0.01
    n = int(rng.integers(1, 2**31))
    idx = rnd.uniform_index(bits, n)
    assert int(idx.min()) >= 0 and int(idx.max()) < n


def test_partners_have_the_right_labels_and_are_uniform(rng):
    B, P = 3, 4000
    labels = torch.from_numpy(rng.random((B, P)) < rng.uniform(0.05, 0.5, (B, 1)))
    same, other = rnd.pair_partners(labels, int(rng.integers(0, 2**40)))
    assert torch.equal(labels.gather(1, same), labels)
    assert torch.equal(labels.gather(1, other), ~labels)
    # Background partners of background pixels: every background pixel about equally often.
    counts = np.bincount(same[0][~labels[0]].numpy(), minlength=P)[~labels[0].numpy()]
    assert counts.mean() == pytest.approx(1.0)
    assert counts.max() < 12


def _pair_terms(e, partner, weight, margin, pair_eps):
    """The contrastive loss written with F.pairwise_distance, as the released code does."""
    B, P, _ = e.shape
    first = torch.arange(P).repeat_interleave(2)
    y = (torch.arange(2 * P) % 2).to(e.dtype)
    out = []
    for b in range(B):
        d = F.pairwise_distance(e[b, first], e[b, partner[b]], eps=pair_eps)
        out.append((weight[b] * ((1 - y) * d.pow(2) + y * torch.clamp(margin - d, min=0).pow(2))).sum())
    return torch.stack(out)


def _loss_inputs(rng, config: HeadConfig):
    B, P, E = 3, int(rng.integers(20, 200)), int(rng.integers(2, 24))
    e = torch.from_numpy(rng.normal(size=(B, P, E)) * rng.uniform(0.05, 1.0))
    labels = torch.from_numpy(rng.random((B, P)) < rng.uniform(0.1, 0.6))
    labels[:, 0], labels[:, 1] = True, False
    same, other = rnd.pair_partners(labels, int(rng.integers(0, 2**40)))
    partner = torch.stack([same, other], 2).reshape(B, 2 * P)
    weight = torch.from_numpy(rng.random((B, 2 * P)))
    scale = torch.from_numpy(rng.random(B) + 0.5)
    return e, labels, partner, weight, scale


def _released_loss(e, labels, partner, weight, config: HeadConfig):
    """Autograd through the plain formulas: the reference's OT-consistency loss (200 Sinkhorn
    iterations written out) and the contrastive loss with F.pairwise_distance."""
    y = labels.to(e.dtype)
    ot = torch.stack([ot_consistency_loss(e[b], y[b], config) for b in range(len(e))])
    return config.ot_weight * ot + _pair_terms(e, partner, weight, config.margin, config.pair_eps)


def _head_module(backend: str):
    if backend == "triton":
        pytest.importorskip("triton")
        from topoot_gpu.head import _triton

        return _triton
    return _cpp if backend == "cpp" else _torch


@pytest.mark.parametrize("backend", ["cpp", "torch", "triton"])
def test_head_loss_and_gradient_match_autograd_through_the_iterations(rng, backend):
    # Small ot_reg floors part of the kernel at ot_eps; few iterations leave rows unconverged.
    config = HeadConfig(
        ot_iter=int(rng.integers(1, 60)),
        ot_reg=float(rng.choice([0.01, 0.05, 0.5])),
        ot_weight=float(rng.uniform(0.1, 1)),
        margin=float(rng.uniform(0.2, 2)),
    )
    e, labels, partner, weight, scale = _loss_inputs(rng, config)
    e1 = e.clone().requires_grad_(True)
    head_loss = _head_module(backend).head_loss
    loss = head_loss(e1, labels, partner, weight, config, 2)
    (scale * loss).sum().backward()
    e2 = e.clone().requires_grad_(True)
    expected = _released_loss(e2, labels, partner, weight, config)
    (scale * expected).sum().backward()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-15)
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-8, atol=1e-12 * float(e2.grad.abs().max()))
    # The training loop's unit incoming gradient takes the unscaled path.
    e3 = e.clone().requires_grad_(True)
    if backend == "cpp":
        _cpp.head_loss(e3, labels, partner, weight, config, 2).sum().backward()
        e4 = e.clone().requires_grad_(True)
        _released_loss(e4, labels, partner, weight, config).sum().backward()
        torch.testing.assert_close(e3.grad, e4.grad, rtol=1e-8, atol=1e-12 * float(e4.grad.abs().max()))


def _images(rng, n: int, h: int, w: int):
    """Maps with non-trivial pseudo-labels of several kinds, and their labels."""
    maps = np.concatenate([blob_maps(rng, n, h, w, max_blobs=2), ring_maps(rng, n, h, w), scratch_maps(rng, n, h, w)])
    labels = torch.from_numpy(pseudo_labels(maps).labels)
    keep = (labels.flatten(1).any(1) & ~labels.flatten(1).all(1)).numpy()
    return maps[keep], labels[keep]


@pytest.mark.parametrize("features_kind", ["backbone", "full_resolution", "map"])
def test_head_matches_the_released_head(rng, features_kind):
    h, w = (int(x) for x in rng.integers(24, 48, size=2))
    maps, labels = _images(rng, 2, h, w)
    assert len(labels) >= 2
    B = len(labels)
    if features_kind == "backbone":
        features = torch.from_numpy(rng.normal(size=(B, 12, h // 4 + 1, w // 4 + 1))).float()
    elif features_kind == "full_resolution":
        features = torch.from_numpy(rng.normal(size=(B, 6, h, w))).to(torch.float64)
    else:
        features = map_features(torch.from_numpy(normalise_maps(maps)))
    seed = int(rng.integers(0, 2**40))
    config = HeadConfig(epochs=int(rng.integers(2, 6)), pair_batch=int(rng.choice([64, 512])))
    fast = train_heads(features, labels, config=config, seed=seed)
    assert fast.dtype == torch.bool and fast.shape == labels.shape
    for b in range(B):
        ref = train_head(features[b], labels[b], seed=seed, config=config)
        agreement = (fast[b].numpy() == ref).mean()
        assert agreement >= AGREEMENT, f"image {b}: {agreement:.5f} of pixels agree"


#: HeadConfig.precision: a mode is offered only if its masks agree with fp32's on this share of
#: the pixels of the parity suite (issue 18).
PRECISION_AGREEMENT = 0.995


@pytest.mark.parametrize("backend", ["cpp", "torch"])
@pytest.mark.parametrize("features_kind", ["backbone", "full_resolution", "map"])
def test_bf16_masks_agree_with_fp32(rng, features_kind, backend, monkeypatch):
    from topoot_gpu.head import training

    h, w = (int(x) for x in rng.integers(24, 48, size=2))
    maps, labels = _images(rng, 3, h, w)
    B = len(labels)
    if features_kind == "backbone":
        features = torch.from_numpy(rng.normal(size=(B, 24, h // 4 + 1, w // 4 + 1))).float()
    elif features_kind == "full_resolution":
        features = torch.from_numpy(rng.normal(size=(B, 16, h, w))).float()
    else:
        features = map_features(torch.from_numpy(normalise_maps(maps)))
    seed = int(rng.integers(0, 2**40))
    exact = train_heads(features, labels, seed=seed, backend=backend)
    embedded, embed = [], training._embed

    def spy(*args):
        e = embed(*args)
        embedded.append(e.dtype)
        return e

    monkeypatch.setattr(training, "_embed", spy)
    fast = train_heads(features, labels, seed=seed, backend=backend, config=HeadConfig(precision="bf16"))
    assert embedded and set(embedded) == {torch.bfloat16}, "the products did not run in bfloat16"
    agreement = (fast == exact).double().mean().item()
    assert agreement >= PRECISION_AGREEMENT, f"{agreement:.5f} of pixels agree with fp32"


def test_precision_errors():
    labels = torch.zeros(2, 8, 8, dtype=torch.bool)
    labels[:, 2:5, 2:5] = True
    bf16 = HeadConfig(precision="bf16")
    with pytest.raises(ValueError, match="^precision:"):
        HeadConfig(precision="tf32")
    with pytest.raises(ValueError, match="^precision: 'bf16' needs float32"):
        train_heads(torch.zeros(2, 3, 8, 8, dtype=torch.float64), labels, config=bf16)
    with pytest.raises(ValueError, match="^precision: 'bf16' is not taken by the reference"):
        train_heads(torch.zeros(2, 3, 8, 8), labels, config=bf16, backend="reference")


def test_torch_backend_gives_the_cpp_masks(rng):
    maps, labels = _images(rng, 2, 40, 36)
    features = torch.from_numpy(rng.normal(size=(len(labels), 8, 10, 9))).float()
    cpp = train_heads(features, labels, backend="cpp", seed=7)
    ops = train_heads(features, labels, backend="torch", seed=7)
    assert (cpp == ops).float().mean() >= AGREEMENT


def test_fused_triton_sinkhorn_is_the_torch_loop(rng):
    # The fused forward and backward against the torch loop on many blocks of pixels (a block
    # smaller than P, a ragged last block), floored kernels and 1..3 iterations included.
    _triton = _head_module("triton")
    for P, iters, scale in ((5, 1, 1.0), (37, 2, 1.0), (130, 3, 30.0), (300, 25, 1.0), (257, 200, 5.0)):
        K = torch.from_numpy(np.exp(-rng.random((2, P, 2)) * scale)).clamp_min(1e-9)
        G = torch.from_numpy(rng.normal(size=(2, P, 2)))
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(_triton, "BLOCK", 64)
            plan, hist = _triton.plain_sinkhorn_forward(K, iters, 1e-9)
            grad = _triton.plain_sinkhorn_backward(K, hist, G, 1e-9)
        plan_ref, hist_ref = _torch.plain_sinkhorn_forward(K, iters, 1e-9)
        torch.testing.assert_close(hist, hist_ref, rtol=1e-12, atol=0)
        torch.testing.assert_close(plan, plan_ref, rtol=1e-12, atol=0)
        grad_ref = _torch.plain_sinkhorn_backward(K, hist_ref, G, 1e-9)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-9, atol=1e-12 * float(grad_ref.abs().max()))


def test_triton_backend_gives_the_torch_masks(rng):
    _head_module("triton")
    maps, labels = _images(rng, 1, 24, 20)
    features = torch.from_numpy(rng.normal(size=(len(labels), 6, 8, 7)))
    ops = train_heads(features, labels, backend="torch", seed=3)
    fused = train_heads(features, labels, backend="triton", seed=3)
    assert (ops == fused).double().mean() >= AGREEMENT


def test_batched_heads_give_the_masks_of_single_heads(rng):
    maps, labels = _images(rng, 2, 30, 34)
    features = torch.from_numpy(rng.normal(size=(len(labels), 10, 30, 34))).float()
    batched = train_heads(features, labels, seed=11)
    for b in range(len(labels)):
        alone = train_heads(features[b : b + 1], labels[b : b + 1], seed=11)
        assert (alone[0] == batched[b]).float().mean() >= AGREEMENT
    assert torch.equal(train_heads(features, labels, seed=11), batched)  # deterministic


def test_cpu_fp32_sub_batches_are_multiples_of_the_threads():
    from topoot_gpu.head.api import thread_balanced

    for n, size, threads, want in [
        (8, 3, 2, [2, 2, 2, 2]),
        (3, 8, 2, [2, 1]),
        (13, 6, 2, [6, 6, 1]),
        (11, 10, 4, [8, 1, 1, 1]),
        (5, 1, 2, [1] * 5),
        (7, 100, 1, [7]),
        (16, 16, 16, [16]),
        (1, 8, 2, [1]),
        (2, 8, 2, [2]),
    ]:
        images = torch.randperm(n)
        parts = thread_balanced(images, size, threads)
        assert [len(p) for p in parts] == want, (n, size, threads)
        assert torch.equal(torch.cat(parts), images)


def test_constant_labels_are_returned_untrained(rng):
    labels = torch.zeros(3, 12, 14, dtype=torch.bool)
    labels[1] = True
    labels[2, 3:6, 4:9] = True
    features = torch.from_numpy(rng.normal(size=(3, 4, 12, 14))).float()
    masks = train_heads(features, labels)
    assert not masks[0].any() and masks[1].all()
    assert masks[2].any()


def test_resize_is_bilinear_interpolation_as_two_products(rng):
    # The head resizes its first layer's output with fixed interpolation matrices (a deterministic
    # gradient on CUDA); it must be F.interpolate's bilinear, align_corners=False, up or down.
    from topoot_gpu.head.training import _Resize

    for h, w, H, W in ((28, 28, 224, 224), (7, 8, 29, 32), (5, 3, 17, 9), (1, 1, 4, 4), (10, 12, 5, 7)):
        z = torch.from_numpy(rng.normal(size=(2, h * w, 6))).requires_grad_(True)
        grid = z.view(2, h, w, 6).permute(0, 3, 1, 2)
        ref = F.interpolate(grid, size=(H, W), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        out = _Resize(h, w, H, W, torch.float64, torch.device("cpu"))(z)
        torch.testing.assert_close(out, ref.reshape(2, H * W, 6), rtol=0, atol=1e-14)
        g = torch.from_numpy(rng.normal(size=(2, H * W, 6)))
        (grad,) = torch.autograd.grad(out, z, g)
        (grad_ref,) = torch.autograd.grad(ref.reshape(2, H * W, 6), z, g)
        torch.testing.assert_close(grad, grad_ref, rtol=0, atol=1e-13)


def test_map_features_are_documented_channels(rng):
    a = torch.from_numpy(normalise_maps(rng.random((2, 9, 13))))
    f = map_features(a)
    assert f.shape == (2, 8, 9, 13) and f.dtype == torch.float32
    torch.testing.assert_close(f[:, 0], a.float())
    torch.testing.assert_close(f[:, 7], a.float() - f[:, 4])
    assert torch.isfinite(f).all()
    tiny = map_features(torch.zeros(1, 1, 1))
    assert tiny.shape == (1, 8, 1, 1) and torch.isfinite(tiny).all()


def test_a_batchs_features_and_masks_are_its_maps_alone(rng):
    # The convolution library chooses its algorithm by batch size: batched blurs rounded otherwise
    # than one map's, and one pixel of a 64x64 mask flipped between refine(batch) and refine(map)
    # (SPEC 5: a batch's masks are its maps' one by one).
    from topoot_gpu import refine

    for batch, h, w in [(3, 31, 47), (4, 9, 130), (6, 64, 64)]:
        maps = blob_maps(rng, batch, h, w).astype(np.float32)
        features = map_features(maps)
        for i in range(batch):
            assert np.array_equal(map_features(maps[i]), features[i]), (batch, h, w, i)
    masks = refine(maps).mask  # the 64x64 batch
    for i in range(len(maps)):
        assert np.array_equal(refine(maps[i]).mask, masks[i]), i


def test_bad_arguments_raise_value_error():
    labels = torch.zeros(2, 8, 8, dtype=torch.bool)
    features = torch.zeros(2, 3, 8, 8)
    with pytest.raises(ValueError, match="labels"):
        train_heads(features, labels.float())
    with pytest.raises(ValueError, match="features"):
        train_heads(features[:1], labels)
    with pytest.raises(ValueError, match="features"):
        train_heads(features[0], labels)
    with pytest.raises(ValueError, match="features"):
        train_heads(features.int(), labels)
    bad = features.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="features"):
        train_heads(bad, labels)
    with pytest.raises(ValueError, match="seed"):
        train_heads(features, labels, seed=-1)
    with pytest.raises(ValueError, match="backend"):
        train_heads(features, labels, backend="gpu")
    with pytest.raises(ValueError, match="epochs"):
        HeadConfig(epochs=0)
    with pytest.raises(ValueError, match="lr"):
        HeadConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="entropy_base"):
        HeadConfig(entropy_base=1.0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_heads_give_the_cpu_masks(rng):
    maps, labels = _images(rng, 2, 48, 40)
    features = torch.from_numpy(rng.normal(size=(len(labels), 16, 12, 10))).float()
    cpu = train_heads(features, labels, seed=5)
    gpu = train_heads(features.cuda(), labels.cuda(), seed=5)
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() == cpu).float().mean() >= AGREEMENT
    assert torch.equal(train_heads(features.cuda(), labels.cuda(), seed=5), gpu)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_triton_heads_give_the_cpu_masks(rng):
    _head_module("triton")
    maps, labels = _images(rng, 2, 48, 40)
    features = torch.from_numpy(rng.normal(size=(len(labels), 16, 12, 10))).float()
    cpu = train_heads(features, labels, seed=5)
    gpu = train_heads(features.cuda(), labels.cuda(), seed=5, backend="triton")
    assert (gpu.cpu() == cpu).float().mean() >= AGREEMENT
    # No atomics: the fused loop is deterministic.
    assert torch.equal(train_heads(features.cuda(), labels.cuda(), seed=5, backend="triton"), gpu)


@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_fused_sinkhorn_compiles_for_hopper_without_spills(dtype):
    _triton = _head_module("triton")
    from topoot_gpu.testing import compile_for_hopper

    module = "topoot_gpu.head._triton"
    common = {"params_ptr": f"*{dtype}", "P": "i32", "iters": "i32", "BLOCK": "constexpr"}
    kernels = {
        "_plain_sinkhorn_forward_kernel": {"K_ptr": f"*{dtype}", "plan_ptr": f"*{dtype}", "hist_ptr": f"*{dtype}"},
        "_plain_sinkhorn_backward_kernel": {
            "K_ptr": f"*{dtype}", "G_ptr": f"*{dtype}", "hist_ptr": f"*{dtype}", "grad_ptr": f"*{dtype}"
        },
    }  # fmt: skip
    for kernel, pointers in kernels.items():
        sig = pointers | common
        regs, stack, seconds = compile_for_hopper(module, kernel, sig, {"BLOCK": _triton.BLOCK}, _triton.NUM_WARPS)
        print(f"{kernel} {dtype}: {regs} registers, {stack} bytes of stack, {seconds:.1f} s")
        assert stack == 0 and seconds < 60
