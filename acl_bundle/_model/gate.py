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

**Interrupts** (issue 25).  A Python signal handler — Ctrl-C's ``KeyboardInterrupt``, a
SIGTERM handler's ``SystemExit`` — runs only in the main thread, and may raise between
any two bytecodes of any Python frame, ``threading``'s own included (CPython's ``signal``
docs, "Note on Signal Handlers and Exceptions"; where a version checks for signals
changes between versions), so no lock taken in the main thread is sure to be released,
not even by ``with``: the exit of a ``with`` block is itself a line.  The rule here:
**the condition, its counters and the writer side are used only from threads other than
the main thread** (``BundleModel`` runs the main thread's update, stage, commit,
rollback, close and general-path infer on its own worker and waits for it with a bare
lock).  What the main thread's fast path takes is a *claim*: ``claims.setdefault(slot
key, its frame)``, one atomic dict operation, dropped with ``claims.pop``.  Every reader
claims the slot it uses, so a commit and shutdown wait for claims as for counted
readers.  A claim an interrupt left behind names a frame that is no longer running, so
whoever waits for it drops it (:func:`_running`).

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

import contextlib
import logging
import sys
import threading
import time
from typing import Any

from .._errors import ModelClosedError

log = logging.getLogger("acl_bundle")

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
        self._slots: dict[int, list[Any]] = {}  # batch -> every slot built (fast readers pick from these)
        # Who uses a slot now: slot key -> the frame of the call using it (see the module docstring).
        # Changed only by single dict operations, so by any thread, the main one included.
        self.claims: dict[int, Any] = {}
        self.held = False  # a commit waits or runs, or shut down: fast readers stay out (read without the lock)
        self._wake = threading.Lock()  # released when a claim is dropped; waiters for claims block on it
        self._wake.acquire()
        self.forked = False  # this is a forked child's copy: refuse everything, release nothing

    @classmethod
    def shut(cls, what: str) -> Gate:
        """An inert gate that refuses everything: a model's before its load succeeded."""
        gate = cls(1, what)
        gate.closed = gate.held = True
        return gate

    @property
    def reads(self) -> int:
        """Completed reads that ran on a slot (the infer counter; each slot counts its own)."""
        return sum(s.reads for slots in list(self._slots.values()) for s in list(slots))

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
        self._free, self._built, self._slot_waiters, self._slots, self.claims = {}, {}, 0, {}, {}
        self.held = True

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
            self.closed = self.held = True
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: self._ops == 0 and self._readers == 0, timeout):
                return False
        return self._wait_claims(None, timeout)  # fast readers in flight; new ones see ``held``

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

    def register(self, batch: int, slot: Any) -> None:
        """A slot ``acquire_slot`` let the caller build is built (and claimed by the caller)."""
        with self._cond:
            self._slots.setdefault(batch, []).append(slot)

    # -------------------------------------------------------------- claims
    def claim(self, slot: Any, frame: Any) -> None:
        """For a general-path reader (never the main thread): claim ``slot``, waiting while a fast reader has it."""
        key, claims = slot.key, self.claims
        while claims.setdefault(key, frame) is not frame:
            self._wait_claims(key, None)

    def release(self, slot: Any) -> None:
        """Drop the claim on ``slot`` (any thread) and wake whoever waits for claims."""
        self.claims.pop(slot.key, None)
        self.wake()

    def wake(self) -> None:
        """Wake whoever waits for claims to go (a commit, shutdown, a reader wanting a slot)."""
        with contextlib.suppress(RuntimeError):  # already released: the waiter will see it
            self._wake.release()

    def _wait_claims(self, key: int | None, timeout: float | None) -> bool:
        """Wait (never in the main thread) until slot ``key`` (None: every slot) is unclaimed.

        Claims that outlive a few short waits are checked: one whose frame no longer runs
        was left by an interrupted call and is dropped.
        """
        end = None if timeout is None else time.monotonic() + timeout
        claims, polls = self.claims, 0
        while (key in claims) if key is not None else claims:
            if polls >= 4:
                for k, frame in list(claims.items()):
                    if (key is None or k == key) and claims.get(k) is frame and not _running(frame):
                        claims.pop(k, None)
                        log.debug("slot %d: dropped the claim an interrupted call left", k)
                if not ((key in claims) if key is not None else claims):
                    break
            if end is not None and time.monotonic() >= end:
                return False
            self._wake.acquire(timeout=0.0005)
            polls += 1
        return True

    def end_read(self, batch: int, slot: Any) -> None:
        """Leave the reader section, giving ``slot`` back (None: the read got none)."""
        with self._cond:
            if slot is not None:
                self._free[batch].append(slot)
            self._readers -= 1
            if self._slot_waiters or (not self._readers and (self._writers_waiting or (self.closed and not self._ops))):
                self._cond.notify_all()

    def fast_slot(self, batch: int) -> Any:
        """For the fast path (any thread, the main one included): an idle, unclaimed slot of ``batch``, or None.

        None when nothing may start without the general path's protocol: closed, a commit
        waiting or running (the general path waits phase-fairly), no idle slot built.  The
        caller claims the slot (``claims.setdefault(slot.key, frame) is frame``), then
        checks ``held`` again before using it (a commit sets ``held`` before it looks at
        the claims), and pops its claim when done, calling :meth:`wake` if ``held``.
        """
        if self.held:
            return None
        claims = self.claims
        for slot in self._free.get(batch, ()):  # a slot a general-path reader took is not offered
            if slot.key not in claims:
                return slot
        return None

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
            self.held = True  # fast readers stay out from here
            try:
                while self._writer or self._readers or self._admit:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        self._wait_claims(None, None)  # fast readers in flight: each has claimed its slot

    def end_write(self) -> None:
        """Stop being the writer; the readers waiting now go before the next commit."""
        with self._cond:
            self._writer = False
            self.held = self.closed or bool(self._writers_waiting)
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


def _running(frame: Any) -> bool:
    """Whether ``frame`` is on some thread's stack now (its call is still in progress)."""
    for top in sys._current_frames().values():
        f: Any = top
        while f is not None:
            if f is frame:
                return True
            f = f.f_back
    return False
