"""Checks that see a set of weights before it goes live, and can refuse it.

A check is a callable ``check(weights)`` taking ``{variable name: numpy array}``; it
refuses the weights by raising (any exception; :class:`WeightsRefused` by
convention) or by returning ``False``, and accepts them otherwise.  The watcher runs
:func:`finite` by default (``CheckpointWatcher(..., check=None)`` turns it off)::

    def my_check(weights):
        acl_bundle.checks.finite(weights)
        if abs(weights["fc1.bias"]).max() > 100:
            raise WeightsRefused("fc1.bias exploded")

    CheckpointWatcher(model, "ckpts/", check=my_check)
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = ["Check", "WeightsRefused", "finite", "run_check"]

Check = Callable[[Mapping[str, np.ndarray]], Any]
_CHUNK = 1 << 20  # elements per isfinite pass: a bounded temporary, whatever the array's size


class WeightsRefused(ValueError):
    """A check refused a set of weights; nothing was applied."""


def _non_finite(a: np.ndarray) -> int:
    """How many elements of ``a`` are NaN or +-inf (0 for integer and bool arrays)."""
    if a.dtype.kind not in "fc" or a.size == 0:
        return 0
    flat = a.reshape(-1)  # a view for the contiguous arrays checkpoints hold
    bad = 0
    for i in range(0, flat.size, _CHUNK):
        chunk = flat[i:i + _CHUNK]
        ok = np.isfinite(chunk)
        if not ok.all():
            bad += int(chunk.size - np.count_nonzero(ok))
    return bad


def finite(weights: Mapping[str, np.ndarray]) -> None:
    """Refuse weights holding NaN or +-inf (what a diverged trainer writes), naming the variables."""
    bad = []
    for name, a in weights.items():
        n = _non_finite(np.asarray(a))
        if n:
            bad.append(f"{name} ({n} of {np.asarray(a).size})")
    if bad:
        shown = bad if len(bad) <= 10 else bad[:10] + [f"and {len(bad) - 10} more"]
        raise WeightsRefused(f"non-finite values (NaN or inf) in {len(bad)} variable(s): {', '.join(shown)}")


def run_check(check: Check | None, weights: Mapping[str, np.ndarray]) -> None:
    """Run ``check`` on ``weights``; raise :class:`WeightsRefused` (chained to the check's error) if it refuses."""
    if check is None:
        return
    try:
        verdict = check(weights)
    except WeightsRefused:
        raise
    except Exception as e:
        raise WeightsRefused(f"check {getattr(check, '__name__', check)!s:.60} refused the weights: "
                             f"{type(e).__name__}: {e}") from e
    if verdict is False:
        raise WeightsRefused(f"check {getattr(check, '__name__', check)!s:.60} returned False")
