"""What the watcher sees in its directory: the committed checkpoints, which of them it may apply, in which order.

No model and no thread here.  :class:`Scanner` lists a :class:`~acl_bundle._checkpoint.storage.Store` (ours:
``*.ckpt.json`` markers; TF: the ``checkpoint`` state file, indexes and shards), parses markers (cached by their
listing key), and remembers per checkpoint only what is still listed:

* its **identity**, the listing keys of all its files (ours: marker and data; TF: state file, index and every
  shard), so a checkpoint that failed is retried as soon as any of them changes;
* entries that failed for good (corrupt, mismatched, refused) until their identity changes, logged once;
* entries that are listed but **not readable yet** (404 after listing, shorter than marker or index say):
  retried with the poll back-off (``poll_interval`` doubling up to ``MAX_BACKOFF``), at most ``NOT_READY_TRIES``
  times, one WARNING; then they count as failed (retried again when they change);
* the **commit order**, which never uses the writers' clocks: a checkpoint first listed by a later poll is newer
  than one listed before it; among those first listed by the same poll (all at start) the store's own time of
  the commit decides (the marker's or index's mtime on the file server, S3 ``LastModified``), then the step.

:class:`StepPolicy` is the step/run rule of :mod:`acl_bundle.watcher`'s docstring on top of that order.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .._archive import CheckpointError
from .protocol import MARKER_SUFFIX, CheckpointInfo, read_marker
from .storage import Key, Store, TransientError
from .tfdir import MAX_STATE_BYTES, STATE_FILE, TFEntry, list_entries, parse_state

log = logging.getLogger("acl_bundle")

SHOWN = 5  # bad entries logged one by one per poll; the rest as a count
MAX_BACKOFF = 60.0  # seconds: the longest wait between retries (transient store errors, entries not readable yet)
NOT_READY_TRIES = 10  # attempts at an entry listed but not readable before it counts as failed

Order = tuple[int, float]  # (poll that first listed it, the store's commit time)


def backoff(interval: float, failures: int) -> float:
    """``interval`` doubled per failure, at most ``MAX_BACKOFF`` (or ``interval`` if that is longer)."""
    if not failures:
        return interval
    return min(interval * 2.0 ** min(failures, 30), max(MAX_BACKOFF, interval))


@dataclass
class _Waiting:
    identity: Key
    tries: int
    next_at: float  # time.monotonic() of the next attempt


def protocol_of(names: list[str], where: str) -> str | None:
    """"tf" for a listing with TF's state file, "acl_bundle" for one with markers, None for neither (yet)."""
    tf_state = STATE_FILE in names
    ours = any(n.endswith(MARKER_SUFFIX) for n in names)
    if tf_state and ours:
        raise CheckpointError(f"{where!r} holds both TF checkpoints (a '{STATE_FILE}' state file) and acl_bundle "
                              f"checkpoints (*{MARKER_SUFFIX} markers); choose one with protocol='tf' or 'acl_bundle'")
    return "tf" if tf_state else ("acl_bundle" if ours else None)


class StepPolicy:
    """Which committed checkpoints are newer than the one served, and their order (best first)."""

    def __init__(self, start_after: int | None, allow_reset: bool) -> None:
        self.start_after = start_after
        self.allow_reset = allow_reset

    def acceptable(self, info: CheckpointInfo, order: Order, served: CheckpointInfo | None,
                   served_order: Order | None) -> bool:
        if served is None or served_order is None:
            return self.start_after is None or info.step > self.start_after
        if not self.allow_reset and info.run == served.run:
            return info.step > served.step
        return order > served_order  # allow_reset, or another run: committed after the served checkpoint

    def rank(self, found: list[tuple[CheckpointInfo, Order]]) -> list[CheckpointInfo]:
        if self.allow_reset:
            found.sort(key=lambda c: (c[1], c[0].step, c[0].marker.name), reverse=True)
            return [c for c, _ in found]
        runs: dict[str, Order] = {}  # the run committed most recently first; within a run, the highest step
        for c, order in found:
            runs[c.run] = max(runs.get(c.run, order), order)
        found.sort(key=lambda c: (runs[c[0].run], c[0].step, c[0].marker.name), reverse=True)
        return [c for c, _ in found]


