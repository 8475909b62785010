"""Differentiable persistence diagrams and topological losses (:mod:`.api`)."""
