"""topoot_gpu: persistence-and-transport kernels for TopoOT anomaly segmentation."""

from .allocator import keep_freed_memory
from .head import map_features, train_heads
from .head_config import HeadConfig
from .op import RefineConfig, RefineResult, refine
from .persistence import Diagrams, cubical_persistence
from .selection import Candidate, Selection, pseudo_labels
from .selection_config import SelectionConfig
from .transport import SinkhornResult, best_match, diagram_costs, sinkhorn, stability

__all__ = [
    "Candidate",
    "Diagrams",
    "HeadConfig",
    "RefineConfig",
    "RefineResult",
    "Selection",
    "SelectionConfig",
    "SinkhornResult",
    "best_match",
    "cubical_persistence",
    "diagram_costs",
    "keep_freed_memory",
    "map_features",
    "pseudo_labels",
    "refine",
    "sinkhorn",
    "stability",
    "train_heads",
]
__version__ = "0.1.0"
