"""Serve a directory that a trainer commits checkpoints into: apply each newer one as one update.

::

    with BundleModel("bundle.om") as m, CheckpointWatcher(m, "ckpts/", poll_interval=0.5):
        while serving:
            y = m.infer(x)          # always the last good weights

Only checkpoints committed with the protocol of :mod:`acl_bundle.checkpoint` (data
file, then a ``*.ckpt.json`` marker with its SHA-256) are seen; a data file still
being written has no marker yet and is invisible.  Rules the watcher keeps:

* it applies the **newest** committed step above the last applied one, as **one**
  ``model.update`` (steps in between are skipped, not replayed);
* it never applies a step at or below the last applied one, whatever the file times say;
* a corrupt, truncated or mismatched checkpoint is logged (warning) and skipped; the
  model keeps the last good weights, the next-newest good step above the applied
  one is tried instead, and that file is not retried until its marker or data file
  changes (size or mtime);
* ``stop()`` wakes the thread at once and returns when it has ended (after an update
  in progress, if any).

A directory written by an unchanged TensorFlow trainer (``tf.compat.v1.train.Saver``,
``tf.train.CheckpointManager``) is watched the same way under TensorFlow's protocol:
the commit point is TF's ``checkpoint`` state file (:mod:`acl_bundle.tf_checkpoint`),
the step is the number in the checkpoint's name, and a checkpoint failing TF's CRC32C
checks is skipped like a corrupt one of ours.  ``protocol="auto"`` (the default) picks
the protocol by what the directory holds (a ``checkpoint`` state file: TF; ``*.ckpt.json``
markers: ours; both: an error, choose one).

Change notification uses watchdog (optional extra ``acl-bundle[watch]``) when it is
installed; polling every ``poll_interval`` seconds always runs as the fallback.
"""
from __future__ import annotations

import inspect
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import ModelClosedError
from .checkpoint import MARKER_SUFFIX, CheckpointError, CheckpointInfo, Rename, read_marker, select_weights, verify_checkpoint
from .tf_checkpoint import detect_protocol, list_tf_checkpoints, load_tf_checkpoint, require_tensorflow

PROTOCOLS = ("auto", "acl_bundle", "tf")

log = logging.getLogger("acl_bundle")

__all__ = ["AppliedCheckpoint", "CheckpointWatcher"]

_StatKey = tuple[Any, ...]


@dataclass(frozen=True)
class AppliedCheckpoint:
    """One checkpoint the watcher applied.

    ``read_seconds``: read + verify + map names; ``update_seconds``: the ``model.update``
    call; ``lag_seconds``: from the marker's mtime (commit) to the update's end.  For a
    TensorFlow checkpoint ``path`` is its prefix and the marker its ``.index`` file.
    """

    step: int
    version: int
    path: Path
    variables: int
    read_seconds: float
    update_seconds: float
    lag_seconds: float


