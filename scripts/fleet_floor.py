#!/usr/bin/env python
"""Where the floor of a fleet publish is on this machine (issue 27): what no change to acl_bundle.fleet can go below.

Starts N replica actors (``ReplicaActor``, the fleet's own actor body, on the simulator) and one standalone
replica, and times, interleaved round by round (the order alternates):

- ``1 update``: ``BundleModel.update`` inside the standalone replica (the benchmark's baseline);
- ``put``: ``ray.put`` of the payload alone;
- ``round calls`` / ``round graph``: one no-op call to every replica, as ordinary actor calls / over a Ray
  compiled graph (``experimental_compile``), awaited;
- ``N updates at once``: every replica updates the same bytes (already received) at one shared instant,
  from that instant to the last one done: the replicas' own work competing for the cores, no call at all;
- ``publish calls`` / ``publish graph``: the fleet's two-phase protocol (``ray.put``, every replica stages,
  then every replica commits) as ordinary actor calls / over a compiled graph;
- ``publish graph inline``: the same over the compiled graph with the weights in the stage message itself
  (the graph's shared-memory channel) instead of the object store.

A compiled graph is built before its round and torn down after it (not timed), so that its polling does not
load the other measurements; its idle cost is measured once: CPU time of each replica over 2 s with and
without a graph.

    PYTHONPATH=. /work/venv/bin/python scripts/fleet_floor.py --mib 4 --rounds 15

Needs the ray and sim extras.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray.dag import InputNode, MultiOutputNode

from acl_bundle.fleet import ObjectStoreTransport
from acl_bundle.fleet.replica import ReplicaActor
from acl_bundle.sim import builder, models

MiB = 1 << 20


class EitherTransport(ObjectStoreTransport):
    """The object store, or the weights themselves when they came in the message (``publish graph inline``)."""

    def receive(self, handle: Any, timeout: float | None) -> dict[str, np.ndarray]:
        return handle if isinstance(handle, dict) else super().receive(handle, timeout)


class Probe(ReplicaActor):
    """The fleet's replica plus what the measurements need."""

    def noop(self) -> None:
        return None

    def run(self, message: tuple[Any, ...]) -> Any:
        """The compiled graph's method: ("noop",), ("stage", [handle], step, txn, timeout) or ("commit", txn)."""
        if message[0] == "stage":
            return self.stage(*message[1:])
        if message[0] == "commit":
            return self.commit(message[1])
        return None

    def update_at(self, handles: list[Any], step: int, at: float) -> float:
        """Receive, wait for the wall-clock instant ``at``, update; return the wall-clock end."""
        w = ObjectStoreTransport().receive(handles[0], None)
        time.sleep(max(0.0, at - time.time()))
        self._model.update(w, step=step)
        return time.time()

    def cpu_seconds(self) -> float:
        t = os.times()
        return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=4)
    ap.add_argument("--replicas", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        with tempfile.TemporaryDirectory() as d:
            run(args, d)
    finally:
        ray.shutdown()


def run(args: argparse.Namespace, d: str) -> None:
    n = int(np.sqrt(args.mib * MiB / 4))
    model, w0 = models.mlp((n, n), seed=0)
    om, _ = builder.save(builder.build_bundle(model, init=True), Path(d) / "b.om")
    actor = ray.remote(Probe).options(num_cpus=0, max_concurrency=4, max_restarts=0)
    reps = [actor.remote(f"r{i}", str(om), i, "sim", {}, EitherTransport(), None) for i in range(args.replicas)]
    solo = actor.remote("solo", str(om), args.replicas, "sim", {}, ObjectStoreTransport(), None)
    ray.get([a.noop.remote() for a in [*reps, solo]])
    rng = np.random.default_rng(0)
    state = {"step": 0, "txn": 0}

    def weights() -> dict[str, np.ndarray]:
        return {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in w0.items()}

    def nxt(key: str) -> int:
        state[key] += 1
        return state[key]

    def graph() -> Any:
        with InputNode() as inp:
            dag = MultiOutputNode([a.run.bind(inp) for a in reps])
        g = dag.experimental_compile(_buffer_size_bytes=args.mib * MiB + MiB)  # room for the inline weights
        ray.get(g.execute(("noop",)))
        return g

    def one() -> float:
        ref = ray.put(weights())
        return ray.get(solo.update_locally.remote([ref], nxt("step")))

    def put() -> float:
        w = weights()
        t0 = time.perf_counter()
        ray.put(w)
        return time.perf_counter() - t0

    def round_calls() -> float:
        t0 = time.perf_counter()
        ray.get([a.noop.remote() for a in reps])
        return time.perf_counter() - t0

    def at_once() -> float:
        ref = ray.put(weights())
        at = time.time() + 0.05
        return max(ray.get([a.update_at.remote([ref], nxt("step"), at) for a in reps])) - at

    def publish_calls() -> float:
        w, step, txn = weights(), nxt("step"), nxt("txn")
        t0 = time.perf_counter()
        ref = ray.put(w)
        ray.get([a.stage.remote([ref], step, txn, 60.0) for a in reps])
        ray.get([a.commit.remote(txn) for a in reps])
        return time.perf_counter() - t0

    def round_graph(g: Any) -> float:
        t0 = time.perf_counter()
        ray.get(g.execute(("noop",)))
        return time.perf_counter() - t0

    def publish_graph(g: Any) -> float:
        w, step, txn = weights(), nxt("step"), nxt("txn")
        t0 = time.perf_counter()
        ref = ray.put(w)
        ray.get(g.execute(("stage", [ref], step, txn, 60.0)))
        ray.get(g.execute(("commit", txn)))
        return time.perf_counter() - t0

    def publish_graph_inline(g: Any) -> float:
        w, step, txn = weights(), nxt("step"), nxt("txn")
        t0 = time.perf_counter()
        ray.get(g.execute(("stage", [w], step, txn, 60.0)))
        ray.get(g.execute(("commit", txn)))
        return time.perf_counter() - t0

    plain = {"1 update": one, "put": put, "round calls": round_calls, f"{len(reps)} updates at once": at_once,
             "publish calls": publish_calls}
    compiled = {"round graph": round_graph, "publish graph": publish_graph,
                "publish graph inline": publish_graph_inline}
    got: dict[str, list[float]] = {k: [] for k in [*plain, *compiled]}
    for r in range(args.rounds + 1):  # round 0 warms up
        blocks: list[Any] = list(plain.items()) + ["graph"]
        for block in blocks if r % 2 == 0 else blocks[::-1]:
            if block == "graph":
                g = graph()
                try:
                    for name, f in (compiled.items() if r % 2 == 0 else list(compiled.items())[::-1]):
                        for _ in range(3):
                            dt = f(g)
                            if r:
                                got[name].append(dt)
                finally:
                    g.teardown()
                continue
            name, f = block
            for _ in range(3):
                dt = f()
                if r:
                    got[name].append(dt)
    base = float(np.percentile(got["1 update"], 50))
    print(f"{args.mib} MiB, {len(reps)} replicas, {args.rounds} rounds x 3, load {os.getloadavg()[0]:.1f}")
    print(f"{'':24} {'p50 ms':>8} {'p99 ms':>8} {'p50 / 1 update':>15}")
    for name, xs in got.items():
        p50, p99 = (1e3 * float(np.percentile(xs, q)) for q in (50, 99))
        print(f"{name:24} {p50:8.2f} {p99:8.2f} {p50 / (1e3 * base):14.2f}x")
    # idle cost of a compiled graph: each replica's CPU time over 2 s, without and with one
    for label in ("no graph", "graph"):
        g = graph() if label == "graph" else None
        c0 = ray.get([a.cpu_seconds.remote() for a in reps])
        time.sleep(2.0)
        c1 = ray.get([a.cpu_seconds.remote() for a in reps])
        if g is not None:
            g.teardown()
        per = [(b - a) / 2.0 for a, b in zip(c0, c1)]
        print(f"idle, {label:8}: CPU per replica " + " ".join(f"{x:.2f}" for x in per) + " core")
    ray.get([a.close.remote() for a in [*reps, solo]])


if __name__ == "__main__":
    main()
