"""Fixtures for the simulator tests: an initialised device, a resource rig, model files."""
from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from simhelp import Rig

from acl_bundle import sim
from acl_bundle.sim import builder, models

acl = sim.acl
_n = itertools.count()


@pytest.fixture
def dev():
    """acl.init + set_device(0); torn down in reverse."""
    assert acl.init() == 0
    assert acl.rt.set_device(0) == 0
    yield acl
    acl.rt.reset_device(0)
    acl.finalize()


@pytest.fixture
def rig(dev):
    r = Rig()
    yield r
    r.close()


@pytest.fixture
def mlp_bundle(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, np.ndarray]]]:
    """Factory: an MLP bundle file and its initial weights."""

    def make(sizes=(8, 16, 4), *, init=True, batch_sizes=None, seed=0):
        model, weights = models.mlp(sizes, seed=seed)
        mf = builder.build_bundle(model, init=init, batch_sizes=batch_sizes)
        om, _ = builder.save(mf, tmp_path / f"b{next(_n)}.om")
        return Path(om), weights

    return make


@pytest.fixture
def mlp_plain(tmp_path: Path) -> Callable[..., tuple[Path, dict[str, np.ndarray]]]:
    def make(sizes=(8, 16, 4), *, batch_sizes=None, seed=0):
        model, weights = models.mlp(sizes, seed=seed)
        om, _ = builder.save(builder.build_plain(model, batch_sizes=batch_sizes), tmp_path / f"p{next(_n)}.om")
        return Path(om), weights

    return make
