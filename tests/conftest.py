"""Fresh random inputs on every run; the seed of a failing test is printed with its report.

Set ``TOPOOT_TEST_SEED`` to replay a run.
"""

from __future__ import annotations

import os

import numpy as np
import pytest


@pytest.fixture
def rng(request) -> np.random.Generator:
    env = os.environ.get("TOPOOT_TEST_SEED")
    seed = int(env) if env else int(np.random.SeedSequence().entropy % (2**63))
    request.node.topoot_seed = seed
    return np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "topoot_seed", None)
    if report.failed and seed is not None:
        report.sections.append(("random seed", f"replay with TOPOOT_TEST_SEED={seed}"))
