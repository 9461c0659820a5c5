"""A fleet of 3 simulated replicas works however the simulator was chosen (issue 23): the replicas apply the
backend rule BundleModel does, and a simulated host has a device per replica."""

from __future__ import annotations

import numpy as np
import pytest

from acl_bundle import sim
from acl_bundle.sim import builder, models
from helpers import reference

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    model, w0 = models.mlp((8, 16, 4), seed=0)
    om, _ = builder.save(builder.build_bundle(model, init=True), tmp_path_factory.mktemp("fleet_backend") / "b.om")
    return str(om), w0


@pytest.mark.parametrize("backend", [None, "sim"])
def test_three_replicas_whatever_chose_the_simulator(ray_cluster, bundle, backend):
    from acl_bundle.fleet import Fleet

    om, w0 = bundle  # backend=None: the workers' ACL_BUNDLE_BACKEND=sim (root conftest), or the file's format
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    with Fleet(om, replicas=3, backend=backend, timeout=30) as fleet:
        assert sorted(r["device_id"] for r in fleet.status().values()) == [0, 1, 2]
        for _ in range(3):  # round robin: every replica answers
            out = fleet.infer(x)
            np.testing.assert_allclose(out.output, reference(x, w0), rtol=1e-5, atol=1e-5)


def test_a_replica_on_device_2_with_no_variable_runs_the_simulator_file_there(bundle, monkeypatch):
    from acl_bundle.fleet.replica import ReplicaActor
    from acl_bundle.fleet.transport import ObjectStoreTransport

    om, w0 = bundle
    monkeypatch.delenv("ACL_BUNDLE_BACKEND", raising=False)
    monkeypatch.setitem(__import__("sys").modules, "acl", None)
    sim.configure(device_count=2)
    try:
        actor = ReplicaActor("r2", om, 2, None, {}, ObjectStoreTransport(), None)  # the actor's body, in-process
        try:
            assert actor._model._acl is sim.acl
            x = np.ones((1, 8), np.float32)
            np.testing.assert_allclose(actor._model.infer(x), reference(x, w0), rtol=1e-5, atol=1e-5)
        finally:
            actor.close()
    finally:
        sim.configure(device_count=2)
