"""The model's own thread, where the main thread's model calls run out of reach of signal handlers.

A Python signal handler (Ctrl-C's ``KeyboardInterrupt``, a SIGTERM handler's
``SystemExit``) runs only in the main thread, between any two bytecodes of any Python
frame, ``threading``'s included (CPython's ``signal`` docs, "Note on Signal Handlers and
Exceptions"; where a given CPython version checks for signals changes between versions,
so no code may rely on it).  Lock-holding bookkeeping interrupted half-way leaks a lock
or a counter, and every other thread then waits forever.  So when the main thread
updates, stages, commits, aborts, rolls back, closes, or takes ``infer``'s general path,
the call runs here instead, and the main thread waits on a bare lock (a C call: an
interrupt raises out of the wait, never inside the bookkeeping).

An interrupted caller marks its job cancelled, waits for the job to end (a job stops at
its next safe point: an update not yet committed is aborted, a commit under way
completes), then raises its interrupt.  So the interrupted call either took full effect
or none, and the caller gets its ``KeyboardInterrupt`` at the latest when the current
device call returns.  (An interrupt that lands on one of the few lines outside the wait,
before the job is marked, lets the caller go at once; the job then runs to its end on
the worker: full effect, a moment after the caller got its interrupt, never a part.)
Other threads call the model directly: no signal handler runs in them.

Cost, measured: see ``docs/reliability.md`` (interrupts).
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any


class Job:
    """One call handed to the worker; ``cancelled`` is set when its caller was interrupted."""

    __slots__ = ("fn", "args", "done", "result", "error", "cancelled", "finished")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args
        self.done = threading.Lock()
        self.done.acquire()  # released by the worker when the job has ended
        self.result: Any = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.finished = False

    def run(self) -> None:
        try:
            self.result = self.fn(self, *self.args)
        except BaseException as e:
            self.error = e
        finally:
            self.fn = self.args = None  # type: ignore[assignment]
            self.finished = True
            self.done.release()

    def wait(self) -> Any:
        """Wait for the job; an interrupt cancels it, is held until the job ended, then raised."""
        interrupt: BaseException | None = None
        while not self.finished:
            try:
                self.done.acquire(timeout=0.05)  # ``finished`` decides, wherever an interrupt lands
            except BaseException as e:  # a signal handler raised in this (the main) thread
                if interrupt is None:
                    interrupt = e
                self.cancelled = True
        error, self.error = self.error, None
        if interrupt is not None:
            if error is not None and hasattr(interrupt, "add_note"):
                interrupt.add_note(f"the interrupted model call failed meanwhile: {error!r}")
            raise interrupt
        if error is not None:
            raise error
        return self.result


class _Inline:
    """The job argument of a call made directly (not from the main thread): never cancelled."""

    __slots__ = ()
    cancelled = False


INLINE: Any = _Inline()


class Worker:
    """One daemon thread per model, running jobs in order; it ends when the model is garbage-collected."""

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        get = self._queue.get
        while True:
            job = get()
            if job is None:
                return
            job.run()
            del job  # drop the call's arguments before waiting for the next one

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(job, *args)`` on the worker thread; the caller waits (see the module docstring)."""
        job = Job(fn, args)
        self._queue.put(job)  # one C call: an interrupt lands before it (nothing sent) or after (the job runs)
        return job.wait()

    def stop(self) -> None:
        """Let the thread end after the jobs already queued (the model is gone: no call can follow)."""
        self._queue.put(None)


def in_main_thread() -> bool:
    """True in the thread Python runs signal handlers in."""
    return threading.current_thread() is threading.main_thread()
