"""Host copies of applied weights (opt-in): what undoing a refused update and ``rollback`` need.

ACL has no call that reads a bundle's variables back, so the only way to restore
earlier weights is to have kept them.  With history on, the model keeps on the host:

* the **current value** of every variable an update has set since load (at most the
  variables' own size), so a refused update can be undone inside the commit;
* the values each of the last ``max_sets`` updates **replaced**, within ``max_bytes``
  (oldest dropped first), so :meth:`BundleModel.rollback` can restore an earlier
  version exactly.

A variable no update has set since load has no known value (the init graph's or the
bundle's own values cannot be read back): undoing or rolling back a change to it is
refused with an error naming it.  All methods are called under the updater's lock;
:attr:`History.entries` may be read from any thread.
"""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from .description import Variable


@dataclass(frozen=True)
class HistoryEntry:
    """One applied update: the version it produced, what it set, and where it came from."""

    version: int
    variables: tuple[str, ...]
    nbytes: int
    source: str | None
    step: int | None
    time: float


class History:
    """The model's host-side weight history (see the module docstring)."""

    def __init__(self, variables: Sequence[Variable], max_sets: int, max_bytes: int) -> None:
        self._variables = variables
        self.max_sets = max_sets
        self.max_bytes = max_bytes
        self._current: dict[int, np.ndarray] = {}
        # (entry, previous values {index: array or None (unknown)}), oldest first
        self._entries: collections.deque[tuple[HistoryEntry, dict[int, np.ndarray | None]]] = collections.deque()
        self._lock = threading.Lock()  # for readers of entries/nbytes from other threads

    @property
    def enabled(self) -> bool:
        return self.max_sets > 0

    @property
    def entries(self) -> list[HistoryEntry]:
        with self._lock:
            return [e for e, _ in self._entries]

    @property
    def nbytes(self) -> int:
        """Host bytes held: current values plus replaced values still kept."""
        with self._lock:
            return self._bytes()

    def _bytes(self) -> int:
        seen: dict[int, int] = {id(a): a.nbytes for a in self._current.values()}
        for _, prev in self._entries:
            seen.update((id(a), a.nbytes) for a in prev.values() if a is not None)
        return sum(seen.values())

    @staticmethod
    def copy(changed: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """Private, read-only host copies of the arrays about to be applied (the caller's may change later)."""
        out = {}
        for i, a in changed.items():
            c = np.array(a, copy=True, order="C")
            c.flags.writeable = False
            out[i] = c
        return out

    def unknown(self, indices: Iterable[int]) -> list[str]:
        """Names of the variables among ``indices`` whose current value is not known on the host."""
        return [self._variables[i].name for i in indices if i not in self._current]

    def current(self, indices: Iterable[int]) -> dict[int, np.ndarray]:
        """The known current values of ``indices`` (call :meth:`unknown` first)."""
        return {i: self._current[i] for i in indices}

    def record(self, version: int, applied: dict[int, np.ndarray], source: str | None, step: int | None) -> None:
        """Note that ``applied`` (owned copies, see :meth:`copy`) is now live as ``version``."""
        names = tuple(self._variables[i].name for i in applied)
        entry = HistoryEntry(version, names, sum(a.nbytes for a in applied.values()), source, step, time.time())
        with self._lock:
            previous = {i: self._current.get(i) for i in applied}
            self._current.update(applied)
            self._entries.append((entry, previous))
            while self._entries and (len(self._entries) > self.max_sets or self._bytes() > self.max_bytes):
                if len(self._entries) == 1 and len(self._entries) <= self.max_sets:
                    break  # the newest entry stays: it is what undoes the next refusal's predecessor
                self._entries.popleft()

    def target(self, to: int | None, version: int) -> tuple[int, dict[int, np.ndarray]]:
        """The variables to set (and their values) to bring ``version`` back to version ``to``.

        ``to`` None: the version before the last update.  ValueError when ``to`` is not
        an earlier version still covered by the history, or a value it needs is unknown.
        """
        with self._lock:
            entries = list(self._entries)
        if not entries:
            raise ValueError("no update is in the history (history is off, or nothing was applied since load)")
        if to is None:
            to = entries[-1][0].version - 1
        if isinstance(to, bool) or not isinstance(to, (int, np.integer)):
            raise TypeError(f"rollback to= must be a version number (int) or None, got {to!r}")
        to = int(to)
        oldest = entries[0][0].version - 1
        if not oldest <= to < version:
            raise ValueError(f"cannot roll back to version {to}: the history covers versions {oldest} to {version - 1} "
                             f"(the current version is {version})")
        values: dict[int, np.ndarray] = {}
        unknown: list[str] = []
        for entry, previous in entries:
            if entry.version <= to:
                continue
            for i, a in previous.items():
                if i in values or self._variables[i].name in unknown:
                    continue
                if a is None:
                    unknown.append(self._variables[i].name)
                else:
                    values[i] = a
        if unknown:
            raise ValueError(
                f"cannot roll back to version {to}: the value of {len(unknown)} variable(s) at that version "
                f"is not known on the host (never set by an update since load): {unknown[:10]}"
            )
        return to, values
