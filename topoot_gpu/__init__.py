"""topoot_gpu: persistence-and-transport kernels for TopoOT anomaly segmentation."""

from .persistence import Diagrams, cubical_persistence
from .transport import SinkhornResult, best_match, diagram_costs, sinkhorn, stability

__all__ = [
    "Diagrams",
    "SinkhornResult",
    "best_match",
    "cubical_persistence",
    "diagram_costs",
    "sinkhorn",
    "stability",
]
__version__ = "0.1.0"
