"""What tests and benchmarks share: devices, dtypes, generators of maps and transport problems, the
persistence cases, and the CUDA kernels' host emulation.

Generators take a ``numpy.random.Generator`` so that every caller controls (and can print)
its seed.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from .core import backends
from .persistence import _cuda
from .persistence.diagrams import Diagrams

#: Devices the tests run on here: the CPU, and the GPU when there is one.
devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

#: Input dtypes every entry point accepts.
numpy_float_dtypes = [np.float16, np.float32, np.float64]
torch_float_dtypes = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of the last two axes with reflected borders (numpy only)."""
    radius = max(1, int(round(3 * sigma)))
    t = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    for axis in (-2, -1):
        pad = [(0, 0)] * x.ndim
        pad[axis] = (radius, radius)
        xp = np.pad(x, pad, mode="reflect" if x.shape[axis] > radius else "edge")
        x = sum(w * np.take(xp, np.arange(i, i + x.shape[axis]), axis=axis) for i, w in enumerate(k))
    return x


def smooth_maps(rng: np.random.Generator, batch: int, height: int, width: int, *, sigma: float = 4.0) -> np.ndarray:
    """Gaussian-blurred uniform noise, float64 ``[batch, height, width]``."""
    return _blur(rng.random((batch, height, width)), sigma)


def blob_maps(rng: np.random.Generator, batch: int, height: int, width: int, *, max_blobs: int = 3) -> np.ndarray:
    """Anomaly-like maps: one to ``max_blobs`` Gaussian blobs (some touching the border) on smooth noise."""
    ii, jj = np.mgrid[0:height, 0:width]
    out = 0.3 * smooth_maps(rng, batch, height, width, sigma=max(1.0, min(height, width) / 16))
    for b in range(batch):
        for _ in range(rng.integers(1, max_blobs + 1)):
            ci, cj = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
            s = rng.uniform(0.03, 0.15) * min(height, width) + 0.5
            out[b] += rng.uniform(0.5, 1.0) * np.exp(-((ii - ci) ** 2 + (jj - cj) ** 2) / (2 * s * s))
    return out


