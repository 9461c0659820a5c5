"""Checks that see a set of weights before it goes live, and can refuse it.

A check is a callable ``check(weights)`` taking ``{variable name: numpy array}``; it
refuses the weights by raising (any exception; :class:`WeightsRefused` by
convention) or by returning ``False``, and accepts them otherwise.  A golden check
(:func:`golden`) instead runs the new weights on the caller's inputs inside the
commit, before any ``infer`` can see them, and undoes the update if ``accept`` refuses
the outputs.  ``BundleModel.update(w, check=...)`` takes one check or a list.  The
watcher runs :func:`finite` by default (``CheckpointWatcher(..., check=None)`` turns
it off)::

    def my_check(weights):
        acl_bundle.checks.finite(weights)
        if abs(weights["fc1.bias"]).max() > 100:
            raise WeightsRefused("fc1.bias exploded")

    CheckpointWatcher(model, "ckpts/", check=my_check)
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Check", "Golden", "WeightsRefused", "finite", "golden", "run_check", "split_checks"]

Check = Callable[[Mapping[str, np.ndarray]], Any]
_CHUNK = 1 << 20  # elements per isfinite pass: a bounded temporary, whatever the array's size


class WeightsRefused(ValueError):
    """A check refused a set of weights; nothing was applied."""


def _refuses(verdict: Any) -> bool:
    """False, or numpy's False (``(abs(y) < 1).all()`` returns a numpy bool), refuses; anything else accepts."""
    return verdict is False or (isinstance(verdict, np.bool_) and not verdict)


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
    if _refuses(verdict):
        raise WeightsRefused(f"check {getattr(check, '__name__', check)!s:.60} returned False")


@dataclass(frozen=True)
class Golden:
    """A golden-input check: ``accept(outputs)`` judges the new weights' outputs on ``inputs``.

    ``inputs``: what ``infer`` takes (one array, a tuple of arrays in input order, or a
    mapping by input name); ``accept`` gets what ``infer`` would return and refuses by
    raising or returning False.  See :func:`golden`.
    """

    inputs: Any
    accept: Callable[[Any], Any]

    def judge(self, outputs: Any) -> None:
        try:
            verdict = self.accept(outputs)
        except WeightsRefused:
            raise
        except Exception as e:
            raise WeightsRefused(f"golden check refused the new weights' outputs: {type(e).__name__}: {e}") from e
        if _refuses(verdict):
            raise WeightsRefused(f"golden check {getattr(self.accept, '__name__', self.accept)!s:.60} refused the "
                                 "new weights' outputs (returned False)")


def golden(inputs: Any, accept: Callable[[Any], Any]) -> Golden:
    """A check that runs the new weights on ``inputs`` before any ``infer`` sees them.

    ::

        ref = m.infer(x)                                   # outputs of the weights trusted now
        near = lambda y: np.abs(y - ref).max() < 0.5       # how far an update may move them
        m.update(new, check=acl_bundle.checks.golden(x, near))

    Inside the commit (no ``infer`` runs meanwhile) the update graph runs, then the
    infer graph on ``inputs``; if ``accept`` refuses, the previous values of the changed
    variables are written back before inference resumes, so no caller ever gets an
    output of the refused weights.  Needs the model's history (the previous values
    must be known on the host): ``BundleModel(..., history=N)``.
    """
    if not callable(accept):
        raise TypeError(f"golden accept must be a callable(outputs), got {type(accept).__name__}")
    return Golden(inputs, accept)


def split_checks(check: Any) -> tuple[list[Check], list[Golden]]:
    """``check`` (None, one check, or a list of them) as (weight checks, golden checks)."""
    if check is None:
        return [], []
    items = list(check) if isinstance(check, Sequence) and not isinstance(check, (str, bytes)) else [check]
    plain: list[Check] = []
    goldens: list[Golden] = []
    for c in items:
        if isinstance(c, Golden):
            goldens.append(c)
        elif callable(c):
            plain.append(c)
        else:
            raise TypeError(
                f"check must be a callable(weights), a golden(...) check, or a list of them; got {type(c).__name__}"
            )
    return plain, goldens
