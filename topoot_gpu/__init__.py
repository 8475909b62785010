"""topoot_gpu: persistence-and-transport kernels for TopoOT anomaly segmentation."""

from .persistence import Diagrams, cubical_persistence

__all__ = ["Diagrams", "cubical_persistence"]
__version__ = "0.1.0"