class Scanner:
    """The committed checkpoints of one location, listed cheaply and judged once.

    ``store`` lists our markers (and, remotely, the data objects); ``tf_store`` the same location unfiltered, for
    TF's protocol.  ``protocol``: "acl_bundle", "tf" or None (detected on each scan until the location shows one).
    ``keeping()`` says what the model keeps serving, for the log lines; ``interval`` is the poll interval.
    """

    def __init__(self, store: Store, tf_store: Store, protocol: str | None, keeping: Callable[[], str],
                 interval: float) -> None:
        self.store = store
        self.tf_store = tf_store
        self.protocol = protocol
        self.keeping = keeping
        self.interval = interval
        self.skipped = 0  # bad entries seen (markers and checkpoints)
        self._dir = Path(str(store.root))
        self._where = store.url
        self._polls = 0
        self._problem = ""  # the last protocol / state-file problem logged
        self._list_error: str | None = None
        # everything below is keyed by marker name (TF: the .index name) and forgotten when no longer listed
        self._markers: dict[str, tuple[Key, CheckpointInfo | None]] = {}  # parsed marker cache by listing key
        self._order: dict[str, Order] = {}
        self._tf: dict[str, TFEntry] = {}
        self._bad: dict[str, Key] = {}  # identity when it failed
        self._waiting: dict[str, _Waiting] = {}
        self._told: set[str] = set()  # markers already reported as ignored
        self._told_runs: set[str] = set()
        self._state: tuple[Key | None, tuple[str, ...]] = (None, ())  # TF state file: listing key, recorded paths

    # ------------------------------------------------------------------ scanning
    def candidates(self, served: CheckpointInfo | None, served_order: Order | None,
                   policy: StepPolicy) -> list[CheckpointInfo]:
        """Acceptable checkpoints not known bad and not waiting for a retry, best first."""
        if self.protocol is None and not self._detect():
            return []
        self._polls += 1
        infos = self._tf_scan() if self.protocol == "tf" else self._scan()
        now = time.monotonic()
        found: list[tuple[CheckpointInfo, Order]] = []
        ignored_runs: dict[str, list[int]] = {}
        below_start = []
        for info in infos:
            name = info.marker.name
            order = self._order[name]
            if not policy.acceptable(info, order, served, served_order):
                if served is None or served_order is None:
                    below_start.append(name)
                elif info.run != served.run and not policy.allow_reset:
                    ignored_runs.setdefault(info.run, []).append(info.step)
                elif order > served_order and name not in self._told:  # same run, committed later, lower step
                    self._told.add(name)
                    log.warning("ignoring checkpoint step %d (%s in %s), committed after the applied step %d: steps "
                                "must increase (a restarted trainer? write with a new run id, or pass "
                                "allow_step_reset=True)", info.step, name, self._where, served.step)
                continue
            waiting = self._waiting.get(name)
            if name in self._bad or waiting is not None:
                identity = self.identity(info)
                if self._bad.get(name) == identity:
                    continue  # the same bad entry as before: do not retry or re-log
            if waiting is not None:
                if waiting.identity != identity:
                    waiting.identity, waiting.next_at = identity, now  # a file changed: try at once
                elif now < waiting.next_at:
                    continue
            found.append((info, order))
        self._told_runs &= {i.run for i in infos}
        self._tell_ignored(ignored_runs, below_start, served, policy)
        return policy.rank(found)

    def _tell_ignored(self, runs: dict[str, list[int]], below_start: list[str], served: CheckpointInfo | None,
                      policy: StepPolicy) -> None:
        """One line per ignored run, one per batch of checkpoints at or below ``start_after``."""
        for run, steps in runs.items():
            if run in self._told_runs or served is None:
                continue
            self._told_runs.add(run)
            log.warning("ignoring run %r in %s (%d checkpoint(s), steps %d..%d): committed before the applied run %r "
                        "(step %d); runs are ordered by when the watcher first saw them, then by the store's "
                        "timestamps, never by the writers' clocks", run, self._where, len(steps), min(steps),
                        max(steps), served.run, served.step)
        new = [n for n in below_start if n not in self._told]
        if new:
            self._told.update(new)
            log.info("ignoring %d checkpoint(s) in %s at or below start_after=%s: %s", len(new), self._where,
                     policy.start_after, ", ".join(sorted(new)[:SHOWN]) + (" ..." if len(new) > SHOWN else ""))

    def _detect(self) -> bool:
        from ..tf_checkpoint import detect_protocol, require_tensorflow

        try:
            if self.store.remote:
                protocol = protocol_of(self.tf_store.names(), self._where)
            else:
                protocol = detect_protocol(self._dir)
            if protocol == "tf":
                require_tensorflow()
        except TransientError:
            raise
        except (CheckpointError, ImportError, OSError) as e:
            if str(e) != self._problem:  # once, not every poll
                self._problem = str(e)
                log.warning("checkpoint watcher on %s: %s", self._where, e)
            return False
        self.protocol = protocol
        return protocol is not None

    def _list(self, store: Store) -> dict[str, Key] | None:
        try:
            listing = store.list()
        except TransientError:
            raise
        except OSError as e:
            why = e.strerror or str(e)
            if why != self._list_error:
                self._list_error = why
                log.warning("cannot list checkpoint directory %s: %s (%s; retrying)", self._where, why, self.keeping())
            return None
        self._list_error = None
        return listing

    def _scan(self) -> list[CheckpointInfo]:
        """Every valid committed marker (cached by its listing key); bad ones logged once."""
        listing = self._list(self.store)
        if listing is None:
            return []
        names = [n for n in listing if n.endswith(MARKER_SUFFIX)]
        self._forget(set(names))
        infos, bad = [], []
        remote = self.store.remote
        for name in names:
            key = listing[name]
            cached = self._markers.get(name)
            if cached is not None and cached[0] == key:
                info = cached[1]
            else:
                try:
                    info = read_marker(name, store=self.store) if remote else read_marker(self._dir / name)
                except FileNotFoundError:
                    continue  # deleted meanwhile
                except TransientError:
                    raise  # not the marker's fault: the poll ends and is retried
                except Exception as e:  # CheckpointError, or anything else: one bad entry never stops the scan
                    info = None
                    bad.append(f"{e}" if isinstance(e, CheckpointError) else f"{name}: {type(e).__name__}: {e}")
                self._markers[name] = (key, info)
            if info is not None:
                self._order.setdefault(name, (self._polls, self.store.key_time(key)))
                infos.append(info)
        self.skipped += len(bad)
        for why in bad[:SHOWN]:
            log.warning("skipping %s; %s", why, self.keeping())
        if len(bad) > SHOWN:
            log.warning("skipping %d more malformed checkpoint markers in %s", len(bad) - SHOWN, self._where)
        return infos

    def _tf_scan(self) -> list[CheckpointInfo]:
        """The checkpoints TF's state file names whose files are all listed; a malformed state file is logged once."""
        from ..tf_checkpoint import warn_no_step

        listing = self._list(self.tf_store)
        if listing is None:
            return []
        key = listing.get(STATE_FILE)
        if key is None:
            self._forget(set())
            return []
        if key != self._state[0]:
            where = f"TF checkpoint state file {self.tf_store.name_url(STATE_FILE)!r}"
            try:
                raw, _ = self.tf_store.read(STATE_FILE, where, limit=MAX_STATE_BYTES)
                self._state = (key, parse_state(raw, where)[1])
                self._problem = ""
            except FileNotFoundError:
                return []
            except CheckpointError as e:  # keep serving, look again when it changes
                self._state = (key, ())
                if str(e) != self._problem:
                    self._problem = str(e)
                    log.warning("checkpoint watcher on %s: %s; %s", self._where, e, self.keeping())
        entries = list_entries(self.tf_store, listing, self._state[1],
                               lambda n: warn_no_step(self.tf_store.name_url(n)))
        self._forget({entry.info.marker.name for entry in entries})
        for entry in entries:
            name = entry.info.marker.name
            self._tf[name] = entry
            self._markers[name] = (entry.identity[1], entry.info)
            self._order.setdefault(name, (self._polls, entry.info.created))
        return [entry.info for entry in entries]

    def _forget(self, live: set[str]) -> None:
        """Drop what is known about entries no longer listed (the state stays bounded by what is there)."""
        for cache in (self._markers, self._order, self._tf, self._bad, self._waiting):
            for name in [n for n in cache if n not in live]:
                del cache[name]
        self._told &= live

    # ------------------------------------------------------------------ judging
    def identity(self, info: CheckpointInfo) -> Key:
        """The listing keys of all of ``info``'s files (ours: marker and data; TF: state file, index, shards)."""
        entry = self._tf.get(info.marker.name)
        if entry is not None:
            return entry.identity
        return (self.commit_key(info), self.store.key(info.path.name))

    def order(self, info: CheckpointInfo) -> Order:
        return self._order.get(info.marker.name, (self._polls, info.created))

    def commit_key(self, info: CheckpointInfo) -> Key | None:
        """The listing key of ``info``'s marker (TF: its index), None if not known."""
        cached = self._markers.get(info.marker.name)
        return cached[0] if cached is not None else None

    def tf_entry(self, info: CheckpointInfo) -> TFEntry:
        return self._tf[info.marker.name]

    def mark_bad(self, info: CheckpointInfo, why: str) -> None:
        """Skip ``info`` until one of its files changes; logged once."""
        name = info.marker.name
        self._bad[name] = self.identity(info)
        self._waiting.pop(name, None)
        self.skipped += 1
        log.warning("skipping checkpoint %s in %s: %s; %s", name, self._where, why, self.keeping())

    def not_ready(self, info: CheckpointInfo, why: str) -> None:
        """``info`` is listed but not readable yet: retry it with back-off, a bounded number of times."""
        name = info.marker.name
        identity = self.identity(info)
        waiting = self._waiting.get(name)
        if waiting is None:
            waiting = self._waiting[name] = _Waiting(identity, 0, 0.0)
            log.warning("checkpoint %s in %s is listed but not readable yet (%s): retrying up to %d times with "
                        "back-off, and at once when one of its files changes; %s",
                        name, self._where, why, NOT_READY_TRIES, self.keeping())
        waiting.tries += 1
        if waiting.tries >= NOT_READY_TRIES:
            self.mark_bad(info, f"still not readable after {waiting.tries} attempts ({why})")
            return
        waiting.next_at = time.monotonic() + backoff(self.interval, waiting.tries)
        log.debug("checkpoint %s not readable yet (attempt %d): %s", name, waiting.tries, why)

    @property
    def waiting(self) -> int:
        """How many listed checkpoints are not readable yet and will be retried."""
        return len(self._waiting)

    def applied(self, info: CheckpointInfo) -> None:
        self._waiting.pop(info.marker.name, None)
