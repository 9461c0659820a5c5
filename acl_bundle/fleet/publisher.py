"""Publishing from training processes by name: the trainer's :class:`Publisher` and the fleet's inbox actor."""
from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import DEFAULT_TIMEOUT, FleetError, check_timeout, import_ray


class Inbox:
    """Named actor between trainers and a fleet's driver: a queue of publish requests and their outcomes."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: list[tuple[int, list[Any], int]] = []
        self._outcomes: dict[int, Any] = {}
        self._tickets = itertools.count(1)

    def submit(self, handles: list[Any], step: int) -> int:
        with self._cond:
            ticket = next(self._tickets)
            self._queue.append((ticket, handles, step))
            self._cond.notify_all()
            return ticket

    def take(self, timeout: float) -> tuple[int, list[Any], int] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._queue, timeout)
            return self._queue.pop(0) if self._queue else None

    def done(self, ticket: int, outcome: Any) -> None:
        with self._cond:
            self._outcomes[ticket] = outcome
            self._cond.notify_all()

    def outcome(self, ticket: int, timeout: float) -> Any:
        with self._cond:
            self._cond.wait_for(lambda: ticket in self._outcomes, timeout)
            return self._outcomes.pop(ticket, None)


class Publisher:
    """The trainer's side: ``Publisher("policy").publish(weights, step)`` from any process of the Ray
    cluster (a training script, task or actor).  The weights go into the object store once, here;
    the fleet's driver (``fleet.serve_publisher("policy")``) does the two-phase publish."""

    def __init__(self, name: str, namespace: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.name, self.namespace, self.timeout = name, namespace, check_timeout(timeout)
        self._inbox: Any = None

    def publish(self, weights: Mapping[str, np.ndarray], step: int, *, timeout: float | None = None) -> list[str]:
        """Publish and wait for the outcome; returns the replicas that committed, raises FleetError otherwise."""
        ray = import_ray()
        t = self.timeout if timeout is None else check_timeout(timeout)
        if self._inbox is None:
            try:
                self._inbox = ray.get_actor(self.name, namespace=self.namespace)
            except ValueError:
                raise FleetError(f"no fleet serves publisher {self.name!r} (Fleet.serve_publisher)") from None
        ticket = ray.get(self._inbox.submit.remote([ray.put(dict(weights))], step), timeout=t)
        outcome = ray.get(self._inbox.outcome.remote(ticket, t), timeout=t + 5)
        if outcome is None:
            raise TimeoutError(f"publisher {self.name!r}: step {step} had no outcome within {t} s")
        kind, detail = outcome
        if kind != "ok":
            raise FleetError(f"publisher {self.name!r}: step {step} failed: {detail}")
        return detail

    def __reduce__(self) -> Any:  # travels to trainer tasks/actors by name, not by handle
        return (Publisher, (self.name, self.namespace, self.timeout))

