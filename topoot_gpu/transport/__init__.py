"""Entropic transport (SPEC 3): ``api`` validates and dispatches ``sinkhorn`` and ``best_stability``
to one module per backend (``_cpp``, ``_torch``, ``_triton``, ``reference``); ``padded`` holds the
backend-neutral maths of padded batches (costs, stability, best match)."""
