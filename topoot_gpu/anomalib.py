"""anomalib post-processors (the extra ``topoot_gpu[anomalib]``; anomalib >= 2.5).

Three lines put TopoOT (or exact MEBin) behind any anomalib model::

    from anomalib.models import Patchcore
    from topoot_gpu.anomalib import TopoOTPostProcessor
    model = Patchcore(post_processor=TopoOTPostProcessor())

* :class:`TopoOTPostProcessor`: ``pred_mask`` from :func:`topoot_gpu.refine` on the model's anomaly
  maps; normalisation, image scores and image labels stay anomalib's (:class:`PostProcessor`).
* :class:`PersistenceMEBinPostProcessor`: anomalib's ``MEBinPostProcessor`` with the masks computed by
  :func:`topoot_gpu.mebin_thresholds` (one H0 diagram per image instead of 64 x 1000 pooling rounds):
  the same masks wherever kornia's labelling converges, and the true count where it does not.

Both implement the two entry points anomalib calls: ``forward(InferenceBatch)`` (standalone and
exported inference, maps ``[B, 1, H, W]``) and ``post_process_batch(Batch)`` (``Engine.test`` /
``Engine.predict``, maps ``[N, H, W]``), on the CPU and on CUDA.

Which map: TopoOT refines the model's *raw* anomaly map, before anomalib's normalisation (refine
normalises each map itself, and anomalib's min-max normalisation clamps values outside the
validation range to 0 and 1, which would flatten the peaks TopoOT's persistence reads). MEBin reads
the normalised map, as anomalib's MEBin does.

Export (``to_onnx`` / ``to_openvino``, also ``torch.export``): persistence and the head's training
are host-side algorithms with data-dependent shapes and no ONNX form (nor is anomalib's own MEBin:
exporting a model with ``MEBinPostProcessor`` fails in ``torch.export`` on its data-dependent
branches, anomalib 2.7.0). Under export both post-processors emit anomalib's default pixel
threshold (``anomaly_map > pixel threshold``, as :class:`PostProcessor`), with a warning, so the
model exports; the exported model's ``anomaly_map`` refined by :func:`topoot_gpu.refine` (or
:func:`topoot_gpu.mebin_thresholds`) outside the graph gives the masks of the eager model.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional

import torch

from .core.backends import require
from .core.validation import check_choice, check_config
from .mebin.api import RANGES, mebin_thresholds
from .refinement.api import refine
from .refinement.config import RefineConfig

_post = require("anomalib.post_processing", "anomalib", "anomalib")
_data = require("anomalib.data", "anomalib", "anomalib")
PostProcessor = _post.PostProcessor
MEBinPostProcessor = _post.MEBinPostProcessor
Batch, InferenceBatch = _data.Batch, _data.InferenceBatch

__all__ = ["PersistenceMEBinPostProcessor", "TopoOTPostProcessor"]


def _exporting() -> bool:
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(torch.onnx.is_in_onnx_export() or (is_exporting is not None and is_exporting()))


def _plain(x: torch.Tensor) -> torch.Tensor:
    """A field of an anomalib batch (maybe a tensor subclass such as torchvision's ``Mask``) as a plain
    detached tensor, so that the ops below see no subclass dispatch."""
    return x.detach().as_subclass(torch.Tensor)


def _export_warning(what: str) -> None:
    warnings.warn(f"{what} under export: the exported graph thresholds the map at anomalib's pixel threshold "
                  "instead (topoot_gpu.anomalib's module doc says how to get the eager masks from an exported "
                  "model)", stacklevel=3)  # fmt: skip


class TopoOTPostProcessor(PostProcessor):
    """anomalib's :class:`PostProcessor` whose ``pred_mask`` is TopoOT's refined mask.

    Args:
        config: the :class:`topoot_gpu.RefineConfig` of :func:`topoot_gpu.refine` (default: the
            released implementation).
        seed: the head's seed (:func:`topoot_gpu.refine`): the same maps give the same masks.
        features: None (the map's own feature stack, :func:`topoot_gpu.map_features`), or a callable
            ``features(batch) -> Tensor [N, C, h, w]`` for models whose batches carry backbone
            features (or from which the caller can take them, e.g. a forward hook), called with the
            batch anomalib hands over (``Batch`` or ``InferenceBatch``).
        persistence_backend, transport_backend, head_backend: passed to :func:`topoot_gpu.refine`.
        **kwargs: anomalib's :class:`PostProcessor` arguments (``enable_normalization``,
            ``enable_thresholding``, sensitivities, ...). With ``enable_thresholding=False`` no mask is
            made, as in anomalib.
    """

    def __init__(
        self,
        *,
        config: RefineConfig | None = None,
        seed: int = 0,
        features: Optional[Callable[[Any], torch.Tensor]] = None,  # noqa: UP045 (py3.9)
        persistence_backend: str = "auto",
        transport_backend: str = "auto",
        head_backend: str = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if features is not None and not callable(features):
            raise ValueError(f"features: expected None or a callable batch -> [N, C, h, w], got {features!r}")
        self.refine_config = check_config(config, RefineConfig)
        self.seed = seed
        self.features = features
        self.backends = {"persistence_backend": persistence_backend, "transport_backend": transport_backend,
                         "head_backend": head_backend}  # fmt: skip

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (*super()._checkpoint_config_keys, "seed")

    def refine_masks(self, anomaly_map: torch.Tensor, batch: Any = None) -> torch.Tensor:
        """Bool masks shaped like ``anomaly_map`` (``[N, H, W]`` or ``[N, 1, H, W]``), on its device."""
        maps = _plain(anomaly_map)
        shape = maps.shape
        maps = maps.reshape(-1, *shape[-2:])
        features = None if self.features is None else _plain(self.features(batch))
        result = refine(maps, features, config=self.refine_config, seed=self.seed, **self.backends)
        return result.mask.reshape(shape)

    def forward(self, predictions: InferenceBatch) -> InferenceBatch:
        """anomalib's ``forward`` (normalised scores and maps, image labels), ``pred_mask`` from TopoOT."""
        out = super().forward(predictions)
        if _exporting():
            _export_warning("TopoOT's pred_mask")
            return out
        if predictions.anomaly_map is None or not self.enable_thresholding:
            return out
        return out._replace(pred_mask=self.refine_masks(predictions.anomaly_map, predictions))

    def post_process_batch(self, batch: Batch) -> None:
        """anomalib's batch step (``Engine.test`` / ``predict``), ``pred_mask`` from TopoOT on the raw map
        (a ``pred_mask`` the model already set is kept, as in anomalib)."""
        if self.enable_thresholding and batch.anomaly_map is not None and batch.pred_mask is None:
            batch.pred_mask = self.refine_masks(batch.anomaly_map, batch)
        super().post_process_batch(batch)


class PersistenceMEBinPostProcessor(MEBinPostProcessor):
    """anomalib's ``MEBinPostProcessor`` with the masks of :func:`topoot_gpu.mebin_thresholds`.

    Args:
        sample_rate, min_interval_len, erode, kernel_size: MEBin's parameters, as anomalib's.
        range: ``"batch"`` (MEBin's, the default: identical to anomalib's masks) or ``"image"`` (each
            image's own range: its mask does not depend on the other images of the batch).
        persistence_backend: backend of the diagrams (:func:`topoot_gpu.cubical_persistence`).
        **kwargs: anomalib's :class:`PostProcessor` arguments.
    """

    def __init__(
        self,
        sample_rate: int = 4,
        min_interval_len: int = 4,
        erode: bool = True,
        kernel_size: int = 6,
        *,
        range: str = "batch",  # noqa: A002  (mebin_thresholds' name)
        persistence_backend: str = "auto",
        **kwargs: Any,
    ) -> None:
        check_choice("range", range, RANGES)
        super().__init__(sample_rate=sample_rate, min_interval_len=min_interval_len, erode=erode,
                         kernel_size=kernel_size, **kwargs)  # fmt: skip
        self.range = range
        self.persistence_backend = persistence_backend

    @property
    def _checkpoint_config_keys(self) -> tuple[str, ...]:
        return (*super()._checkpoint_config_keys, "range")

    def mebin_masks(self, anomaly_map: torch.Tensor) -> torch.Tensor:
        """Bool masks shaped like ``anomaly_map`` (``[N, H, W]`` or ``[N, 1, H, W]``), on its device."""
        masks, _ = mebin_thresholds(
            _plain(anomaly_map), sample_rate=self.sample_rate, min_interval_len=self.min_interval_len,
            erode=self.erode, kernel_size=self.kernel_size, range=self.range,
            persistence_backend=self.persistence_backend,
        )  # fmt: skip
        return masks

    def forward(self, predictions: InferenceBatch) -> InferenceBatch:
        """anomalib's MEBin ``forward``: normalised score and map, image label from the image threshold,
        ``pred_mask`` by MEBin on the (normalised) map, here from persistence diagrams."""
        if _exporting():
            _export_warning("MEBin's pred_mask")
            return PostProcessor.forward(self, predictions)  # anomalib's MEBin does not export
        if predictions.pred_score is None and predictions.anomaly_map is None:
            raise ValueError("predictions: at least one of pred_score or anomaly_map must be provided")
        anomaly_map = predictions.anomaly_map
        pred_score = predictions.pred_score
        if pred_score is None:
            pred_score = torch.amax(anomaly_map, dim=(-2, -1))
        if self.enable_normalization:
            pred_score = self._normalize(pred_score, self.image_min, self.image_max, self.image_threshold)
            if anomaly_map is not None:
                anomaly_map = self._normalize(anomaly_map, self.pixel_min, self.pixel_max, self.pixel_threshold)
        pred_mask = pred_label = None
        if self.enable_thresholding:
            if anomaly_map is not None:
                pred_mask = self.mebin_masks(anomaly_map)
            pred_label = self._apply_threshold(pred_score, self.normalized_image_threshold)
        return InferenceBatch(pred_label=pred_label, pred_score=pred_score, pred_mask=pred_mask,
                              anomaly_map=anomaly_map)  # fmt: skip

    def post_process_batch(self, batch: Batch) -> None:
        """anomalib's MEBin batch step: normalise, image labels, then ``pred_mask`` by MEBin (a
        ``pred_mask`` already set is kept)."""
        if self.enable_normalization:
            self.normalize_batch(batch)
        if self.enable_thresholding:
            if batch.pred_label is None:
                batch.pred_label = self._apply_threshold(batch.pred_score, self.normalized_image_threshold)
            if batch.anomaly_map is not None and batch.pred_mask is None:
                batch.pred_mask = self.mebin_masks(batch.anomaly_map)
