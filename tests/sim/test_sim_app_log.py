"""acl.app_log (pyACL: ``acl.app_log(log_level, message)``, no return value; acllite's logger uses it)."""
from __future__ import annotations

import pytest

from acl_bundle import sim
from acl_bundle.sim import _rt

acl = sim.acl


def test_app_log_returns_none_and_is_recorded():
    assert "app_log" in dir(acl)
    assert acl.app_log(1, "[f.py:1 g]hello") is None  # usable before init (acllite may log early)
    assert acl.init() == 0
    assert acl.app_log(3, "boom") is None
    assert acl.finalize() == 0
    assert _rt.app_log_records()[-2:] == [(1, "[f.py:1 g]hello"), (3, "boom")]


def test_app_log_wrong_argument_types_raise():
    with pytest.raises(TypeError):
        acl.app_log("1", "x")
    with pytest.raises(TypeError):
        acl.app_log(1, b"x")
