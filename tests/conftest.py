"""Shared fixtures: bundles built on the fly from small ONNX models (references live in helpers.py)."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from acl_bundle.sim import builder, models

_counter = itertools.count()


@pytest.fixture
def make_bundle(tmp_path: Path):
    """Build an MLP bundle file; return (om_path, initial_weights)."""

    def make(sizes=(8, 16, 4), *, dtype="float32", init=True, batch_sizes=None, variables=None,
             manifest=True, seed=0):
        model, weights = models.mlp(sizes, dtype=dtype, seed=seed)
        mf = builder.build_bundle(model, init=init, batch_sizes=batch_sizes, variables=variables)
        om, man = builder.save(mf, tmp_path / f"bundle{next(_counter)}.om")
        if not manifest and man is not None:
            Path(man).unlink()
        return Path(om), weights

    return make


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """A moto S3 server on loopback for one test module (a subprocess, stopped by PID)."""
    import s3help

    server = s3help.MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()
