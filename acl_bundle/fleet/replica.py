"""One replica: the Ray actor that owns a BundleModel and takes part in two-phase publishes."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import import_ray
from .transport import Transport


class StageCancelled(Exception):
    """A stage of a publish that was aborted meanwhile."""


class ReplicaActor:
    """The body of one replica (run as a Ray actor with several threads: infer goes on during a stage).

    ``hooks`` are for fault-injection tests: ``init_delay`` / ``stage_delay`` / ``commit_delay`` /
    ``catch_up_delay`` (seconds, one-shot: the call waits that long, or until aborted, before doing its work)."""

    def __init__(self, name: str, bundle: str, device_id: int, backend: str | None,
                 model_options: Mapping[str, Any], transport: Transport, hooks: Mapping[str, float] | None) -> None:
        from .._backend import is_simulator, resolve_acl
        from ..model import BundleModel

        self._hooks = dict(hooks or {})
        self._wake = threading.Event()
        self._delay("init_delay")
        acl = resolve_acl(source=bundle, force_sim=backend == "sim")  # the rule BundleModel applies
        if is_simulator(acl):  # however the simulator was chosen, this simulated host has a device per replica
            from .. import sim

            sim.configure(device_count=max(2, device_id + 1))
        self._name = name
        self._model = BundleModel(bundle, device_id=device_id, acl=acl, **dict(model_options))
        self._transport = transport
        self._lock = threading.Lock()
        self._staged: tuple[int, Any] | None = None
        self._aborted: set[int] = set()
        self._ready = False

    def info(self) -> dict[str, Any]:
        m = self._model
        return {"pid": os.getpid(), "node": import_ray().get_runtime_context().get_node_id(),
                "variables": [(v.name, v.shape, v.dtype.str) for v in m.variables],
                "step": m.step, "version": m.version, "ready": self._ready}

    def set_hooks(self, **hooks: float) -> None:
        self._hooks.update(hooks)

    def _delay(self, hook: str) -> None:
        seconds = self._hooks.pop(hook, None)
        if seconds:
            self._wake.clear()
            self._wake.wait(seconds)

    def mark_ready(self) -> None:
        self._ready = True

    def stage(self, weights: list[Any], step: int, txn: int, timeout: float) -> dict[str, float]:
        """Phase 1 of publish ``txn``: fetch, validate and copy to the device.

        Returns where the time went: ``called`` (wall clock when the call began here), ``receive``
        (reading the payload), ``stage`` (``BundleModel.stage``: validation and the host->device copy)."""
        called = time.time()
        self._delay("stage_delay")
        if txn in self._aborted:
            raise StageCancelled(f"publish {txn} was aborted")
        t0 = time.perf_counter()
        payload = self._transport.receive(weights[0], timeout)
        t1 = time.perf_counter()
        staged = self._model.stage(payload, step=step, timeout=timeout)
        t2 = time.perf_counter()
        with self._lock:
            if txn in self._aborted:
                staged.abort()
                raise StageCancelled(f"publish {txn} was aborted")
            self._staged = (txn, staged)
        return {"called": called, "receive": t1 - t0, "stage": t2 - t1}

    def commit(self, txn: int, at: float | None = None) -> tuple[int | None, float, dict[str, float]]:
        """Phase 2: make publish ``txn`` live; return (step, wall-clock time the commit ended, timings).

        ``at``: a wall-clock instant (``time.time()``; one host, one clock) before which the commit does
        not start, so that replicas reached at different moments go live together.  Timings: ``called``
        (wall clock when the call began here), ``wait`` (seconds spent waiting for ``at``), ``commit``."""
        called = time.time()
        with self._lock:
            if self._staged is None or self._staged[0] != txn:
                raise RuntimeError(f"replica {self._name}: publish {txn} is not staged here")
            staged = self._staged[1]
            self._staged = None
        self._delay("commit_delay")
        waited = 0.0
        if at is not None:
            waited = max(0.0, at - time.time())
            if waited:
                time.sleep(waited)
        t0 = time.perf_counter()
        version = staged.commit()
        end = time.time()
        return version.step, end, {"called": called, "wait": waited, "commit": time.perf_counter() - t0}

    def abort(self, txn: int) -> None:
        with self._lock:
            self._aborted.add(txn)
            self._wake.set()
            if self._staged is not None and self._staged[0] == txn:
                self._staged[1].abort()
                self._staged = None

    def catch_up(self, handles: list[Any], step: int | None, timeout: float) -> int | None:
        """Apply the fleet's current weights (payloads oldest first; later ones win) as one update."""
        self._delay("catch_up_delay")
        merged: dict[str, np.ndarray] = {}
        for h in handles:
            merged.update(self._transport.receive(h, timeout))
        if merged:
            self._model.update(merged, step=step)
        self._ready = True
        return self._model.step

    def infer(self, inputs: tuple[Any, ...]) -> tuple[Any, int | None]:
        if not self._ready:
            raise RuntimeError(f"replica {self._name} is not ready (has not applied the fleet's step yet)")
        y, version = self._model.infer(*inputs, return_version=True)
        return y, version.step

    def update_locally(self, weights: Any, step: int | None) -> float:
        """One replica's own update of the same payload (the benchmark's baseline); returns seconds."""
        w = self._transport.receive(weights[0], None)
        t0 = time.perf_counter()
        self._model.update(w, step=step)
        return time.perf_counter() - t0

    def close(self) -> None:
        self._model.close()

