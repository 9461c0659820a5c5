"""The fleet's errors, and the checks every fleet call shares (timeouts, Ray's import, a failure's reason)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_TIMEOUT = 30.0


def import_ray() -> Any:
    """The ``ray`` module, imported on first use (Ray is the optional extra ``ray``)."""
    try:
        import ray
    except ImportError:
        raise ImportError("acl_bundle.fleet needs Ray: pip install -e '.[ray]' in a checkout of acl_bundle") from None
    return ray


class FleetError(RuntimeError):
    """A fleet call failed; ``failed`` maps each replica at fault to what happened to it."""

    def __init__(self, message: str, failed: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.failed: dict[str, str] = dict(failed or {})


class PublishError(FleetError):
    """A publish lost replicas. ``committed``: False = every replica aborted, the fleet keeps ``fleet_step``
    (the previous step); True = the survivors committed, ``fleet_step`` is the new step."""

    def __init__(self, message: str, failed: Mapping[str, str], *, step: int, committed: bool,
                 fleet_step: int | None) -> None:
        super().__init__(message, failed)
        self.step, self.committed, self.fleet_step = step, committed, fleet_step


class NoReadyReplicaError(FleetError):
    """No replica is ready to serve (all evicted, or all still catching up)."""



def check_timeout(t: Any) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {t!r}")
    return float(t)


def failure_reason(e: BaseException, timeout: float) -> str:
    """One line saying what happened to a replica call (for errors and the eviction record)."""
    ray = import_ray()
    if isinstance(e, ray.exceptions.GetTimeoutError):
        return f"did not answer within {timeout} s"
    if isinstance(e, ray.exceptions.RayActorError):
        if getattr(e, "_actor_init_failed", False):  # Ray: "... raised in its creation task ... <last line>"
            last = str(e).strip().splitlines()[-1] if str(e).strip() else ""
            return f"its __init__ raised {last}" if last else "its __init__ raised"
        return "the replica process died"
    if isinstance(e, ray.exceptions.RayTaskError):
        cause = e.cause if getattr(e, "cause", None) is not None else e
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    return f"{type(e).__name__}: {e}"
