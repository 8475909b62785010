"""topoot_gpu.anomalib and topoot_gpu.mebin_thresholds against the real anomalib (2.7.0).

anomalib needs torchvision, which does not import beside the CPU ``torch==2.13.0`` of the main venv,
so these tests run in a venv of their own (``make test-anomalib``: torch 2.14.1, torchvision 0.29.1,
anomalib 2.7.0; part of ``make test``); a venv without anomalib does not collect this file
(tests/conftest.py). No
weights and no data are downloaded: the model is a PatchCore on an untrained ResNet-18, fitted on
a generated ``Folder`` dataset of PNG images and masks.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from anomalib.data import Folder, ImageBatch, InferenceBatch
from anomalib.engine import Engine
from anomalib.models import Patchcore
from anomalib.post_processing import MEBinPostProcessor, PostProcessor
from anomalib.post_processing.mebin import mebin_binarize
from kornia.contrib import connected_components

from topoot_gpu import mebin_counts, mebin_thresholds, refine
from topoot_gpu.anomalib import PersistenceMEBinPostProcessor, TopoOTPostProcessor
from topoot_gpu.testing import devices, mebin_batches, write_folder_dataset

pytestmark = pytest.mark.anomalib


@pytest.mark.parametrize("device", devices)
def test_mebin_equals_anomalibs(rng, device):
    """Identical masks and thresholds to anomalib's ``mebin_binarize`` (kornia labelling, 1000 rounds)
    on fresh batches: blobs, scratches, rings, ties, plateaus, a constant image, a constant batch,
    equal peaks, 1 x N and maps smaller than the kernel. The count curves are also checked against
    scipy in tests/test_mebin.py."""
    for maps in mebin_batches(rng, size=(10, 36)):
        x = torch.from_numpy(maps)[:, None].to(device)
        want_masks, want_thresholds = mebin_binarize(x)
        masks, thresholds = mebin_thresholds(x)
        assert masks.device == x.device and masks.dtype == torch.bool and masks.shape == x.shape
        assert torch.equal(thresholds, want_thresholds), (thresholds, want_thresholds)
        assert torch.equal(masks, want_masks > 0.5)


def test_mebin_options_and_per_image_range_equal_anomalibs(rng):
    maps = torch.from_numpy(mebin_batches(rng, size=(10, 30))[1])[:, None]
    for options in ({"erode": False}, {"kernel_size": 3, "sample_rate": 8}, {"min_interval_len": 2}):
        want_masks, want_thresholds = mebin_binarize(maps, **options)
        masks, thresholds = mebin_thresholds(maps, **options)
        assert torch.equal(thresholds, want_thresholds) and torch.equal(masks, want_masks > 0.5)
    masks, thresholds = mebin_thresholds(maps, range="image")
    for b in range(len(maps)):  # "image": what anomalib gives for a batch of that image alone
        want_masks, want_thresholds = mebin_binarize(maps[b : b + 1])
        assert torch.equal(thresholds[b : b + 1], want_thresholds) and torch.equal(masks[b : b + 1], want_masks > 0.5)


def test_where_kornia_has_not_converged_the_count_is_exact():
    """A one-pixel-wide serpentine of 1275 pixels: a label travels one pixel per pooling round, so after
    kornia's 1000 rounds the snake carries many labels (anomalib counts them as components); the
    diagram gives the true count, 1 (topoot_gpu.mebin.api's doc)."""
    snake = np.zeros((50, 50), dtype=np.float32)
    snake[::2, :] = 1.0
    for r in range(1, 50, 2):
        snake[r, 49 if r % 4 == 1 else 0] = 1.0
    mask = torch.from_numpy(snake)[None, None]
    kornia_count = int((connected_components(mask, num_iterations=1000).unique() > 0).sum())
    scores, counts = mebin_counts(snake, erode=False)
    assert kornia_count > 1
    assert counts[0, scores.tolist().index(3)] == 1  # the map at 3 / 255: the whole snake, one component


def maps_batch(rng: np.random.Generator, device: str) -> torch.Tensor:
    return torch.from_numpy(mebin_batches(rng, size=(24, 40))[0]).to(device)


@pytest.mark.parametrize("device", devices)
def test_mebin_post_processor_forward_and_batch_step_equal_anomalibs(rng, device):
    maps = maps_batch(rng, device)
    ours, theirs = PersistenceMEBinPostProcessor().to(device), MEBinPostProcessor().to(device)
    # normalisation statistics as after a validation pass: the maps are normalised before MEBin
    for p in (ours, theirs):
        p.pixel_min.fill_(float(maps.min()))
        p.pixel_max.fill_(float(maps.max()))
        p._pixel_threshold.fill_(float(maps.mean()))
    a = ours(InferenceBatch(anomaly_map=maps[:, None]))
    b = theirs(InferenceBatch(anomaly_map=maps[:, None]))
    for field in b._fields:
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None and y is None) or torch.equal(x, y), field
    batch_a = ImageBatch(image=torch.zeros(len(maps), 3, *maps.shape[1:], device=device), anomaly_map=maps.clone(),
                         pred_score=maps.amax(dim=(1, 2)))  # fmt: skip
    batch_b = ImageBatch(image=batch_a.image, anomaly_map=maps.clone(), pred_score=batch_a.pred_score.clone())
    ours.post_process_batch(batch_a)
    theirs.post_process_batch(batch_b)
    assert batch_a.pred_mask.shape == maps.shape
    assert torch.equal(batch_a.pred_mask, batch_b.pred_mask)
    assert torch.equal(batch_a.anomaly_map, batch_b.anomaly_map)


