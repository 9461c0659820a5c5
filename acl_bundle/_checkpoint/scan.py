"""What the watcher sees in its directory: the committed checkpoints, which of them it may apply, in which order.

No model and no thread here: :class:`Scanner` lists a :class:`~acl_bundle._checkpoint.storage.Store`, parses
markers (cached by their listing key), remembers the entries that failed (until one of their files changes) and
logs each problem once; :class:`StepPolicy` is the step/run rule of :mod:`acl_bundle.watcher`'s docstring.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

from .._archive import CheckpointError
from .protocol import MARKER_SUFFIX, CheckpointInfo, read_marker
from .storage import Key, Store, TransientError

log = logging.getLogger("acl_bundle")

SHOWN = 5  # bad entries logged one by one per poll; the rest as a count


class StepPolicy:
    """Which committed checkpoints are newer than the one served, and their order (best first)."""

    def __init__(self, start_after: int | None, allow_reset: bool) -> None:
        self.start_after = start_after
        self.allow_reset = allow_reset

    def acceptable(self, info: CheckpointInfo, served: CheckpointInfo | None) -> bool:
        if served is None:
            return self.start_after is None or info.step > self.start_after
        if self.allow_reset:
            return info.created > served.created
        if info.run == served.run:
            return info.step > served.step
        return info.created > served.created  # another run committed later: a new sequence

    def order(self, found: list[CheckpointInfo]) -> list[CheckpointInfo]:
        if self.allow_reset:
            return sorted(found, key=lambda c: (c.created, c.step, c.marker.name), reverse=True)
        rank: dict[str, float] = {}  # the run committed most recently first; within a run, the highest step
        for c in found:
            rank[c.run] = max(rank.get(c.run, -math.inf), c.created)
        return sorted(found, key=lambda c: (rank[c.run], c.step, c.marker.name), reverse=True)


class Scanner:
    """The committed checkpoints of one store, listed cheaply and judged once.

    ``protocol``: "acl_bundle", "tf" or None (detected on each scan until the directory shows one);
    ``keeping()``: what the model keeps serving, for the log lines.
    """

    def __init__(self, store: Store, protocol: str | None, keeping: Callable[[], str]) -> None:
        self.store = store
        self.protocol = protocol
        self.keeping = keeping
        self.skipped = 0  # bad entries seen (markers and checkpoints)
        self._dir = Path(str(store.root))
        self._problem = ""  # the last protocol / state-file problem logged
        self._markers: dict[str, tuple[Key, CheckpointInfo | None]] = {}  # parsed marker cache by listing key
        self._bad: dict[str, tuple[Key | None, Key | None]] = {}  # marker name -> (marker, data) keys when it failed
        self._told: set[str] = set()  # markers already reported as ignored
        self._list_error: str | None = None

    # ------------------------------------------------------------------ scanning
    def candidates(self, served: CheckpointInfo | None, policy: StepPolicy) -> list[CheckpointInfo]:
        """Acceptable, not-known-bad checkpoints, best first."""
        if self.protocol is None and not self._detect():
            return []
        found = []
        for info in (self._tf_scan() if self.protocol == "tf" else self._scan()):
            name = info.marker.name
            if not policy.acceptable(info, served):
                if (served is not None and name not in self._told and info.created > served.created
                        and info.run == served.run):
                    self._told.add(name)
                    log.warning("ignoring checkpoint step %d (%s in %s), committed after the applied step %d: steps "
                                "must increase (a restarted trainer? write with a new run id, or pass "
                                "allow_step_reset=True)", info.step, name, self._dir, served.step)
                continue
            bad = self._bad.get(name)
            if bad is not None and bad == (self.commit_key(info), self.store.key(info.path.name)):
                continue  # the same bad entry as before: do not retry or re-log
            found.append(info)
        return policy.order(found)

    def _detect(self) -> bool:
        from ..tf_checkpoint import detect_protocol, require_tensorflow

        try:
            protocol = detect_protocol(self._dir)
            if protocol == "tf":
                require_tensorflow()
        except (CheckpointError, ImportError, OSError) as e:
            if str(e) != self._problem:  # once, not every poll
                self._problem = str(e)
                log.warning("checkpoint watcher on %s: %s", self._dir, e)
            return False
        self.protocol = protocol
        return protocol is not None

    def _scan(self) -> list[CheckpointInfo]:
        """Every valid committed marker (cached by its listing key); bad ones logged once."""
        try:
            listing = self.store.list()
        except TransientError:
            raise
        except OSError as e:
            why = e.strerror or str(e)
            if why != self._list_error:
                self._list_error = why
                log.warning("cannot list checkpoint directory %s: %s (%s; retrying)", self._dir, why, self.keeping())
            return []
        self._list_error = None
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
                infos.append(info)
        self.skipped += len(bad)
        for why in bad[:SHOWN]:
            log.warning("skipping %s; %s", why, self.keeping())
        if len(bad) > SHOWN:
            log.warning("skipping %d more malformed checkpoint markers in %s", len(bad) - SHOWN, self._dir)
        return infos

    def _tf_scan(self) -> list[CheckpointInfo]:
        """The checkpoints TF's state file names (complete on disk); a malformed state file is logged once."""
        from ..tf_checkpoint import list_tf_checkpoints

        try:
            infos = list_tf_checkpoints(self._dir)
            self._problem = ""
        except CheckpointError as e:  # keep serving, look again next time
            if str(e) != self._problem:
                self._problem = str(e)
                log.warning("checkpoint watcher on %s: %s; %s", self._dir, e, self.keeping())
            return []
        self._forget({i.marker.name for i in infos})
        for i in infos:  # the .index file stands for the marker (retried when it changes)
            self._markers[i.marker.name] = (self.store.key(i.marker.name) or (), i)
        return infos

    def _forget(self, live: set[str]) -> None:
        """Drop what is known about entries no longer listed."""
        for cache in (self._markers, self._bad):
            for name in [n for n in cache if n not in live]:
                del cache[name]
        self._told &= live

    # ------------------------------------------------------------------ judging
    def commit_key(self, info: CheckpointInfo) -> Key | None:
        """The listing key of ``info``'s marker (its commit), None if not known."""
        cached = self._markers.get(info.marker.name)
        return cached[0] if cached is not None else None

    def mark_bad(self, info: CheckpointInfo, why: str) -> None:
        """Skip ``info`` until its marker or data changes; logged once."""
        self._bad[info.marker.name] = (self.commit_key(info), self.store.key(info.path.name))
        self.skipped += 1
        log.warning("skipping checkpoint %s in %s: %s; %s", info.marker.name, self._dir, why, self.keeping())
