"""topoot_gpu: persistence-and-transport kernels for TopoOT anomaly segmentation.

One sub-package per pipeline stage (``persistence``, ``transport``, ``selection``, ``head``,
``refinement``; ``topology`` and ``mebin`` beside them) over a shared ``core``; each stage's
``api`` module checks its arguments once and dispatches through the one backend table
(:mod:`topoot_gpu.core.backends`) to one module per backend, and its ``reference`` module is the
plain GUDHI / POT / PyTorch version everything is checked against. The public functions are
re-exported here.
"""

from .core.allocator import keep_freed_memory, release_scratch
from .core.maps import map_features
from .head.api import train_heads
from .head.config import HeadConfig
from .mebin.api import mebin_counts, mebin_thresholds
from .persistence.api import cubical_persistence
from .persistence.diagrams import Diagrams
from .refinement import op as _op  # noqa: F401  (registers torch.ops.topoot.refine)
from .refinement.api import refine
from .refinement.config import RefineConfig, RefineResult
from .refinement.files import FilesSummary, refine_files
from .selection.api import pseudo_labels
from .selection.candidates import Candidate, Selection
from .selection.config import SelectionConfig
from .topology.api import (
    DiagramBatch,
    betti_loss,
    diagram_distance,
    partial_persistence,
    persistence_diagrams,
    total_persistence,
)
from .transport.api import best_match, best_stability, diagram_costs, sinkhorn, stability
from .transport.results import BestStability, SinkhornResult

__all__ = [
    "BestStability",
    "Candidate",
    "DiagramBatch",
    "FilesSummary",
    "Diagrams",
    "HeadConfig",
    "RefineConfig",
    "RefineResult",
    "Selection",
    "SelectionConfig",
    "SinkhornResult",
    "best_match",
    "best_stability",
    "betti_loss",
    "cubical_persistence",
    "diagram_costs",
    "diagram_distance",
    "keep_freed_memory",
    "map_features",
    "mebin_counts",
    "mebin_thresholds",
    "partial_persistence",
    "persistence_diagrams",
    "pseudo_labels",
    "refine",
    "refine_files",
    "release_scratch",
    "sinkhorn",
    "stability",
    "total_persistence",
    "train_heads",
]
__version__ = "0.2.0"
