"""Root pytest configuration: every test runs on the simulator and must leak nothing."""
from __future__ import annotations

import gc
import os

import pytest

os.environ.setdefault("ACL_BUNDLE_BACKEND", "sim")

from acl_bundle import sim  # noqa: E402


@pytest.fixture(autouse=True)
def no_acl_leaks():
    """Start each test on a pristine simulator and fail it if any ACL resource is left alive."""
    sim.reset()
    yield
    leaks = sim.leaks()
    if leaks:  # a model kept alive only by a reference cycle is released by its finalizer at collection
        gc.collect()
        leaks = sim.leaks()
    sim.reset()
    assert not leaks, f"ACL resources leaked: {leaks}"
