"""The CUDA kernels' source (as shipped in the package) compiled for the host and run through the
``"cuda"`` backend itself (``cubical_persistence(..., backend="cuda")``, with only its launch
replaced: :func:`topoot_gpu.testing.cuda_host_kernels`), against the C++ union-find core: identical
pairs and pixels on every kind of input, whatever order the threads run in. No GPU needed, so CI
tests the kernels' logic on every stop; ``test_persistence_cuda.py`` runs them on a GPU
(concurrency included)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from topoot_gpu import cubical_persistence
from topoot_gpu.persistence import _basins
from topoot_gpu.testing import (
    cuda_host_kernels,
    diagram_rows,
    persistence_cases,
    persistence_map_kinds,
    persistence_shapes,
    tied_maps,
)
from topoot_gpu.testing import persistence_batches as batches

CASES = persistence_cases


@pytest.fixture
def host_kernels(cuda_host_lib) -> ctypes.CDLL:
    return cuda_host_lib


@pytest.fixture
def on_host(host_kernels) -> list[str]:
    """The ``"cuda"`` backend launches on the host; returns the names of the kernels launched."""
    launched: list[str] = []
    with cuda_host_kernels(host_kernels, launched):
        yield launched


def cuda_source_rows(t: torch.Tensor, construction: str, filtration: str, dims=(0, 1)) -> list[tuple]:
    d = cubical_persistence(t, construction=construction, filtration=filtration, dims=dims, backend="cuda")
    return diagram_rows(d)


def cpu_rows(t: torch.Tensor, construction: str, filtration: str, dims=(0, 1)) -> list[tuple]:
    d = cubical_persistence(t, construction=construction, filtration=filtration, dims=dims, backend="cpp")
    return diagram_rows(d)


@pytest.mark.parametrize("construction,filtration", CASES)
def test_cuda_source_pairs_and_pixels_equal_the_cpu_core(rng, on_host, construction, filtration):
    for maps in batches(rng):
        for dtype in (torch.float64, torch.float32):
            t = torch.from_numpy(maps).to(dtype)
            assert cuda_source_rows(t, construction, filtration) == cpu_rows(t, construction, filtration), (
                f"shape {maps.shape} {dtype}"
            )
    assert {"descent_f32", "descent_f64", "jump", "boundary_f32", "boundary_f64"} <= set(on_host)


@pytest.mark.parametrize("construction,filtration", CASES)
@pytest.mark.parametrize("kind", sorted(persistence_map_kinds))
def test_cuda_source_on_the_persistence_test_maps(rng, on_host, kind, construction, filtration):
    # The CPU core's own parity tests (against GUDHI) run on these kinds and shapes.
    for h, w in persistence_shapes:
        t = torch.from_numpy(persistence_map_kinds[kind](rng, 3, h, w))
        for dtype in (torch.float64, torch.float32):
            assert cuda_source_rows(t.to(dtype), construction, filtration) == cpu_rows(
                t.to(dtype), construction, filtration
            ), f"{kind} {h}x{w} {dtype}"


def test_cuda_source_dims_subsets_and_thread_orders(rng, on_host):
    t = torch.from_numpy(rng.random((2, 17, 23)))
    for dims in ((0,), (1,), (0, 1)):
        expected = cpu_rows(t, "T", "sublevel", dims)
        # Each call launches with fresh seeds, so each runs the threads in other orders.
        for _ in range(3):
            assert cuda_source_rows(t, "T", "sublevel", dims) == expected


@pytest.mark.parametrize("size,filtrations", [(224, ("sublevel", "superlevel")), (2048, ("sublevel",))])
def test_cuda_source_large_noise_maps(rng, on_host, size, filtrations):
    # Raw noise: hundreds of thousands of minima at 2048 x 2048, the largest supported map.
    t = torch.from_numpy(rng.random((1, size, size))).float()
    for filtration in filtrations:
        assert cuda_source_rows(t, "T", filtration) == cpu_rows(t, "T", filtration)


@pytest.mark.parametrize("kernel", ["descent_f32", "boundary_f32"])
def test_unwritten_outputs_are_caught(rng, on_host, monkeypatch, kernel):
    # The wrappers poison their outputs: a launch that writes nothing must not pass silently.
    from topoot_gpu.persistence import _cuda

    emulated = _cuda._launch

    def skip_one(name, *args):
        if name != kernel:
            emulated(name, *args)

    monkeypatch.setattr(_cuda, "_launch", skip_one)
    t = torch.from_numpy(rng.random((2, 9, 11))).float()
    with pytest.raises(RuntimeError, match="unwritten"):
        cuda_source_rows(t, "T", "sublevel")


def test_batches_larger_than_a_chunk_run_in_chunks(rng, on_host, monkeypatch):
    # Chunks of 2 maps (then 1): the image indices must continue across chunks.
    t = torch.from_numpy(np.concatenate([rng.random((3, 13, 9)), tied_maps(rng, 2, 13, 9, levels=3)]))
    monkeypatch.setattr(_basins, "CHUNK_PIXELS", 2 * 13 * 9 + 5)
    for construction, filtration in CASES:
        assert cuda_source_rows(t, construction, filtration) == cpu_rows(t, construction, filtration)
    assert on_host.count("descent_f64") == 3 * 2 * len(CASES)  # 3 chunks, 2 passes


def test_emulation_is_undone_on_exit(host_kernels):
    # Outside the context the "cuda" backend takes CUDA tensors only, and launches through CuPy again.
    from topoot_gpu.persistence import _cuda

    saved = _cuda._launch
    with cuda_host_kernels(host_kernels):
        assert _cuda._launch is not saved
    assert _cuda._launch is saved
    with pytest.raises(ValueError, match="backend: 'cuda' runs on cuda tensors.*cpu"):
        cubical_persistence(np.zeros((3, 3)), backend="cuda")


def test_float32_launches_flush_subnormals_as_nvrtc_compiles_them(host_kernels):
    # CuPy compiles with -ftz=true: the emulation's float32 launches flush subnormals too (x86), so a
    # kernel comparing float32 values directly would fail the subnormal maps here as on the GPU.
    if not host_kernels.flushes_subnormals():
        pytest.skip("subnormal flushing is emulated on x86 hosts only")
    assert host_kernels.flushed_less(ctypes.c_float(0.0), ctypes.c_float(1e-40)) == 0
    assert host_kernels.flushed_less(ctypes.c_float(0.0), ctypes.c_float(1e-37)) == 1


def test_cuda_source_orders_subnormals_exactly(on_host):
    # The audit's example: 1e-40 and 2e-40 are peaks of a strip, 5e-41 a saddle (float32 subnormals).
    t = torch.tensor([[0.0, 1e-40, 0.0, 5e-41, 2e-40]], dtype=torch.float32)
    for filtration in ("sublevel", "superlevel"):
        rows = cuda_source_rows(t, "T", filtration)
        assert rows == cpu_rows(t, "T", filtration)
    assert any(r[5] >= 0 for r in cuda_source_rows(t, "T", "superlevel"))  # a finite pair


def test_the_nvrtc_build_compares_no_floats(tmp_path):
    # CuPy has NVRTC compile with -ftz=true: any float32 comparison would be `setp.*.ftz.f32` and
    # flush subnormals. nvcc -ftz=true emits the same PTX instructions; the kernels must hold none.
    import re
    import shutil
    import subprocess

    from topoot_gpu.persistence._cuda import cuda_source

    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("nvcc not found (CI has it)")
    src = tmp_path / "persistence_cuda.cu"
    src.write_text(cuda_source())
    ptx = tmp_path / "persistence_cuda.ptx"
    subprocess.run([nvcc, "-ptx", "-ftz=true", "-std=c++17", "-arch=sm_90", "-o", str(ptx), str(src)], check=True)
    comparisons = set(re.findall(r"setp\.[a-z0-9.]+", ptx.read_text()))
    assert comparisons, "no comparison found: the PTX reading is broken"
    assert not [c for c in comparisons if c.endswith((".f32", ".f64"))], sorted(comparisons)
    # jump stores its "changed" flag once per warp (a ballot), not once per thread that moved.
    assert "vote.sync.ballot" in ptx.read_text()


def test_pointer_jumping_is_exact_with_stale_reads(rng, host_kernels):
    # jump rewrites parents in place while others read them: any mix of fresh and pre-launch reads
    # must give the same roots, so the same pairs.
    with cuda_host_kernels(host_kernels, stale_reads=0.5):
        for maps in batches(rng)[:5]:
            t = torch.from_numpy(maps)
            for construction, filtration in CASES:
                assert cuda_source_rows(t, construction, filtration) == cpu_rows(t, construction, filtration)


def test_stale_read_mode_is_live(host_kernels):
    # All reads stale is synchronous pointer doubling: a descent path of 512 steps (an increasing
    # strip) needs exactly log2(512) = 9 rounds that change parents, and the 10th runs (its
    # predecessor changed something); jump_rounds(513) = 10 are launched, with no host
    # synchronisation. With fresh reads fewer rounds work and the rest are idle.
    t = torch.arange(513, dtype=torch.float64)[None, None]
    assert _basins.jump_rounds(513) == 10
    for stale in (1.0, 0.0):
        launched: list[str] = []
        with cuda_host_kernels(host_kernels, launched, stale_reads=stale):
            assert cuda_source_rows(t, "T", "sublevel", dims=(0,)) == cpu_rows(t, "T", "sublevel", dims=(0,))
        assert launched.count("jump") + launched.count("jump (idle)") == 10
        if stale:
            assert launched.count("jump") == 10
        else:
            assert launched.count("jump") < 10  # in-place reads of rewritten parents only speed it up


def test_jump_rounds_reach_every_root_on_the_longest_paths(host_kernels):
    # Long descent paths (a strip: P - 1 steps, the longest there is; a snake), every read stale
    # (synchronous doubling, the slowest case) or half: the roots are reached in jump_rounds rounds.
    # CHECK_KERNELS (on in the tests) checks each root; a round fewer fails on a strip.
    for H, W in ((1, 2), (1, 3), (2, 2), (1, 64), (65, 1), (5, 7), (16, 16), (17, 15)):
        snake = np.arange(H * W, dtype=np.float64).reshape(H, W)
        snake[1::2] = snake[1::2, ::-1].copy()
        t = torch.from_numpy(snake)[None]
        for stale in (1.0, 0.5):
            with cuda_host_kernels(host_kernels, stale_reads=stale):
                for construction, filtration in CASES:
                    assert cuda_source_rows(t, construction, filtration) == cpu_rows(t, construction, filtration)
    with cuda_host_kernels(host_kernels, stale_reads=1.0), pytest.MonkeyPatch.context() as mp:
        mp.setattr(_basins, "jump_rounds", lambda n: max(1, (n - 1).bit_length()) - 1)
        with pytest.raises(RuntimeError, match="jump left nodes short of their roots"):
            cuda_source_rows(torch.from_numpy(np.arange(64.0))[None, None], "T", "sublevel", dims=(0,))


def test_outputs_are_poisoned_and_checked_only_when_asked(monkeypatch):
    # The tests run with TOPOOT_CHECK_KERNELS=1 (conftest.py); the hot path neither fills nor checks.
    assert _basins.CHECK_KERNELS
    assert bool((_basins.output((3, 4), torch.device("cpu")) == -7).all())
    with pytest.raises(RuntimeError, match="jump left entries unwritten"):
        _basins._check_written(torch.tensor([0, -7]), 0, "jump")
    monkeypatch.setattr(_basins, "CHECK_KERNELS", False)
    _basins._check_written(torch.tensor([0, -7]), 0, "jump")  # no check, no synchronisation


@pytest.mark.parametrize("cupy_14", [True, False])
def test_launches_reuse_the_module_kernels_and_stream_views(monkeypatch, cupy_14):
    # _launch against a stand-in CuPy (no GPU here): one module, one handle per kernel, one stream
    # view per torch stream, built with Stream.from_external where CuPy has it (ExternalStream is
    # deprecated in CuPy 14 and warned on every launch when built per launch).
    import contextlib
    import sys
    import types

    from topoot_gpu.persistence import _cuda

    made = {"module": 0, "function": [], "stream": [], "launch": []}

    class Context(contextlib.nullcontext):
        pass

    class Module:
        def __init__(self, code, options):
            assert "descent_f32" in code and "-std=c++17" in options
            made["module"] += 1

        def get_function(self, name):
            made["function"].append(name)
            return lambda grid, block, args: made["launch"].append((name, grid, block, len(args)))

    class Stream(Context):
        pass

    if cupy_14:
        Stream.from_external = staticmethod(lambda obj: made["stream"].append(obj.__cuda_stream__()) or Stream())
    cuda = types.SimpleNamespace(Device=lambda index: Context(), Stream=Stream)
    cuda.ExternalStream = lambda handle, device: made["stream"].append((0, handle)) or Stream()
    fake = types.SimpleNamespace(cuda=cuda, RawModule=Module, asarray=lambda t: t)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: types.SimpleNamespace(cuda_stream=77))
    for f in (_cuda._module, _cuda._kernel, _cuda._stream):
        f.cache_clear()
    try:
        device = torch.device("cuda", 0)
        for name in ("descent_f32", "descent_f32", "jump"):
            _cuda._launch(name, 1000, device, torch.zeros(3), np.int32(4))
    finally:
        for f in (_cuda._module, _cuda._kernel, _cuda._stream):
            f.cache_clear()
    assert made["module"] == 1 and made["function"] == ["descent_f32", "jump"]
    assert made["stream"] == [(0, 77)]
    assert made["launch"] == [(n, (4,), (256,), 2) for n in ("descent_f32", "descent_f32", "jump")]


SANITIZED_RUN = """
import sys, tempfile
from pathlib import Path
import numpy as np, torch
from topoot_gpu import cubical_persistence
from topoot_gpu.persistence import _cuda
from topoot_gpu.testing import build_cuda_host_kernels, cuda_host_kernels, diagram_rows, persistence_batches
source = _cuda.cuda_source()
if sys.argv[1] == "planted":  # one read past the end of w in boundary
    head = "const T* w, const i64* root, i64* saddle, int H, int W, i64 n_pixels, int conn8) {"
    assert source.count(head) == 1
    source = source.replace(head, head + " volatile T planted = w[n_pixels]; (void)planted;")
