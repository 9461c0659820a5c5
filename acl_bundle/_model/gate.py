"""The admission gate of one model: in-flight calls, phase-fair readers and writer, infer slots.

One :class:`Gate` per :class:`~acl_bundle.BundleModel`, one ``threading.Condition``
for all of it, no ACL.  Every public method is one ``with`` block on that condition;
the waiting is in the private helpers.  What it decides:

* **in-flight calls** (``enter``/``exit``, and every read): ``shutdown`` refuses new
  ones and waits until none is left, so nothing is released under a running call;
* **readers and the writer**: an ``infer`` is a reader from ``begin_read`` to
  ``end_read``, a commit is the writer from ``begin_write`` to ``end_write``; the writer
  waits for the readers in flight and holds new ones back.  Phase-fair: the readers
  waiting when a commit ends are admitted before the next commit, so neither a
  back-to-back update stream nor heavy inference starves the other;
* **slots**: per batch size at most ``max_slots`` infer slots exist; a reader takes a
  free one, or is told to build one (``acquire_slot`` returns None), or waits for one.

Why a reader holds the shared side across copy-in, execute *and* copy-out, although a
commit conflicts only with ``execute`` (issue 16 asked to measure the shorter section):
``scripts/reader_section.py`` opens one bundle twice, today's section against one held
only around ``execute`` and the version read (copies outside, the slot still owned by
the call), and measures both interleaved in one process.  One run on the project's
shared 2-core machine (``--rounds 8``): the longest stall under 10 Hz full updates,
execute-only / today, paired median over rounds, was 1.41 (1 infer thread) and 1.06
(4 threads) on the 7 MiB MLP, 1.12 and 1.08 on a 64 MiB embedding bundle, with rounds
from 0.15 to 9.4: no gain that rises above the noise, not even with more threads than
cores, where it was expected (the copies of these models are a few KiB; the stall is
the readers' execute plus the GIL and the OS scheduler).  And the shorter section
costs two more lock round trips per call: the tiny MLP's ``infer`` was 1.11x today's
(quartiles 1.02..1.18), against the <= 1.05x-of-raw goal.  So the section stays as it
is: one lock round trip in, one out, the version read inside it.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .._errors import ModelClosedError

#: longest time a committing thread waits for the readers it held back to start (see Gate.hand_off)
HAND_OFF_S = 0.002


class Gate:
    """Admission state machine of one model (see the module docstring)."""

    def __init__(self, max_slots: int, what: str) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._what = what  # names the model in ModelClosedError
        self._max_slots = max_slots
        # All of the following is guarded by _cond.
        self.closed = False  # set once by shutdown(); read without the lock as a hint
        self._ops = 0  # public calls in flight other than reads; shutdown waits for 0 of both
        self._readers = 0  # reads between begin_read and end_read (in flight too)
        self._writer = False  # a commit runs
        self._writers_waiting = 0
        self._readers_waiting = 0  # reads blocked by a running or waiting commit
        self._admit = 0  # readers admitted ahead of the next commit (phase fairness)
        self._free: dict[int, list[Any]] = {}  # batch -> idle slots
        self._built: dict[int, int] = {}  # batch -> slots built or being built
        self._slot_waiters = 0
        self.reads = 0  # completed reads that ran on a slot (the infer counter)
        self.forked = False  # this is a forked child's copy: refuse everything, release nothing

    def _refuse(self) -> ModelClosedError:
        if self.forked:
            return ModelClosedError(
                f"{self._what} was opened before os.fork() in the parent process; ACL state does not survive "
                "fork, so it cannot be used in the child. Open models after forking, or use the 'spawn' start method"
            )
        return ModelClosedError(f"{self._what} is closed")

    def disown_after_fork(self) -> None:
        """In a forked child: a fresh lock (a parent thread may have held the old one), everything refused."""
        self._cond = threading.Condition(threading.Lock())
        self.forked = self.closed = True
        self._ops = self._readers = self._writers_waiting = self._readers_waiting = self._admit = 0
        self._writer = False
        self._free, self._built, self._slot_waiters = {}, {}, 0

    # -------------------------------------------------------------- in-flight calls
    def enter(self) -> None:
        """Register an in-flight call (not a reader); raise ModelClosedError once shut down."""
        with self._cond:
            if self.closed:
                raise self._refuse()
            self._ops += 1

    def exit(self) -> None:
        with self._cond:
            self._ops -= 1
            if not self._ops and not self._readers:
                self._cond.notify_all()

    def shutdown(self, timeout: float | None = None) -> bool:
        """Refuse new calls, wake every waiter, wait for in-flight calls; False if they outlast ``timeout``."""
        with self._cond:
            self.closed = True
            self._cond.notify_all()
            return self._cond.wait_for(lambda: self._ops == 0 and self._readers == 0, timeout)

    # -------------------------------------------------------------- readers
    def begin_read(self, batch: int) -> Any:
        """Become a reader (in-flight) and take a free slot of ``batch``; None if none is free."""
        with self._cond:
            if self._writer or (self._writers_waiting and not self._admit):
                self._wait_to_read()
            if self.closed:
                raise self._refuse()
            self._readers += 1
            free = self._free.get(batch)
            return free.pop() if free else None

    def acquire_slot(self, batch: int) -> Any:
        """For a reader without a slot: a freed slot, or None = build one (counted; see ``build_failed``)."""
        with self._cond:
            while True:
                free = self._free.get(batch)
                if free:
                    return free.pop()
                if self._built.get(batch, 0) < self._max_slots:
                    break
                self._wait_for_slot()
            self._built[batch] = self._built.get(batch, 0) + 1
            self._free.setdefault(batch, [])
            return None

    def build_failed(self, batch: int) -> None:
        """A slot that ``acquire_slot`` let the caller build was not built."""
        with self._cond:
            self._built[batch] -= 1
            self._cond.notify_all()

    def end_read(self, batch: int, slot: Any) -> None:
        """Leave the reader section, giving ``slot`` back (None: the read got none)."""
        with self._cond:
            if slot is not None:
                self._free[batch].append(slot)
                self.reads += 1
            self._readers -= 1
            if self._slot_waiters or (not self._readers and (self._writers_waiting or (self.closed and not self._ops))):
                self._cond.notify_all()

    def fast_reader(self) -> tuple[Callable[[int], Any], Callable[[int, Any], None]]:
        """``(try_begin, end)`` for the specialised infer: the reader protocol on the condition's own lock.

        ``try_begin(batch)`` becomes a reader and takes an idle slot of ``batch`` only when
        nothing would make the general :meth:`begin_read` wait or refuse (no commit running
        or waiting, not closed, an idle slot); otherwise it returns None and changes
        nothing, and the caller takes the general path, which waits phase-fairly.
        ``end(batch, slot)`` is :meth:`end_read` with a slot.  Holding the underlying lock
        (``Condition`` uses it as its own) skips the ``Condition`` frames, not the protocol.
        """
        lock = self._cond._lock  # type: ignore[attr-defined]
        free = self._free

        def try_begin(batch: int) -> Any:
            if self.closed:  # also after fork: the child's gate has a new lock, this one may be held
                return None
            with lock:
                if self._writer or self._writers_waiting or self.closed:
                    return None
                idle = free.get(batch)
                if not idle:
                    return None
                self._readers += 1
                return idle.pop()

        def end(batch: int, slot: Any) -> None:
            with lock:
                free[batch].append(slot)
                self.reads += 1
                self._readers -= 1
                if self._slot_waiters or (
                    not self._readers and (self._writers_waiting or (self.closed and not self._ops))
                ):
                    self._cond.notify_all()

        return try_begin, end

    def _wait_to_read(self) -> None:
        """Wait (holding the lock) while a commit runs or waits, unless this reader was admitted."""
        self._readers_waiting += 1
        try:
            while not self.closed and (self._writer or (self._writers_waiting and not self._admit)):
                self._cond.wait()
        finally:
            self._readers_waiting -= 1
            if self._admit > self._readers_waiting:  # this reader used (or gave up) its admission
                self._admit = self._readers_waiting
                if not self._admit:
                    self._cond.notify_all()

    def _wait_for_slot(self) -> None:
        self._slot_waiters += 1
        try:
            self._cond.wait()
        finally:
            self._slot_waiters -= 1

    # -------------------------------------------------------------- the writer
    def begin_write(self) -> None:
        """Become the writer: wait for readers in flight and for readers admitted ahead of this commit."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers or self._admit:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True

    def end_write(self) -> None:
        """Stop being the writer; the readers waiting now go before the next commit."""
        with self._cond:
            self._writer = False
            self._admit = self._readers_waiting
            self._cond.notify_all()

    def hand_off(self, timeout: float = HAND_OFF_S) -> None:
        """After :meth:`end_write`: block until the readers it admitted have started, at most ``timeout`` s.

        A woken reader needs the GIL, and the committing thread keeps it for its own
        bookkeeping until it next blocks (up to a switch interval, 5 ms by default).
        Blocking here for the few microseconds the readers take to start gives them the
        GIL at once.  Measured with ``scripts/hand_off.py --threads 1 2 --rounds 6`` (7 MiB
        MLP, with and without, interleaved; three runs on the 2-core machine, the last with
        ``--rounds 8``), longest stall / its commit, without -> with: one infer thread
        1.42 -> 1.33, 1.32 -> 1.39, 1.51 -> 1.78 (no gain above the noise); two threads
        1.88 -> 1.70, 2.82 -> 1.83, 2.00 -> 1.98.  Kept for the two-thread case, at the cost
        of ``update`` returning after its readers started (at most ``timeout``); nothing
        waits when no reader was held back.
        """
        with self._cond:
            if self._admit and not self.closed:
                self._cond.wait_for(lambda: not self._admit or self.closed, timeout)
