"""How published weights travel from the driver to the replicas."""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from .errors import import_ray


class Transport(Protocol):
    """How published weights travel to replicas.  Only the object store exists; a device-side
    collective would implement the same three calls (``send`` on the driver once per publish,
    ``receive`` in each replica, ``release`` when the fleet no longer needs a payload)."""

    def send(self, weights: dict[str, np.ndarray]) -> Any: ...

    def receive(self, handle: Any, timeout: float | None) -> dict[str, np.ndarray]: ...

    def release(self, handle: Any) -> None: ...


class ObjectStoreTransport:
    """Ray's object store (CPU, shared memory on a host; Ray moves it between hosts).

    ``send`` is one ``ray.put``; replicas on the same host read the arrays zero-copy."""

    def send(self, weights: dict[str, np.ndarray]) -> Any:
        return import_ray().put(weights)

    def receive(self, handle: Any, timeout: float | None) -> dict[str, np.ndarray]:
        return import_ray().get(handle, timeout=timeout)

    def release(self, handle: Any) -> None:
        pass  # dropping the last ObjectRef frees the object

