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
    gc.collect()  # let weakref finalizers of dropped models run first
    leaks = sim.leaks()
    sim.reset()
    assert not leaks, f"ACL resources leaked: {leaks}"
