"""Pseudo-labels (SPEC 4): ``api`` runs the released selection batched, through the persistence and
transport stages' public functions with the backends it is given; ``reference`` is the same
computation written plainly with GUDHI and POT, one map at a time."""