def tied_maps(rng: np.random.Generator, batch: int, height: int, width: int, *, levels: int = 4) -> np.ndarray:
    """Integer-valued maps with heavy ties and plateaus (values in ``0 .. levels - 1``)."""
    coarse = rng.integers(0, levels, (batch, (height + 2) // 3, (width + 2) // 3))
    plateaus = np.repeat(np.repeat(coarse, 3, axis=1), 3, axis=2)[:, :height, :width]
    noisy = rng.integers(0, levels, (batch, height, width))
    return np.where(rng.random((batch, height, width)) < 0.5, plateaus, noisy).astype(np.float64)


def quantised_maps(rng: np.random.Generator, batch: int, height: int, width: int, *, levels: int = 1000) -> np.ndarray:
    """Smooth maps quantised to ``levels`` values in [0, 1] (many ties, as in TopoOT's level maps)."""
    m = smooth_maps(rng, batch, height, width, sigma=2.0)
    lo = m.min(axis=(1, 2), keepdims=True)
    hi = m.max(axis=(1, 2), keepdims=True)
    m = (m - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.round(m * (levels - 1)) / (levels - 1)


def ring_maps(rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
    """An island inside a hole inside a bright ring, on smooth noise: nested H0 and H1 structure."""
    ii, jj = np.mgrid[0:height, 0:width]
    out = 0.2 * smooth_maps(rng, batch, height, width, sigma=max(1.0, min(height, width) / 12))
    for b in range(batch):
        ci, cj = rng.uniform(0.3, 0.7) * height, rng.uniform(0.3, 0.7) * width
        r = np.hypot(ii - ci, jj - cj) / (min(height, width) / 2)
        R = rng.uniform(0.4, 0.7)
        out[b] += np.exp(-(((r - R) / 0.08) ** 2)) + rng.uniform(0.3, 0.8) * np.exp(-((r / 0.12) ** 2))
    return out


def scratch_maps(rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
    """Thin bright line segments (one or two pixels wide) on smooth noise."""
    out = 0.3 * smooth_maps(rng, batch, height, width, sigma=max(1.0, min(height, width) / 16))
    for b in range(batch):
        for _ in range(rng.integers(1, 3)):
            i0, j0 = rng.integers(0, height), rng.integers(0, width)
            angle = rng.uniform(0, np.pi)
            length = rng.integers(max(2, min(height, width) // 4), max(3, min(height, width)))
            t = np.arange(length)
            i = np.clip(np.round(i0 + t * np.sin(angle)).astype(int), 0, height - 1)
            j = np.clip(np.round(j0 + t * np.cos(angle)).astype(int), 0, width - 1)
            out[b, i, j] += rng.uniform(0.6, 1.0)
    return out


def noise_maps(rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
    """Uniform noise: a minimum or saddle at about every fifth pixel."""
    return rng.random((batch, height, width))


def subnormal_maps(rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
    """Tiny values with ties: multiples of 1e-40 (float32 subnormals), of 1e-310 (float64 subnormals,
    zero in float32) and signed zeros. Code that flushes subnormals to zero (CUDA's ``-ftz``, x86
    DAZ) or tells -0.0 from +0.0 gets their order wrong."""
    shape = (batch, height, width)
    f32 = rng.integers(-20, 21, shape) * 1e-40
    f64 = rng.integers(-5, 6, shape) * 1e-310
    out = np.where(rng.random(shape) < 0.7, f32, f64)
    return np.where(rng.random(shape) < 0.1, -0.0, out)


def spread_tie_maps(rng: np.random.Generator, batch: int, height: int, width: int, *, levels: int = 3) -> np.ndarray:
    """Ties only between pixels that are not neighbours: a pixel's value is its class in a 3x3
    colouring (``(i % 3, j % 3)`` permuted; the nine pixels of any 3x3 window differ) plus 9 times
    a random level in ``0 .. levels - 1``. Without adjacent ties the C++ core sorts the saddles once
    for both passes, and saddles of equal value must still come in each pass's own order."""
    i, j = np.indices((height, width))
    colour = rng.permutation(9)[(i % 3) * 3 + j % 3]
    return (colour + 9 * rng.integers(0, levels, (batch, height, width))).astype(np.float64)


def close_value_maps(rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
    """Noise on 0.5 at scales 1e-12 .. 3e-8: float64 values that agree in their sign, exponent and
    top 20 mantissa bits in long runs (1e-12) or short ones (3e-8), which the C++ core's saddle
    sort orders by their top 32 key bits first and the rest after."""
    scale = 10.0 ** rng.uniform(-12, np.log10(3e-8), (batch, 1, 1))
    return 0.5 + scale * rng.random((batch, height, width))


#: Every kind of map the persistence parity tests run on, by name: ``f(rng, batch, height, width)``.
persistence_map_kinds = {
    "noise": noise_maps,
    "smooth": smooth_maps,
    "blobs": blob_maps,
    "ties": tied_maps,
    "binary": lambda rng, b, h, w: tied_maps(rng, b, h, w, levels=2),
    "quantised1000": quantised_maps,
    "spread_ties": spread_tie_maps,
    "close_values": close_value_maps,
    "subnormal": subnormal_maps,
}

#: Map shapes of the persistence parity tests: single pixels, lines, odd and square sizes.
persistence_shapes = [(1, 1), (1, 9), (9, 1), (2, 2), (3, 7), (17, 5), (32, 32), (41, 64)]


#: Every construction and filtration of cubical persistence.
persistence_cases = [(c, f) for c in ("T", "V") for f in ("sublevel", "superlevel")]


#: Maps in :func:`write_map_archive`'s folder: a count no batch size or rank count used divides.
ARCHIVE_MAPS = 23


def write_map_archive(folder: Path, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A folder of :data:`ARCHIVE_MAPS` maps as ``refine_files`` reads them: 19 single ``.npy`` maps
    of two shapes, one ``[2, H, W]`` ``.npy``, one ``.npz`` of two arrays, and a corrupt
    ``corrupt.npy``. Returns each map by the output name it gets."""
    folder.mkdir(parents=True, exist_ok=True)
    big = np.concatenate([blob_maps(rng, 12, 20, 18), ring_maps(rng, 11, 20, 18)])
    small = blob_maps(rng, 4, 14, 15)
    maps = {}
    for k in range(15):
        np.save(folder / f"m{k:02d}.npy", big[k])
        maps[f"m{k:02d}"] = big[k]
    for k in range(4):
        np.save(folder / f"s{k}.npy", small[k])
        maps[f"s{k}"] = small[k]
    np.save(folder / "pair.npy", big[15:17])
    maps |= {"pair_0": big[15], "pair_1": big[16]}
    np.savez(folder / "z.npz", a=big[17], b=big[18])
    maps |= {"z_a": big[17], "z_b": big[18]}
    (folder / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    assert len(maps) == ARCHIVE_MAPS
    return maps


def written_masks(out: Path) -> dict[str, np.ndarray]:
    """The masks in an output folder by name; every ``.npy`` mask has its ``.png``."""
    masks = {p.name[: -len("_mask.npy")]: np.load(p) for p in out.glob("*_mask.npy")}
    pngs = {p.name[: -len("_mask.png")] for p in out.glob("*_mask.png")}
    assert set(masks) == pngs, "a mask without its .png or the other way round"
    return masks


def manifest_entries(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def check_archive_outputs(out: Path, expected: dict[str, np.ndarray], *, done: int, skipped: int = 0) -> list[dict]:
    """Assert that ``out`` holds exactly the ``expected`` masks of :func:`write_map_archive`'s folder
    and a manifest with one entry per map and one for the corrupt file, ``done`` and ``skipped`` of
    them so, nothing twice, no temporary file left. Returns the entries."""
    written = written_masks(out)
    assert set(written) == set(expected)
    for name, mask in expected.items():
        assert np.array_equal(written[name], mask), name
    entries = manifest_entries(out)
    assert len(entries) == ARCHIVE_MAPS + 1
    assert len({(e["input"], e["name"]) for e in entries}) == ARCHIVE_MAPS + 1, "an entry twice"
    assert sum(e["status"] == "done" for e in entries) == done
    assert sum(e["status"] == "skipped" for e in entries) == skipped
    (bad,) = [e for e in entries if e["status"] == "failed"]
    assert bad["input"].endswith("corrupt.npy") and bad["name"] is None and bad["error"]
    assert not list(out.glob(".*.tmp"))
    return entries


def diagram_rows(d: Diagrams) -> list[tuple]:
    """Every pair as (image, dim, birth, death, birth pixel, death pixel), sorted: two backends agree
    exactly when these lists are equal."""
    fields = (d.image, d.dim, d.birth, d.death, d.birth_pixel, d.death_pixel)
    return sorted(zip(*(f.tolist() for f in fields)))


def persistence_batches(rng: np.random.Generator) -> list[np.ndarray]:
    """Small batches of every kind the GPU backends are checked on: noise, ties and plateaus,
    quantised, structured, smooth, constant, 1 x N, N x 1 and a single pixel."""
    h, w = (int(x) for x in rng.integers(5, 24, size=2))
    return [
        rng.random((3, h, w)),  # raw noise: many minima and saddles
        tied_maps(rng, 3, h, w, levels=int(rng.integers(2, 5))),  # ties and plateaus
        quantised_maps(rng, 2, h, w, levels=int(rng.integers(3, 30))),
        np.concatenate([blob_maps(rng, 1, h, w), ring_maps(rng, 1, h, w), scratch_maps(rng, 1, h, w)]),
        smooth_maps(rng, 2, h, w, sigma=1.5),
        np.full((2, h, w), rng.normal()),  # constant
        rng.random((2, 1, int(rng.integers(1, 30)))),  # 1 x N
        rng.random((2, int(rng.integers(1, 30)), 1)),  # N x 1
        rng.random((1, 1, 1)),
    ]


def mebin_batches(rng: np.random.Generator, *, size: tuple[int, int] = (12, 48)) -> list[np.ndarray]:
    """float32 ``[B, H, W]`` batches for MEBin (sides drawn in ``size``): anomaly-like blobs, scratches
    and rings, ties and quantised plateaus, smooth noise, a constant image among others, a constant
    batch, batches whose images all peak at one value, and thin shapes."""
    h, w = (int(x) for x in rng.integers(size[0], size[1] + 1, size=2))
    blobs = blob_maps(rng, 3, h, w)
    same_peak = blobs / blobs.max(axis=(1, 2), keepdims=True)  # every peak 1: the range falls back to the minimum
    batches = [
        blobs,
        np.concatenate([scratch_maps(rng, 1, h, w), ring_maps(rng, 1, h, w), blob_maps(rng, 1, h, w, max_blobs=6)]),
        tied_maps(rng, 2, h, w, levels=int(rng.integers(2, 6))),
        quantised_maps(rng, 2, h, w, levels=int(rng.integers(4, 40))),
        smooth_maps(rng, 2, h, w, sigma=2.0),
        np.concatenate([blob_maps(rng, 1, h, w), np.full((1, h, w), 0.25)]),  # a constant image in a batch
        np.full((2, h, w), rng.normal()),  # a constant batch
        same_peak,
        blob_maps(rng, 2, 1, int(rng.integers(1, 40))),  # 1 x N
        blob_maps(rng, 1, int(rng.integers(1, 9)), int(rng.integers(1, 9))),  # tiny, smaller than the kernel
    ]
    return [b.astype(np.float32) for b in batches]


def write_folder_dataset(root: Path, rng: np.random.Generator, *, size: int = 64, train: int = 8, good: int = 3,
                         bad: int = 3) -> None:
    """A small image dataset in the MVTec AD layout, generated (no download): RGB PNG images in
    ``train/good``, ``test/good`` and ``test/bad`` (a bright square on each ``bad`` image) and their masks
    ``ground_truth/bad/NNN_mask.png`` (0/255)."""
    from PIL import Image

    def image(anomalous: bool) -> tuple[np.ndarray, np.ndarray]:
        x = (100 + 40 * rng.random((size, size, 3))).astype(np.uint8)
        m = np.zeros((size, size), np.uint8)
        if anomalous:
            h = max(2, size // 12)
            i, j = rng.integers(h, size - h, 2)
            x[i - h : i + h, j - h : j + h] = 250
            m[i - h : i + h, j - h : j + h] = 255
        return x, m

    for sub in ("train/good", "test/good", "test/bad", "ground_truth/bad"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for k in range(train):
        Image.fromarray(image(False)[0]).save(root / "train" / "good" / f"{k:03d}.png")
    for k in range(good):
        Image.fromarray(image(False)[0]).save(root / "test" / "good" / f"{k:03d}.png")
    for k in range(bad):
        x, m = image(True)
        Image.fromarray(x).save(root / "test" / "bad" / f"{k:03d}.png")
        Image.fromarray(m).save(root / "ground_truth" / "bad" / f"{k:03d}_mask.png")


def write_eval_layout(maps_dir: Path, gt_dir: Path, rng: np.random.Generator, *, size: int, per_defect: int,
                      normal: int, quantiles: tuple[float, float] = (0.9, 0.99),
                      png_last: bool = False) -> dict[tuple[str, str], np.ndarray]:  # fmt: skip
    """Saved anomaly maps and their masks in the MVTec AD layout, as ``topoot eval`` reads them: for the
    defects ``crack`` and ``hole``, ``per_defect`` anomaly-like ``size x size`` maps (blobs) saved at half
    resolution (``maps_dir/<defect>/NNN.npy``; with ``png_last``, the last ``hole`` map as an 8-bit
    ``.png``), each mask the map's top few percent (a quantile drawn in ``quantiles``) at full resolution
    (``gt_dir/<defect>/NNN_mask.png``), and ``normal`` smooth maps in ``maps_dir/good``. Returns the masks
    by ``(defect, name)``."""
    from PIL import Image

    truth = {}
    for defect in ("crack", "hole"):
        (maps_dir / defect).mkdir(parents=True, exist_ok=True)
        (gt_dir / defect).mkdir(parents=True, exist_ok=True)
        for k in range(per_defect):
            m = blob_maps(rng, 1, size, size)[0]
            gt = m > np.quantile(m, rng.uniform(*quantiles))
            if png_last and defect == "hole" and k == per_defect - 1:
                small = (255 * (m[::2, ::2] - m.min()) / np.ptp(m)).astype(np.uint8)
                Image.fromarray(small).save(maps_dir / defect / f"{k:03d}.png")
            else:
                np.save(maps_dir / defect / f"{k:03d}.npy", m[::2, ::2].astype(np.float32))
            Image.fromarray((255 * gt).astype(np.uint8)).save(gt_dir / defect / f"{k:03d}_mask.png")
            truth[(defect, f"{k:03d}")] = gt
    (maps_dir / "good").mkdir(parents=True, exist_ok=True)
    for k in range(normal):
        m = 0.3 * smooth_maps(rng, 1, size // 2, size // 2)[0]
        np.save(maps_dir / "good" / f"{k:03d}.npy", m.astype(np.float32))
    return truth


def transport_problem(rng: np.random.Generator, n: int, m: int, *, cost: str = "random"):
    """One problem ``(a, b, M)`` (numpy float64, weights summing to one): random costs, or
    ``cost="diagram"``: normalised distances between two random diagrams, as TopoOT builds them."""
    a = rng.random(n) + 0.05
    b = rng.random(m) + 0.05
    if cost == "diagram":
        from .transport.padded import diagram_costs

        M, _, _ = diagram_costs([np.sort(rng.random((n, 2)), 1)], [np.sort(rng.random((m, 2)), 1)])
        M = M[0].numpy()
    else:
        M = rng.random((n, m)) * rng.uniform(0.2, 1.0)
    return a / a.sum(), b / b.sum(), M


def pad_problems(problems, dtype: torch.dtype = torch.float64, pad_to: tuple[int, int] | None = None):
    """Ragged problems -> padded ``a [B, N], b [B, Mx], M [B, N, Mx]`` (padding weight 0, and junk
    padding costs, which must not matter)."""
    N = pad_to[0] if pad_to else max(len(p[0]) for p in problems)
    Mx = pad_to[1] if pad_to else max(len(p[1]) for p in problems)
    B = len(problems)
    a = torch.zeros(B, N, dtype=torch.float64)
    b = torch.zeros(B, Mx, dtype=torch.float64)
    M = torch.full((B, N, Mx), 7.5, dtype=torch.float64)
    for k, (ak, bk, Mk) in enumerate(problems):
        a[k, : len(ak)] = torch.from_numpy(ak)
        b[k, : len(bk)] = torch.from_numpy(bk)
        M[k, : len(ak), : len(bk)] = torch.from_numpy(Mk)
    return a.to(dtype), b.to(dtype), M.to(dtype)


# --- The CUDA kernels on the host ------------------------------------------------------------


SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer", "-g"]


def build_cuda_host_kernels(
    directory: Path, *, sanitize: bool = False, source: str | None = None
) -> ctypes.CDLL | None:
    """Compile ``csrc/cuda/host_emulation.cpp`` around the packaged ``persistence_cuda.cu`` (or
    ``source``) into ``directory``; None if there is no C++ compiler. ``sanitize``: with
    AddressSanitizer and UndefinedBehaviorSanitizer (every out-of-bounds access or undefined
    operation of a kernel ends the process with a report); the process must then have the ASan
    runtime preloaded (:func:`asan_runtime`)."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return None
    (directory / "persistence_cuda.cu").write_text(_cuda.cuda_source() if source is None else source)
    src = directory / "host_emulation.cpp"
    src.write_text(_cuda.cuda_source("host_emulation.cpp"))
    lib = directory / "cuda_host.so"
    cmd = [compiler, "-std=c++17", "-O2", "-shared", "-fPIC", "-Wall", "-Werror", f"-I{directory}", str(src)]
    cmd += SANITIZE_FLAGS if sanitize else []
    subprocess.run([*cmd, "-o", str(lib)], check=True, capture_output=True, text=True)
    return ctypes.CDLL(str(lib))


def asan_runtime() -> str | None:
    """The C++ compiler's AddressSanitizer runtime (to ``LD_PRELOAD`` into a process that loads a
    sanitized build), or None where there is none."""
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        return None
    path = subprocess.run([compiler, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if path and Path(path).is_file() else None


def host_launcher(lib: ctypes.CDLL, launched: list[str] | None = None, stale_reads: float = 0.0):
    """A stand-in for ``persistence._cuda._launch`` on CPU tensors: the same grid and block, every
    launch's threads run in a shuffled order (a fresh seed per launch); names appended to
    ``launched`` (a round of ``jump`` after one that changed nothing as ``"jump (idle)"``).
    ``stale_reads``: the probability that a thread of ``jump`` reads the parents as they were
    before the launch (the in-place race of the GPU; 1.0 is synchronous pointer doubling)."""
    seeds = itertools.count(1)

    def launch(name: str, n: int, device: torch.device, *args) -> None:
        if device.type != "cpu":
            raise ValueError(f"{name}: the host emulation runs on CPU tensors, got {device}")
        block = _cuda.BLOCK
        grid = (n + block - 1) // block
        c_args = []
        for a in args:
            if isinstance(a, torch.Tensor):
                if not a.is_contiguous():
                    raise ValueError(f"{name}: a kernel argument is not contiguous")
                c_args.append(ctypes.c_void_p(a.data_ptr()))
            elif isinstance(a, np.int32):
                c_args.append(ctypes.c_int32(int(a)))
            elif isinstance(a, np.int64):
                c_args.append(ctypes.c_int64(int(a)))
            else:
                raise TypeError(f"{name}: argument of type {type(a)} would not reach the kernel as declared")
        head = [ctypes.c_uint(grid), ctypes.c_uint(block), ctypes.c_uint64(next(seeds))]
        if name == "jump" and not args[-1].numpy()[0]:  # read as the GPU does, without a host sync
            name = "jump (idle)"
        if name == "jump" and stale_reads:
            lib.run_jump_stale(*head, ctypes.c_double(stale_reads), *c_args)
        else:
            getattr(lib, f"run_{name.split()[0]}")(*head, *c_args)
        if launched is not None:
            launched.append(name)

    return launch


@contextlib.contextmanager
def cuda_host_kernels(
    lib: ctypes.CDLL | None = None, launched: list[str] | None = None, stale_reads: float = 0.0
) -> Iterator[ctypes.CDLL]:
    """Run the ``"cuda"`` persistence backend's kernels on the host while inside: its launches go to
    the source compiled for the host (``lib``, or one built in a temporary folder) and it takes CPU
    tensors; ``launched`` and ``stale_reads`` as in :func:`host_launcher`. Everything is restored on
    exit. Raises ``RuntimeError`` without a C++ compiler."""
    with contextlib.ExitStack() as stack:
        if lib is None:
            lib = build_cuda_host_kernels(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            if lib is None:
                raise RuntimeError("no C++ compiler (c++ or g++) to build the CUDA kernels for the host")
        saved = _cuda._launch
        _cuda._launch = host_launcher(lib, launched, stale_reads)
        backends.HOST_EMULATED.add("cuda")
        try:
            yield lib
        finally:
            _cuda._launch = saved
            backends.HOST_EMULATED.discard("cuda")


# --- Host synchronisations of the device paths --------------------------------------------------

# The aten ops that wait for the device: a scalar read, a size only the data knows, a copy to the
# host. repeat_interleave waits unless told its output size; indexing waits on a bool mask.
_SIZE_OPS = {"nonzero", "_unique", "_unique2", "unique_dim", "unique_consecutive", "masked_select"}


def _waits(name: str, args: tuple, kwargs: dict) -> bool:
    if name in _SIZE_OPS or name == "_local_scalar_dense":
        return True
    if name == "repeat_interleave":
        return kwargs.get("output_size") is None
    if name in ("index", "index_put", "index_put_"):
        indices = args[1] if len(args) > 1 else ()
        return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices)
    if name == "_to_copy":
        device = kwargs.get("device")
        return device is not None and torch.device(device).type == "cpu"
    return False


def _asking_module() -> str:
    """The innermost ``topoot_gpu`` module on the stack (not this one, nor ``core.host``: a read is
    the caller's)."""
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("topoot_gpu") and module not in (__name__, "topoot_gpu.core.host"):
            return module
        frame = frame.f_back
    return "?"


class _SyncCounter(TorchDispatchMode):
    def __init__(self, events: list[tuple[str, str]]) -> None:
        super().__init__()
        self.events = events

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if _waits(name, args, kwargs):
            self.events.append((name, _asking_module()))
        return func(*args, **kwargs)


@contextlib.contextmanager
def count_host_syncs() -> Iterator[list[tuple[str, str]]]:
    """Record every op that would make the host wait for a GPU, on any device (a CUDA-free stand-in
    for ``torch.cuda.set_sync_debug_mode``): ``(op, module)`` per event, the module being the
    innermost ``topoot_gpu`` module that asked. Counts scalar reads (``item``, ``bool``, ``int``),
    data-sized results (``nonzero``, ``unique``, ``masked_select``, bool-mask indexing,
    ``repeat_interleave`` without ``output_size``) and copies to the CPU
    (:func:`topoot_gpu.core.host.to_host`). ``.numpy()`` and ``.tolist()`` on CPU tensors are
    invisible to it: ``tests/test_device_path.py`` checks the device paths' source for them."""
    events: list[tuple[str, str]] = []
    with _SyncCounter(events):
        yield events


# --- Triton kernels compiled ahead of time for the GPU machine's architecture --------------------

_HOPPER_COMPILE = """
import json, re, subprocess, sys, tempfile, time
from importlib import import_module
from pathlib import Path
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
module, name, signature, constexprs, num_warps = json.loads(sys.argv[1])
kernel = getattr(import_module(module), name)
start = time.perf_counter()
src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
seconds = time.perf_counter() - start
cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
with tempfile.TemporaryDirectory() as d:
    cubin = Path(d) / "k.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    usage = subprocess.run([str(cuobjdump), "-res-usage", str(cubin)], capture_output=True, text=True, check=True)
regs, stack = re.search(r"REG:(\\d+) STACK:(\\d+)", usage.stdout).groups()
print(json.dumps([int(regs), int(stack), seconds]))
"""


def compile_for_hopper(
    module: str, kernel: str, signature: dict[str, str], constexprs: dict, num_warps: int = 4
) -> tuple[int, int, float]:
    """Compile the Triton kernel ``module.kernel`` ahead of time for sm_90 (the H200 machine's
    architecture; no GPU needed) with Triton's own ``cuobjdump`` reading the cubin: ``(registers,
    stack bytes, seconds)``; stack above 0 means spills. Runs in a process of its own, outside the
    interpreter (under ``TRITON_INTERPRET=1`` the kernels cannot be compiled) and the Triton cache."""
    import json
    import os
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory() as cache:
        env["TRITON_CACHE_DIR"] = cache
        run = subprocess.run(
            [sys.executable, "-c", _HOPPER_COMPILE, json.dumps([module, kernel, signature, constexprs, num_warps])],
            capture_output=True, text=True, env=env, timeout=900, cwd=cache,  # not a checkout: the installed package
        )  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"{module}.{kernel} did not compile for sm_90:\n{run.stderr[-3000:]}")
    regs, stack, seconds = json.loads(run.stdout)
    return regs, stack, seconds