@pytest.mark.parametrize("device", devices)
def test_topoot_post_processor_forward_is_refine_on_the_raw_maps(rng, device):
    maps = maps_batch(rng, device)
    processor = TopoOTPostProcessor(seed=3).to(device)
    out = processor(InferenceBatch(anomaly_map=maps[:, None]))
    want = refine(maps, seed=3).mask
    assert out.pred_mask.shape == (len(maps), 1, *maps.shape[1:]) and out.pred_mask.dtype == torch.bool
    assert out.pred_mask.device == maps.device and torch.equal(out.pred_mask[:, 0], want)
    # the rest is anomalib's PostProcessor's
    base = PostProcessor().to(device)(InferenceBatch(anomaly_map=maps[:, None]))
    assert torch.equal(out.anomaly_map, base.anomaly_map) and torch.equal(out.pred_score, base.pred_score)


def test_topoot_post_processor_takes_features_and_tensor_subclasses(rng):
    from torchvision import tv_tensors

    maps = maps_batch(rng, "cpu")
    features = torch.from_numpy(rng.random((len(maps), 3, 8, 8)).astype(np.float32))  # e.g. the RGB image
    processor = TopoOTPostProcessor(features=lambda batch: batch.image)
    batch = ImageBatch(image=tv_tensors.Image(features), anomaly_map=tv_tensors.Mask(maps.clone()),
                       pred_score=maps.amax(dim=(1, 2)))  # fmt: skip
    processor.post_process_batch(batch)
    assert torch.equal(batch.pred_mask.as_subclass(torch.Tensor), refine(maps, features).mask)
    with pytest.raises(ValueError, match="features"):
        TopoOTPostProcessor(features="layer2")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A PatchCore (untrained ResNet-18, no download) fitted on a generated Folder dataset."""
    root = tmp_path_factory.mktemp("folder")
    write_folder_dataset(root, np.random.default_rng(0), size=64)
    datamodule = Folder(name="generated", root=root, normal_dir="train/good", abnormal_dir="test/bad",
                        normal_test_dir="test/good", mask_dir="ground_truth/bad", train_batch_size=4,
                        eval_batch_size=4, num_workers=0)  # fmt: skip
    model = Patchcore(backbone="resnet18", pre_trained=False, layers=["layer2"], coreset_sampling_ratio=0.01,
                      post_processor=TopoOTPostProcessor(seed=1))  # fmt: skip
    engine = Engine(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, default_root_dir=tmp_path_factory.mktemp("engine"))  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine.fit(model=model, datamodule=datamodule)
    return engine, model, datamodule


def test_engine_predict_and_test_with_topoot(fitted):
    engine, model, datamodule = fitted
    batches = engine.predict(model=model, datamodule=datamodule)
    assert batches
    model.eval()
    for batch in batches:
        with torch.no_grad():
            raw = model.model(batch.image).anomaly_map[:, 0]  # the maps before anomalib's normalisation
        assert batch.pred_mask.shape == batch.anomaly_map.shape == raw.shape
        assert batch.pred_mask.dtype == torch.bool
        assert torch.equal(batch.pred_mask.as_subclass(torch.Tensor), refine(raw, seed=1).mask)
    metrics = engine.test(model=model, datamodule=datamodule)
    assert "pixel_AUROC" in metrics[0]


def test_engine_predict_with_persistence_mebin_equals_anomalibs_mebin(fitted):
    engine, model, datamodule = fitted
    statistics = model.post_processor.state_dict()  # the validation pass's min/max and thresholds
    masks = {}
    try:
        for cls in (MEBinPostProcessor, PersistenceMEBinPostProcessor):
            model.post_processor = cls()
            model.post_processor.load_state_dict(statistics)
            masks[cls] = [b.pred_mask for b in engine.predict(model=model, datamodule=datamodule)]
    finally:
        model.post_processor = TopoOTPostProcessor(seed=1)
        model.post_processor.load_state_dict(statistics)
    ours, theirs = masks[PersistenceMEBinPostProcessor], masks[MEBinPostProcessor]
    assert len(ours) == len(theirs) and all(torch.equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("cls", [TopoOTPostProcessor, PersistenceMEBinPostProcessor])
def test_onnx_export_falls_back_with_a_warning(fitted, tmp_path, cls):
    """Under export both post-processors emit anomalib's pixel threshold (module doc), warn, and
    ``to_onnx`` writes the model (with anomalib's own MEBinPostProcessor it fails, anomalib 2.7.0)."""
    import onnxscript  # noqa: F401  (make test-anomalib installs it)

    _, model, _ = fitted
    statistics = model.post_processor.state_dict()
    try:
        model.post_processor = cls()
        model.post_processor.load_state_dict(statistics)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            path = model.to_onnx(tmp_path, input_size=(64, 64))
    finally:
        model.post_processor = TopoOTPostProcessor(seed=1)
        model.post_processor.load_state_dict(statistics)
    assert path.is_file() and path.stat().st_size > 0
    assert any("pred_mask under export: the exported graph thresholds" in str(w.message) for w in caught)


def test_post_processor_arguments_are_checked():
    with pytest.raises(ValueError, match="range"):
        PersistenceMEBinPostProcessor(range="global")
    with pytest.raises(ValueError, match="config"):
        TopoOTPostProcessor(config={"head": None})


def test_postprocess_benchmark_runs(tmp_path):
    """``benchmarks/bench_postprocess.py`` end to end on a tiny batch (it checks the masks first)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_postprocess.py"
    out = tmp_path / "pp.json"
    args = ["--batch", "3", "--size", "24", "--repeats", "1", "--anomalib-maps", "1", "--out", str(out)]
    subprocess.run([sys.executable, str(script), *args], check=True, cwd=tmp_path)
    result = json.loads(out.read_text())
    assert result["mebin_masks_identical"] and len(result["rows"]) == 5
