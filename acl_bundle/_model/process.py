"""Process-wide state of the device runtime: loads in progress, open models, fork and interpreter exit."""
from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref

from .. import _backend
from .._errors import InterpreterShutdownError
from .buffers import Ledger
from .gate import Gate

log = logging.getLogger("acl_bundle")

EXIT_WAIT_SECONDS = 5.0


class Lifecycle:
    """Process-wide: loads in progress, open models (for fork), and interpreter exit.

    At interpreter exit (``threading``'s exit hook, which runs before ``atexit`` and so
    before the models' finalizers) new loads are refused and loads in progress are
    waited for, so no finalizer tears ACL down under a load.  In a child created by
    ``os.fork()`` every model open in the parent is disowned: its calls raise, its close
    and finalizer return without touching ACL (fork copies no device state).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._loads = 0
        self._exiting = False
        self._open: weakref.WeakSet[Gate] = weakref.WeakSet()

    def begin_load(self, source: str) -> None:
        with self._cond:
            if self._exiting:
                raise InterpreterShutdownError(
                    f"BundleModel({source!r}) refused: the Python interpreter is shutting down")
            self._loads += 1

    def end_load(self) -> None:
        with self._cond:
            self._loads -= 1
            if not self._loads:
                self._cond.notify_all()

    def opened(self, gate: Gate) -> None:
        with self._cond:
            self._open.add(gate)

    def at_exit(self) -> None:
        with self._cond:
            self._exiting = True
            if not self._cond.wait_for(lambda: self._loads == 0, EXIT_WAIT_SECONDS):
                log.warning("interpreter exit: %d BundleModel load(s) still running after %.0f s", self._loads,
                            EXIT_WAIT_SECONDS)

    def after_fork_in_child(self) -> None:
        self._cond = threading.Condition(threading.Lock())  # a parent thread may have held it
        self._loads = 0
        for gate in list(self._open):
            gate.disown_after_fork()
        self._open = weakref.WeakSet()
        _backend.forget_after_fork()


lifecycle = Lifecycle()
os.register_at_fork(after_in_child=lifecycle.after_fork_in_child)
getattr(threading, "_register_atexit", atexit.register)(lifecycle.at_exit)


def release_quietly(gate: Gate, ledger: Ledger) -> list[str]:
    """weakref.finalize target: release, log problems (warnings may be off at exit), return them.

    Runs from close() (on the model's worker when close was called from the main thread),
    from garbage collection, or at interpreter exit while daemon threads may still be
    inside infer/update: it waits for in-flight calls first, and if they outlast
    EXIT_WAIT_SECONDS it leaks the resources rather than free memory a running call
    still uses.
    """
    if gate.forked:  # the parent's ACL handles mean nothing in a forked child
        return []
    if not gate.shutdown(EXIT_WAIT_SECONDS):
        log.warning(
            "calls still running after %.0f s; leaving this model's ACL resources to process exit", EXIT_WAIT_SECONDS
        )
        return ["in-flight calls did not finish; resources left to process exit"]
    problems = ledger.release()
    for p in problems:
        log.warning("teardown problem: %s", p)
    return problems