def _takes_step(update: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(update).parameters
    except (TypeError, ValueError):
        return False
    return "step" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _stat_key(*paths: Path) -> _StatKey:
    key: list[Any] = []
    for p in paths:
        try:
            st = p.stat()
            key.append((st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            key.append(None)
    return tuple(key)


class CheckpointWatcher:
    """Apply the newest complete checkpoint of ``directory`` to ``model``, in a background thread.

    ::

        with CheckpointWatcher(model, "ckpts/") as w:
            ...
            w.wait_for_step(100, timeout=30)

    Parameters
    ----------
    model: anything with ``.variables`` and ``.update(mapping) -> version``; when its ``update``
        takes ``step=`` (BundleModel, a fleet) it is given the checkpoint's step
        (a :class:`~acl_bundle.BundleModel`).
    directory: the checkpoint directory (must exist).
    poll_interval: seconds between directory scans (also the fallback when watchdog
        notifications are missed).
    rename, strip_prefix, allow_partial, allow_unmatched: name mapping, as in
        :func:`acl_bundle.checkpoint.load_checkpoint`.
    start_after: only apply steps above this one (None: apply the newest present at start).
    use_watchdog: True = require watchdog, False = poll only, None = use it if installed.
    on_apply: called in the watcher thread with each :class:`AppliedCheckpoint`.
    protocol: "auto" (by what the directory holds), "acl_bundle" (``*.ckpt.json`` markers)
        or "tf" (TensorFlow's ``checkpoint`` state file; needs ``acl-bundle[tf]``).
    """

    def __init__(
        self,
        model: Any,
        directory: str | os.PathLike[str],
        *,
        poll_interval: float = 0.5,
        rename: Rename = None,
        strip_prefix: str | None = None,
        allow_partial: bool = False,
        allow_unmatched: bool = False,
        start_after: int | None = None,
        use_watchdog: bool | None = None,
        on_apply: Callable[[AppliedCheckpoint], None] | None = None,
        protocol: str = "auto",
    ) -> None:
        if not hasattr(model, "update") or not hasattr(model, "variables"):
            raise TypeError(f"model must have .update() and .variables (a BundleModel), got {type(model).__name__}")
        d = Path(directory)
        if not d.is_dir():
            raise FileNotFoundError(f"checkpoint directory {str(d)!r} does not exist or is not a directory")
        if isinstance(poll_interval, bool) or not isinstance(poll_interval, (int, float)) or not poll_interval > 0:
            raise ValueError(f"poll_interval must be a positive number of seconds, got {poll_interval!r}")
        if start_after is not None and (isinstance(start_after, bool) or not isinstance(start_after, int)):
            raise TypeError(f"start_after must be an int step or None, got {start_after!r}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
        self._protocol = detect_protocol(d) if protocol == "auto" else protocol
        if self._protocol == "tf":
            require_tensorflow()  # ImportError naming the extra, now rather than in the thread
        self._model = model
        self._pass_step = _takes_step(model.update)
        self._dir = d
        self._interval = float(poll_interval)
        self._names = dict(rename=rename, strip_prefix=strip_prefix,
                           allow_partial=allow_partial, allow_unmatched=allow_unmatched)
        self._on_apply = on_apply
        self._watchdog = self._want_watchdog(use_watchdog)

        self._applied_step: int | None = start_after
        self._applied = 0
        self._skipped = 0
        self._last: AppliedCheckpoint | None = None
        self._history: list[AppliedCheckpoint] = []
        self._markers: dict[str, tuple[_StatKey, CheckpointInfo | None]] = {}  # parsed marker cache
        self._bad: dict[str, _StatKey] = {}  # marker name -> (marker, data) stat key when it failed
        self._told_old: set[str] = set()
        self._protocol_problem = ""
        self._poll_lock = threading.Lock()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Any = None

    @property
    def protocol(self) -> str | None:
        """The protocol in use: "acl_bundle", "tf", or None while an "auto" directory is still empty."""
        return self._protocol

    @staticmethod
    def _want_watchdog(use: bool | None) -> bool:
        if use is False:
            return False
        try:
            import watchdog.observers  # noqa: F401
        except ImportError:
            if use:
                raise ImportError("use_watchdog=True needs the watchdog package: pip install 'acl-bundle[watch]'") from None
            return False
        return True

    # ------------------------------------------------------------------ state
    @property
    def applied_step(self) -> int | None:
        """The step of the weights now served (``start_after`` until something is applied)."""
        return self._applied_step

    @property
    def applied_version(self) -> int | None:
        """The model version the last applied checkpoint produced (None before the first)."""
        return self._last.version if self._last else None

    @property
    def applied(self) -> int:
        """How many checkpoints were applied."""
        return self._applied

    @property
    def skipped(self) -> int:
        """How many bad checkpoints (corrupt, half-written, mismatched, malformed marker) were skipped."""
        return self._skipped

    @property
    def last(self) -> AppliedCheckpoint | None:
        return self._last

    @property
    def history(self) -> list[AppliedCheckpoint]:
        """Every applied checkpoint, oldest first (a copy)."""
        with self._cond:
            return list(self._history)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def uses_watchdog(self) -> bool:
        return self._watchdog

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> CheckpointWatcher:
        """Start the background thread (and the watchdog observer when used); returns self."""
        if self._thread is not None:
            raise RuntimeError("CheckpointWatcher already started (a watcher starts once)")
        self._stop.clear()
        if self._watchdog:
            self._observer = self._start_observer()
        self._thread = threading.Thread(target=self._run, name=f"acl_bundle-watcher:{self._dir.name}", daemon=True)
        self._thread.start()
        log.info("watching %s for checkpoints (%s, poll every %.3g s)", self._dir,
                 "watchdog" if self._observer else "polling", self._interval)
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop the thread and the observer; returns once they ended (or ``timeout`` passed). Idempotent."""
        self._stop.set()
        self._wake.set()
        obs, self._observer = self._observer, None
        if obs is not None:
            obs.stop()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                log.warning("checkpoint watcher thread did not end within %s s", timeout)
        if obs is not None:
            obs.join(timeout)

    def __enter__(self) -> CheckpointWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_observer(self) -> Any:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        wake = self._wake

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                wake.set()

        obs = Observer()
        obs.schedule(_Handler(), str(self._dir), recursive=False)
        obs.daemon = True
        obs.start()
        return obs

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.poll()
            except ModelClosedError:
                log.warning("checkpoint watcher on %s stops: the model was closed", self._dir)
                break
            except Exception:  # never let the thread die on a surprise; the model keeps its weights
                log.exception("checkpoint watcher on %s: unexpected error (keeps watching)", self._dir)
            self._wake.wait(self._interval)
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ work
    def wait_for_step(self, step: int, timeout: float | None = None) -> bool:
        """Block until a step >= ``step`` is applied; False on timeout or if the watcher stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._applied_step is None or self._applied_step < step:
                if self._stop.is_set() and not self.running:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(left if left is not None else 0.5)
            return True

    def poll(self) -> AppliedCheckpoint | None:
        """Scan once and apply the newest good checkpoint above the applied step; return what was applied."""
        with self._poll_lock:
            for info in self._candidates():
                applied = self._try(info)
                if applied is not None:
                    return applied
            return None

    def _candidates(self) -> list[CheckpointInfo]:
        """Committed, not-known-bad checkpoints above the applied step, newest first."""
        if self._protocol is None:
            try:
                protocol = detect_protocol(self._dir)
                if protocol == "tf":
                    require_tensorflow()
            except (CheckpointError, ImportError) as e:
                if str(e) != self._protocol_problem:  # once, not every poll
                    self._protocol_problem = str(e)
                    log.warning("checkpoint watcher on %s: %s", self._dir, e)
                return []
            self._protocol = protocol
        if self._protocol == "tf":
            return self._tf_candidates()
        found = []
        try:
            markers = [p for p in self._dir.iterdir() if p.name.endswith(MARKER_SUFFIX) and not p.name.startswith(".")]
        except OSError as e:
            log.warning("cannot list checkpoint directory %s: %s", self._dir, e)
            return []
        live = {p.name for p in markers}
        for cache in (self._markers, self._bad):
            for name in list(cache):
                if name not in live:
                    del cache[name]
        for p in markers:
            key = _stat_key(p)
            cached = self._markers.get(p.name)
            if cached is not None and cached[0] == key:
                info = cached[1]
            else:
                try:
                    info = read_marker(p)
                except FileNotFoundError:
                    continue
                except CheckpointError as e:
                    info = None
                    self._mark_bad(p.name, key, f"{e}")
                self._markers[p.name] = (key, info)
            if info is None:
                continue
            if self._applied_step is not None and info.step <= self._applied_step:
                if p.name not in self._told_old:
                    self._told_old.add(p.name)
                    if info.step < self._applied_step:
                        log.info("ignoring checkpoint step %d (%s): step %d is already applied",
                                 info.step, p.name, self._applied_step)
                continue
            bad = self._bad.get(p.name)
            if bad is not None and bad == _stat_key(p, info.path):
                continue  # same bad file as before: do not retry or re-log
            found.append(info)
        found.sort(key=lambda c: (c.step, c.marker.name), reverse=True)
        return found

    def _tf_candidates(self) -> list[CheckpointInfo]:
        """The checkpoints TF's state file names (complete on disk), above the applied step, not known bad."""
        try:
            infos = list_tf_checkpoints(self._dir)
        except CheckpointError as e:  # a malformed state file: keep serving, look again next time
            log.warning("checkpoint watcher on %s: %s; keeping the weights of step %s", self._dir, e, self._applied_step)
            return []
        live = {i.marker.name for i in infos}
        for name in [n for n in self._bad if n not in live]:
            del self._bad[name]
        return [i for i in infos if (self._applied_step is None or i.step > self._applied_step)
                and self._bad.get(i.marker.name) != _stat_key(i.marker, i.path)]

    def _mark_bad(self, name: str, key: _StatKey, why: str) -> None:
        self._bad[name] = key
        self._skipped += 1
        log.warning("skipping checkpoint %s in %s: %s; keeping the weights of step %s",
                    name, self._dir, why, self._applied_step)

    def _try(self, info: CheckpointInfo) -> AppliedCheckpoint | None:
        key = _stat_key(info.marker, info.path)
        t0 = time.perf_counter()
        try:
            if self._protocol == "tf":
                weights = load_tf_checkpoint(info.path, self._model.variables, **self._names)  # type: ignore[arg-type]
            else:
                arrays = verify_checkpoint(info)
                weights = select_weights(arrays, self._model.variables, source=f"checkpoint step {info.step} ({info.path.name})",
                                         **self._names)  # type: ignore[arg-type]
        except (CheckpointError, FileNotFoundError) as e:
            self._mark_bad(info.marker.name, key, str(e))
            return None
        t1 = time.perf_counter()
        try:
            version = int(self._model.update(weights, step=info.step) if self._pass_step else self._model.update(weights))
        except ModelClosedError:
            raise
        except Exception as e:  # a mismatched checkpoint, or the device refused: keep the last good weights
            self._mark_bad(info.marker.name, key, f"model.update failed: {type(e).__name__}: {e}")
            return None
        t2 = time.perf_counter()
        try:
            lag = max(0.0, time.time() - info.marker.stat().st_mtime)
        except OSError:
            lag = float("nan")
        applied = AppliedCheckpoint(info.step, version, info.path, len(weights), t1 - t0, t2 - t1, lag)
        with self._cond:
            self._applied_step = info.step
            self._applied += 1
            self._last = applied
            self._history.append(applied)
            self._cond.notify_all()
        log.info("applied checkpoint step %d (%s) as version %d: %d variables, read %.1f ms, update %.1f ms",
                 info.step, info.path.name, version, len(weights), 1e3 * (t1 - t0), 1e3 * (t2 - t1))
        if self._on_apply is not None:
            try:
                self._on_apply(applied)
            except Exception:
                log.exception("on_apply callback failed for step %d", info.step)
        return applied

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<CheckpointWatcher {str(self._dir)!r} {state} step={self._applied_step} applied={self._applied} skipped={self._skipped}>"
