"""Events: ``acl.rt.create_event / record_event / synchronize_event / query_event / destroy_event``.

Sources: hicann/runtime ``src/acl/aclrt_impl/event.cpp`` and ``src/runtime/api/impl/api_impl.cc``
(EventCreate :2041 needs a current context; EventRecord :2134 checks that the stream belongs
to it, :2152; EventSynchronize/Query :2250/:2274 and EventDestroy :2093 need no context).

An event records a marker in its stream's queue.  Stream work runs when something waits
for it, so ``synchronize_event`` runs the stream up to the marker, and ``query_event`` does
the same before answering (the device would have progressed on its own; answering "not
ready" until someone synchronises would hang every polling loop): a recorded event is
therefore always reported complete.
"""
from __future__ import annotations

from dataclasses import dataclass

from .._constants import ACL_EVENT_STATUS_COMPLETE
from . import _state as S
from ._rt import Stream, check_stream, drain_until, enqueue, stream_of
from ._state import LOCK, WORLD, api, ints, new_handle, set_err


@dataclass(eq=False)
class Event:
    id: int
    ctx: int
    stream: Stream | None = None  # the queue of the last record
    recorded: int = 0  # number of records
    reached: int = 0  # the latest record whose marker has run


def _event(name: str, event: int) -> tuple[Event | None, int]:
    ev = WORLD.events.get(event)
    if ev is None:
        return None, set_err(S.E_RT_PARAM, f"{name}: {event:#x} is not a live event")
    return ev, 0


@api("acl.rt.create_event", "t1", ctx=True)
def create_event() -> tuple[int, int]:
    with LOCK:
        ev = Event(new_handle(), S.current_context().id)
        WORLD.events[ev.id] = ev
        return ev.id, 0


@api("acl.rt.destroy_event", "ret", pre=ints("event"))
def destroy_event(event: int) -> int:
    with LOCK:
        ev, ret = _event("destroy_event", event)
        if ev is None:
            return ret
        del WORLD.events[event]
    return 0


@api("acl.rt.record_event", "ret", pre=ints("event", "stream"))
def record_event(event: int, stream: int) -> int:
    with LOCK:
        ret = check_stream("record_event", stream)
        if ret:
            return ret
        ev, ret = _event("record_event", event)
        if ev is None:
            return ret
        ev.recorded += 1
        ev.stream = stream_of(stream)
        mark = ev.recorded

        def marker() -> int:
            ev.reached = max(ev.reached, mark)
            return 0

        return enqueue(stream, marker)


def _wait(name: str, event: int) -> int:
    with LOCK:
        ev, ret = _event(name, event)
        if ev is None:
            return ret
        mark = ev.recorded
        st = ev.stream
    if ev.reached >= mark or st is None:
        return 0
    drain_until(st, lambda: ev.reached >= mark)
    return 0


@api("acl.rt.synchronize_event", "ret", pre=ints("event"))
def synchronize_event(event: int) -> int:
    """Wait for the work recorded before the event; a never-recorded event returns at once."""
    return _wait("synchronize_event", event)


@api("acl.rt.query_event", "t1", pre=ints("event"))
def query_event(event: int) -> tuple[int, int]:
    """(ACL_EVENT_STATUS_COMPLETE, 0) once the work before the event ran (see the module docstring)."""
    ret = _wait("query_event", event)
    return (0, ret) if ret else (ACL_EVENT_STATUS_COMPLETE, 0)
