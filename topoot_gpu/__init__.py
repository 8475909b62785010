"""topoot_gpu: persistence-and-transport kernels for TopoOT anomaly segmentation."""

from .persistence import Diagrams, cubical_persistence
from .selection import Candidate, Selection, pseudo_labels
from .selection_config import SelectionConfig
from .transport import SinkhornResult, best_match, diagram_costs, sinkhorn, stability

__all__ = [
    "Candidate",
    "Diagrams",
    "Selection",
    "SelectionConfig",
    "SinkhornResult",
    "best_match",
    "cubical_persistence",
    "diagram_costs",
    "pseudo_labels",
    "sinkhorn",
    "stability",
]
__version__ = "0.1.0"