lib = build_cuda_host_kernels(Path(tempfile.mkdtemp()), sanitize=True, source=source)
with cuda_host_kernels(lib):
    for maps in persistence_batches(np.random.default_rng(int(sys.argv[2]))):
        for dtype in (torch.float64, torch.float32):
            t = torch.from_numpy(maps).to(dtype)
            for c in ("T", "V"):
                for f in ("sublevel", "superlevel"):
                    kw = dict(construction=c, filtration=f)
                    cuda = cubical_persistence(t, backend="cuda", **kw)
                    assert diagram_rows(cuda) == diagram_rows(cubical_persistence(t, backend="cpp", **kw))
print("clean")
"""


@pytest.mark.parametrize("source", ["shipped", "planted"])
def test_cuda_source_under_address_and_undefined_behaviour_sanitizers(rng, source):
    # The kernels built with -fsanitize=address,undefined and run on the persistence batches: no
    # out-of-bounds access or undefined operation; a read planted one past the end is caught.
    import os
    import subprocess
    import sys
    import tempfile

    from topoot_gpu.testing import asan_runtime

    runtime = asan_runtime()
    if runtime is None:
        pytest.skip("the C++ compiler has no AddressSanitizer runtime")
    env = {**os.environ, "LD_PRELOAD": runtime, "ASAN_OPTIONS": "detect_leaks=0", "UBSAN_OPTIONS": "print_stacktrace=1"}
    seed = str(int(rng.integers(0, 2**31)))
    run = subprocess.run(
        [sys.executable, "-c", SANITIZED_RUN, source, seed], capture_output=True, text=True, env=env, timeout=600,
        cwd=tempfile.gettempdir(),
    )  # fmt: skip
    if source == "shipped":
        assert run.returncode == 0 and "clean" in run.stdout, run.stderr[-3000:]
    else:
        assert run.returncode != 0 and "AddressSanitizer: heap-buffer-overflow" in run.stderr, run.stderr[-3000:]
