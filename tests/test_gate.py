"""The admission gate on its own (no ACL): slots, readers vs the writer, phase fairness, shutdown.

Each test drives threads to a chosen state and checks who is admitted; waits are for
states (``_until``), never for times, so the order is deterministic.
"""
from __future__ import annotations

import threading
import time

import pytest

from acl_bundle import ModelClosedError
from acl_bundle._model.gate import Gate


def _until(pred, what: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.001)


class Runner(threading.Thread):
    """Run ``fn`` in a thread; keep its result or exception."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.result, self.error, self.done = fn, None, None, threading.Event()
        self.start()

    def run(self):
        try:
            self.result = self.fn()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.done.set()


def test_slot_limit_then_a_freed_slot_goes_to_the_waiting_reader():
    g = Gate(max_slots=2, what="m")
    assert g.begin_read(1) is None and g.acquire_slot(1) is None  # reader A builds slot 1
    assert g.begin_read(1) is None and g.acquire_slot(1) is None  # reader B builds slot 2
    assert g.begin_read(1) is None
    c = Runner(lambda: g.acquire_slot(1))  # reader C: two slots exist and both are busy
    _until(lambda: g._slot_waiters == 1, "C waits for a slot")
    assert not c.done.is_set()
    g.end_read(1, "slot-A")
    assert c.done.wait(20) and c.error is None
    assert c.result == "slot-A" and g._built[1] == 2
    g.end_read(1, "slot-B")
    g.end_read(1, c.result)
    assert g.begin_read(1) in ("slot-A", "slot-B")  # reused, not rebuilt
    assert g._readers == 1  # (reads are counted by the slots themselves, under their locks)


def test_failed_build_returns_its_permit():
    g = Gate(max_slots=1, what="m")
    g.begin_read(4)
    assert g.acquire_slot(4) is None
    g.build_failed(4)
    assert g.acquire_slot(4) is None  # the permit is free again
    g.end_read(4, "s")
    assert g._readers == 0 and g._ops == 0 and g._free[4] == ["s"]


def test_a_commit_waits_for_readers_and_holds_new_ones_back():
    g = Gate(max_slots=4, what="m")
    g.begin_read(1)
    w = Runner(g.begin_write)
    _until(lambda: g._writers_waiting == 1, "the writer waits")
    r2 = Runner(lambda: g.begin_read(1))
    _until(lambda: g._readers_waiting == 1, "a new reader is held back")
    assert not w.done.is_set() and not r2.done.is_set()
    g.end_read(1, None)  # the last reader leaves: the writer goes, the new reader still waits
    assert w.done.wait(20) and w.error is None and g._writer
    assert not r2.done.is_set()
    g.end_write()
    assert r2.done.wait(20) and r2.error is None and g._readers == 1


def test_phase_fair_readers_waiting_at_commit_end_go_before_the_next_commit():
    g = Gate(max_slots=4, what="m")
    g.begin_write()  # commit 1 runs
    r = Runner(lambda: g.begin_read(1))
    _until(lambda: g._readers_waiting == 1, "a reader waits for commit 1")
    w2 = Runner(g.begin_write)
    _until(lambda: g._writers_waiting == 1, "commit 2 waits")
    g.end_write()  # commit 1 ends: the waiting reader is admitted ahead of commit 2
    assert r.done.wait(20) and r.error is None
    assert not w2.done.is_set() and g._readers == 1
    g.end_read(1, None)
    assert w2.done.wait(20) and w2.error is None
    g.end_write()


def test_back_to_back_commits_do_not_starve_a_reader():
    g = Gate(max_slots=4, what="m")
    g.begin_write()
    r = Runner(lambda: g.begin_read(1))
    _until(lambda: g._readers_waiting == 1, "the reader waits")
    writers = [Runner(g.begin_write) for _ in range(3)]
    _until(lambda: g._writers_waiting == 3, "three more commits wait")
    g.end_write()
    assert r.done.wait(20) and r.error is None  # before any of the three
    assert not any(w.done.is_set() for w in writers)
    g.end_read(1, None)
    for _ in writers:  # then they run one at a time
        _until(lambda: g._writer, "a commit runs")
        g.end_write()
    for w in writers:
        assert w.done.wait(20) and w.error is None


def test_shutdown_wakes_waiting_readers_with_a_clear_error_and_waits_for_in_flight_calls():
    g = Gate(max_slots=4, what="BundleModel('x.om')")
    g.enter()  # an update in flight ...
    g.begin_write()  # ... committing
    readers = [Runner(lambda: g.begin_read(1)) for _ in range(3)]
    _until(lambda: g._readers_waiting == 3, "readers wait for the commit")
    closer = Runner(g.shutdown)
    for r in readers:  # woken by shutdown, not by the commit's end
        assert r.done.wait(20)
        assert isinstance(r.error, ModelClosedError) and "BundleModel('x.om') is closed" in str(r.error)
    assert not closer.done.is_set()  # the update is still in flight
    g.end_write()
    g.exit()
    assert closer.done.wait(20) and closer.result is True
    with pytest.raises(ModelClosedError):
        g.enter()
    with pytest.raises(ModelClosedError):
        g.begin_read(1)


def test_shutdown_timeout_reports_calls_still_in_flight():
    g = Gate(max_slots=1, what="m")
    g.begin_read(1)
    assert g.shutdown(timeout=0.01) is False
    g.end_read(1, None)
    assert g.shutdown(timeout=5) is True


def test_hand_off_returns_once_the_held_back_readers_started_and_never_waits_for_none():
    g = Gate(max_slots=2, what="m")
    g.begin_write()
    readers = [Runner(lambda: g.begin_read(1)) for _ in range(2)]
    _until(lambda: g._readers_waiting == 2, "two readers held back by the commit")
    g.end_write()
    assert g._admit == 2  # admitted ahead of any next commit
    h = Runner(lambda: g.hand_off(timeout=None))  # returns once both have taken their admission
    assert h.done.wait(20) and h.error is None
    assert g._admit == 0 and g._readers == 2
    for r in readers:
        assert r.done.wait(20) and r.error is None
        g.end_read(1, r.result)
    # no reader held back: nothing to wait for, however long the timeout
    g.begin_write()
    g.end_write()
    h = Runner(lambda: g.hand_off(timeout=None))  # a wait here would never end
    assert h.done.wait(20) and h.error is None


def test_hand_off_gives_up_after_its_timeout_when_an_admitted_reader_does_not_start():
    g = Gate(max_slots=1, what="m")
    g.begin_write()
    g._readers_waiting = 1  # a reader that was held back and is descheduled: counted, never resumes here
    g.end_write()
    assert g._admit == 1
    g.hand_off(timeout=0.01)  # returns (the commit is not held hostage), leaving the admission in place
    assert g._admit == 1
