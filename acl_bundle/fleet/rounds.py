"""One round of calls to the replicas of a publish (one call each): wait for all, name who failed or is late."""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from .errors import failure_reason, import_ray


def wait_round(rs: Sequence[Any], refs: list[Any], timeout: float, what: str,
               results: dict[str, Any] | None = None) -> dict[str, str]:
    """Wait for one call per replica; return {name: why} for each that failed or is late.

    A stage failure ends the wait at once (no point waiting for the others)."""
    ray = import_ray()
    by_ref = dict(zip(refs, rs))
    failed: dict[str, str] = {}
    pending = list(refs)
    deadline = time.monotonic() + timeout
    while pending:
        # stage: one at a time, so that a failure ends the wait at once; the others: all, in one wait and one get
        n = 1 if what == "stage" else len(pending)
        done, pending = ray.wait(pending, num_returns=n, timeout=max(0.0, deadline - time.monotonic()))
        if not done:
            break
        try:
            got: list[tuple[Any, Any, BaseException | None]] = [
                (ref, v, None) for ref, v in zip(done, ray.get(done, timeout=0))]
        except Exception:  # one failed: find which, one by one
            got = []
            for ref in done:
                try:
                    got.append((ref, ray.get(ref, timeout=0), None))
                except Exception as e:
                    got.append((ref, None, e))
        for ref, value, err in got:
            r = by_ref[ref]
            if err is not None:
                failed[r.name] = f"{what} failed: {failure_reason(err, timeout)}"
            elif results is not None:
                results[r.name] = value
        if failed and what == "stage":
            break
    for ref in pending:
        if what != "stage" or not failed:
            failed[by_ref[ref].name] = f"{what} did not answer within {timeout} s"
    return failed
