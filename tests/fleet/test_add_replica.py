"""add_replica reserves the name before spawning: one of several concurrent adds of a name wins, and no replica
process ever runs unknown to the fleet (also when a spawn fails or times out)."""
from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from acl_bundle.fleet import Fleet, FleetError
from acl_bundle.sim import builder, models
from helpers import reference

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

TIMEOUT = 20.0


def _stat(pid: int | str) -> list[bytes]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()  # [state, ppid, ...]


def raylet_pid() -> int:
    """This test session's raylet: the parent of every worker of its cluster (e.g. of a Ray task's process)."""
    @ray.remote(num_cpus=0)
    def pid() -> int:
        return os.getpid()

    return int(_stat(ray.get(pid.remote(), timeout=TIMEOUT))[1])


def replica_pids() -> set[int]:
    """PIDs of live worker processes of this session's Ray cluster running a ReplicaActor (Ray titles them
    ``ray::ReplicaActor...``); other clusters on the machine (other test runs) are not counted."""
    parent = raylet_pid()
    pids = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            state, ppid = _stat(d)[:2]
        except OSError:
            continue
        if cmd.startswith(b"ray::ReplicaActor") and state != b"Z" and int(ppid) == parent:
            pids.add(int(d))
    return pids


def settle(fleet: Fleet, extra: set[int] = frozenset()) -> None:
    """Every live ReplicaActor process is one the fleet knows (killed ones take a moment to exit)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        known = {s["pid"] for s in fleet.status().values()} | set(extra)
        running = replica_pids()
        if running == known or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert running == known, f"replica processes unknown to the fleet: {sorted(running - known)}"


@pytest.fixture(scope="module")
def fleet(ray_cluster, tmp_path_factory):
    model, w0 = models.mlp((8, 16, 4), seed=0)
    om, _ = builder.save(builder.build_bundle(model, init=True), tmp_path_factory.mktemp("add") / "b.om")
    with Fleet(str(om), replicas=1, backend="sim", timeout=TIMEOUT) as f:
        f.w0 = w0
        yield f


def test_concurrent_adds_of_one_name_one_wins_no_orphan(fleet):
    others = replica_pids() - {s["pid"] for s in fleet.status().values()}  # e.g. another module's fleet
    go = threading.Barrier(4)
    ok, refused, other = [], [], []

    def add():
        go.wait()
        try:
            ok.append(fleet.add_replica("dup"))
        except ValueError as e:
            refused.append(str(e))
        except Exception as e:  # noqa: BLE001 - recorded, asserted empty
            other.append(e)

    ts = [threading.Thread(target=add) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(2 * TIMEOUT)
    assert not other and ok == ["dup"] and len(refused) == 3, (ok, refused, other)
    assert all("'dup' is already in the fleet" in m for m in refused)
    assert sorted(fleet.status()) == ["dup", "replica-0"]
    settle(fleet, others)
    # the one that won serves the fleet's weights, checked against numpy
    x = np.ones((1, 8), np.float32)
    for _ in range(4):
        y, step, _ = fleet.infer(x)
        assert step is None  # nothing published: the bundle's initial weights
        np.testing.assert_allclose(y, reference(x, fleet.w0), rtol=1e-5, atol=1e-5)
    fleet._evict(fleet._get("dup"), "test done")
    settle(fleet, others)


def test_a_spawn_that_times_out_leaves_no_process_and_frees_the_name(fleet):
    others = replica_pids() - {s["pid"] for s in fleet.status().values()}
    with pytest.raises(FleetError, match=r"replica slow did not start: did not answer within 1.0 s"):
        fleet.add_replica("slow", hooks={"init_delay": 60}, timeout=1.0)
    assert "slow" not in fleet.status()
    settle(fleet, others)  # the actor stuck in __init__ was killed
    assert fleet.add_replica("slow") == "slow"  # the name is free again
    assert fleet.status()["slow"]["ready"]
    fleet._evict(fleet._get("slow"), "test done")
    settle(fleet, others)


def test_a_spawn_that_fails_leaves_no_process(fleet, tmp_path):
    others = replica_pids() - {s["pid"] for s in fleet.status().values()}
    fleet._options["max_concurrency"] = -1  # BundleModel refuses it in the replica's __init__
    try:
        with pytest.raises(FleetError, match=r"replica bad did not start: .*max_concurrency"):
            fleet.add_replica("bad")
    finally:
        del fleet._options["max_concurrency"]
    settle(fleet, others)
    with pytest.raises(ValueError, match="non-empty str"):
        fleet.add_replica("")


def test_add_after_shutdown_is_refused(ray_cluster, fleet, tmp_path):
    f = Fleet(fleet._bundle, replicas=1, backend="sim", timeout=TIMEOUT)
    f.shutdown()
    with pytest.raises(FleetError, match="shut down"):
        f.add_replica("late")
