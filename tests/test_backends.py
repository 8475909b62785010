"""The backend table (``topoot_gpu.core.backends``): one rule for a backend that does not take the
inputs' device (a ValueError naming both, at every entry point), the deprecated ``"cpu"`` alias,
``"auto"``'s choices, every declared entry present, and the op's defaults read from the configs."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import topoot_gpu
from topoot_gpu import (
    HeadConfig,
    SelectionConfig,
    best_stability,
    cubical_persistence,
    pseudo_labels,
    refine,
    sinkhorn,
    train_heads,
)
from topoot_gpu.core import backends
from topoot_gpu.testing import blob_maps, pad_problems, transport_problem

META = torch.device("meta")  # a device no backend takes: the mismatch rule without a GPU


def test_every_declared_backend_and_entry_exists():
    for kernel, spec in backends.KERNELS.items():
        assert set(spec.auto.values()) <= set(spec.backends), kernel
        for name, backend in spec.backends.items():
            assert importlib.util.find_spec(backend.module) is not None, (kernel, name)
            if name == "cpp":
                for entry in backend.entries.values():
                    assert callable(getattr(topoot_gpu._C, entry)), (kernel, entry)
    # Every backend module that imports here has the kernel's function under the kernel's name.
    for kernel, spec in backends.KERNELS.items():
        for name in spec.backends:
            try:
                module = backends.load(kernel, name)
            except ImportError:
                continue
            assert callable(getattr(module, kernel)), (kernel, name)


def test_auto_picks_per_device_and_runs_on_the_host_only_where_the_table_says():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for kernel in backends.KERNELS:
        assert backends.resolve(kernel, "auto", cpu) == ("cpp", cpu)
    # Until the GPU backends have passed on hardware, persistence and the selection's transport
    # run on a host copy of CUDA inputs; the solver and the head stay on the device.
    assert backends.resolve("cubical_persistence", "auto", cuda) == ("cpp", cpu)
    assert backends.resolve("best_stability", "auto", cuda) == ("cpp", cpu)
    assert backends.resolve("sinkhorn", "auto", cuda) == ("torch", cuda)
    assert backends.resolve("train_heads", "auto", cuda) == ("torch", cuda)
    with pytest.raises(ValueError, match="backend: no backend of sinkhorn runs on meta"):
        backends.resolve("sinkhorn", "auto", META)


def test_a_backend_on_the_wrong_device_is_an_error_naming_both(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    maps = np.random.default_rng(0).random((2, 6, 7))
    with pytest.raises(ValueError, match=r"backend: 'cpp' runs on cpu tensors, the inputs are on meta"):
        cubical_persistence(torch.zeros(2, 6, 7, device=META), backend="cpp")
    with pytest.raises(ValueError, match=r"backend: 'cuda' runs on cuda tensors, the inputs are on cpu"):
        cubical_persistence(maps, backend="cuda")
    with pytest.raises(ValueError, match=r"backend: 'triton' runs on cuda tensors .*TRITON_INTERPRET.*on cpu"):
        cubical_persistence(maps, backend="triton")
    with pytest.raises(ValueError, match=r"backend: 'reference' runs on cpu tensors, the inputs are on meta"):
        cubical_persistence(torch.zeros(2, 6, 7, device=META), backend="reference")
    a, b, M = (x.to(META) for x in pad_problems([transport_problem(np.random.default_rng(1), 3, 4)]))
    for name in ("cpp", "reference"):
        with pytest.raises(ValueError, match=f"backend: '{name}' runs on cpu tensors, the inputs are on meta"):
            sinkhorn(a, b, M, reg=0.3, backend=name)
    with pytest.raises(ValueError, match=r"backend: 'cpp' runs on cpu tensors, the inputs are on meta"):
        P, sizes = torch.zeros(2, 2, device=META), torch.tensor([2], device=META)
        best_stability(P, sizes, P, sizes, reg=0.3, backend="cpp")
    with pytest.raises(ValueError, match=r"backend: 'cpp' runs on cpu tensors, the inputs are on meta"):
        train_heads(torch.zeros(1, 3, 4, 4, device=META), torch.zeros(1, 4, 4, dtype=torch.bool, device=META),
                    backend="cpp")  # fmt: skip
    # The pipeline names the argument that picked the backend.
    with pytest.raises(ValueError, match=r"persistence_backend: 'cuda' runs on cuda tensors, the inputs are on cp"):
        pseudo_labels(maps, persistence_backend="cuda")
    with pytest.raises(ValueError, match=r"transport_backend: 'triton' runs on cuda tensors"):
        pseudo_labels(maps, transport_backend="triton")
    with pytest.raises(ValueError, match=r"persistence_backend: 'triton' runs on cuda tensors"):
        refine(maps, persistence_backend="triton")
    with pytest.raises(ValueError, match=r"head_backend: expected one of"):
        refine(maps, head_backend="cuda")


def test_the_old_cpu_name_still_works_with_a_warning(rng):
    maps = blob_maps(rng, 2, 14, 12)
    with pytest.warns(FutureWarning, match="backend='cpu' is deprecated.*'cpp'"):
        old = cubical_persistence(maps, backend="cpu")
    new = cubical_persistence(maps, backend="cpp")
    assert all(np.array_equal(getattr(old, f), getattr(new, f)) for f in ("image", "dim", "birth", "death"))
    a, b, M = pad_problems([transport_problem(rng, 5, 6)])
    with pytest.warns(FutureWarning, match="cpp"):
        assert torch.equal(sinkhorn(a, b, M, reg=0.3, backend="cpu").plan, sinkhorn(a, b, M, reg=0.3).plan)
    labels = torch.zeros(1, 8, 8, dtype=torch.bool)
    labels[0, 2:5, 3:6] = True
    features = torch.from_numpy(rng.normal(size=(1, 3, 8, 8))).float()
    with pytest.warns(FutureWarning, match="cpp"):
        assert torch.equal(train_heads(features, labels, backend="cpu"), train_heads(features, labels, backend="cpp"))
    with pytest.warns(FutureWarning, match="transport_backend='cpu'"):
        pseudo_labels(maps, transport_backend="cpu")


def test_the_op_reads_its_defaults_from_the_configs():
    schema = torch.ops.topoot.refine.default._schema
    defaults = {a.name: a.default_value for a in schema.arguments if a.has_default_value()}
    selection, head = SelectionConfig(), HeadConfig()
    assert defaults == {
        "seed": 0,
        "levels": None,  # None: SelectionConfig().levels
        "reg": selection.reg,
        "top_m": selection.top_m,
        "delta_sub": selection.delta_sub,
        "delta_sup": selection.delta_sup,
        "epochs": head.epochs,
        "lr": head.lr,
    }
