"""Fresh random inputs on every run; the seed of a failing test is printed with its report.

Set ``TOPOOT_TEST_SEED`` to replay a run. Without a GPU, Triton runs its kernels under its
interpreter (``TRITON_INTERPRET=1``, which must be set before Triton is first imported), so the
Triton backends are tested on every run; the GPU persistence kernels' outputs are checked for
unwritten entries (``TOPOOT_CHECK_KERNELS=1``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os

import numpy as np
import pytest
import torch

# tests/test_anomalib.py needs anomalib, which lives in a venv of its own (make test-anomalib): a venv
# without it does not collect the file (no skip to read), the anomalib venv runs nothing else.
collect_ignore = [] if importlib.util.find_spec("anomalib") else ["test_anomalib.py"]

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# The GPU persistence kernels' outputs poisoned and checked for unwritten entries (off by default:
# each check synchronises the device). Read when topoot_gpu is imported, after this file.
os.environ.setdefault("TOPOOT_CHECK_KERNELS", "1")


@pytest.fixture
def rng(request) -> np.random.Generator:
    env = os.environ.get("TOPOOT_TEST_SEED")
    seed = int(env) if env else int(np.random.SeedSequence().entropy % (2**63))
    request.node.topoot_seed = seed
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "topoot_seed", None)
    if report.failed and seed is not None:
        report.sections.append(("random seed", f"replay with TOPOOT_TEST_SEED={seed}"))


@pytest.fixture(scope="session")
def cuda_host_lib(tmp_path_factory):
    """The CUDA kernels' source compiled for the host (``topoot_gpu.testing``), built once."""
    from topoot_gpu.testing import build_cuda_host_kernels

    lib = build_cuda_host_kernels(tmp_path_factory.mktemp("cuda_host"))
    if lib is None:  # CI builds the package's C++ with one, so this skip never happens there
        pytest.skip("no C++ compiler to build the host emulation of the CUDA kernels")
    return lib


@pytest.fixture
def use_backend(request):
    """``use_backend(name)`` makes a backend run here and returns its name: Triton under its
    interpreter (CI installs Triton, so a missing one fails there instead of skipping), and without
    a GPU the ``"cuda"`` backend's kernels compiled for the host until the test ends."""
    from topoot_gpu.testing import cuda_host_kernels

    with contextlib.ExitStack() as stack:

        def use(name: str) -> str:
            if name == "triton":
                if os.environ.get("CI"):
                    import triton  # noqa: F401
                else:
                    pytest.importorskip("triton")
            if name == "cuda" and not torch.cuda.is_available():
                stack.enter_context(cuda_host_kernels(request.getfixturevalue("cuda_host_lib")))
            return name

        yield use


@pytest.fixture
def archive(tmp_path, rng):
    """``(folder, expected)``: a folder of generated maps (``topoot_gpu.testing.write_map_archive``)
    and the mask ``refine`` gives each (seed 5), by output name."""
    from topoot_gpu import refine
    from topoot_gpu.testing import write_map_archive

    folder = tmp_path / "maps"
    maps = write_map_archive(folder, rng)
    expected = {}
    for shape in {m.shape for m in maps.values()}:
        names = [n for n, m in maps.items() if m.shape == shape]
        masks = refine(np.stack([maps[n] for n in names]), seed=5).mask
        expected |= {n: masks[j] for j, n in enumerate(names)}
    return folder, expected
