"""Cubical persistence (SPEC 2): ``api`` validates and dispatches to one module per backend
(``_cpp``, ``_cuda`` and ``_triton`` over the shared basin algorithm ``_basins``, ``reference``)."""
