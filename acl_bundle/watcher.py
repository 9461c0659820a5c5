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
* it never applies a step at or below the last applied one of the same run, whatever
  the file times say; a step at or below it committed later is logged (WARNING, once
  per marker).  A restarted trainer either writes a new ``run`` id (a new run
  committed after the applied checkpoint starts a new sequence) or the watcher is
  told ``allow_step_reset=True`` (then the most recent commit wins, whatever its step);
* before anything is applied the weights pass ``check`` (default
  :func:`acl_bundle.checks.finite`: NaN/inf weights from a diverged trainer are
  refused; ``check=None`` turns it off); a ``golden`` check runs the new weights on
  the caller's inputs inside the commit, so no ``infer`` sees refused weights;
* after an update, ``health_check(model)`` may judge the live model; if it fails,
  the watcher rolls back to the weights it served before (``model.rollback``) and
  skips that checkpoint;
* no entry can stop it: a malformed marker, a data file that is corrupt, truncated,
  mismatched, unreadable, a directory, a FIFO, a symlink, too large, or refused by the
  check, is logged once (WARNING, naming the file and the reason) and skipped; the
  model keeps the last good weights, the next-newest good step is tried instead, and
  that entry is retried only when one of its files changes (ours: marker and data; TF:
  state file, index and every shard; by inode, size, mtime, mode or owner);
* a checkpoint listed but not readable yet (missing or 404 after listing, shorter than its
  marker or index says) is retried with the poll back-off, at most 10 times, one WARNING
  (:attr:`CheckpointWatcher.waiting`), not marked bad;
* runs are ordered by when the watcher first listed them, then by the store's own
  timestamps (mtime, S3 ``LastModified``), never by the writers' clocks; every ignored run
  is logged once (``docs/checkpoints.md``);
* a poll costs O(markers): the directory is listed again only when its mtime moved
  (by name, ``os.scandir``), only ``*.ckpt.json`` names are stat-ed, parsed markers
  are cached by their stat;
* ``stop()`` wakes the thread at once and returns when it has ended (a long read is
  abandoned; an update in progress finishes).

A directory written by an unchanged TensorFlow trainer (``tf.compat.v1.train.Saver``,
``tf.train.CheckpointManager``) is watched the same way under TensorFlow's protocol:
the commit point is TF's ``checkpoint`` state file (:mod:`acl_bundle.tf_checkpoint`; on an
object store too: the index and shards are copied into a private temporary directory for TF's reader),
the step is the number in the checkpoint's name, and a checkpoint failing TF's CRC32C
checks is skipped like a corrupt one of ours.  ``protocol="auto"`` (the default) picks
the protocol by what the directory holds (a ``checkpoint`` state file: TF; ``*.ckpt.json``
markers: ours; both: an error, choose one).

Change notification uses watchdog (optional extra ``watch``) when it is installed;
polling every ``poll_interval`` seconds always runs as the fallback.
"""
from __future__ import annotations

import collections
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checks as _checks
from ._archive import CheckpointError, NotReadyError
from ._checkpoint.names import (
    TF_BOUND_FACTOR,
    Rename,
    limit_for,
    select_weights,
    variable_specs,
)
from ._checkpoint.options import WatchOptions
from ._checkpoint.protocol import (
    MARKER_SUFFIX,
    SUFFIXES,
    CheckpointInfo,
    verify_checkpoint,
)
from ._checkpoint.scan import MAX_BACKOFF as MAX_BACKOFF
from ._checkpoint.scan import Order, Scanner, StepPolicy, backoff, protocol_of
from ._checkpoint.storage import FsspecStore, Store, TransientError, is_url, open_store
from ._checkpoint.tfdir import fetched
from ._errors import ModelClosedError
from .tf_checkpoint import (
    detect_protocol,
    load_tf_checkpoint,
    load_tf_prefix,
    require_tensorflow,
)

log = logging.getLogger("acl_bundle")

__all__ = ["AppliedCheckpoint", "CheckpointWatcher"]

_DEFAULT: Any = object()  # check= not given: the finiteness check


@dataclass(frozen=True)
class AppliedCheckpoint:
    """One checkpoint the watcher applied.

    ``read_seconds``: read + verify + map names + check; ``update_seconds``: the
    ``model.update`` call; ``lag_seconds``: from the marker's mtime (commit) to the
    update's end; ``bytes_read``: bytes of the data file read (local or remote).
    """

    step: int
    version: int
    path: Path
    variables: int
    read_seconds: float
    update_seconds: float
    lag_seconds: float
    run: str = ""
    created: float = 0.0
    bytes_read: int = 0


class CheckpointWatcher:
    """Apply the newest complete checkpoint of ``directory`` to ``model``, in a background thread.

    ::

        with CheckpointWatcher(model, "ckpts/") as w:
            ...
            w.wait_for_step(100, timeout=30)

    Parameters
    ----------
    model: anything with ``.variables`` and ``.update(mapping) -> version``
        (a :class:`~acl_bundle.BundleModel`); when its ``update`` takes ``step=`` (a
        BundleModel, a fleet) it is given the checkpoint's step, when it takes ``check=``
        the checks run on its staged weights.
    directory: the checkpoint directory (must exist), or an fsspec URL of a prefix in
        an object store or remote filesystem (``s3://bucket/ckpts``, ``gs://...``,
        ``hdfs://...``): then each poll is one LIST of the prefix, markers are read only
        when the listing shows them new or changed (size, ETag, LastModified), and
        transient store errors (5xx, timeouts, resets) are retried with backoff up to
        ``MAX_BACKOFF`` seconds, logged, and never mark a checkpoint bad.
    storage_options: the fsspec filesystem's options for a URL ``directory`` (e.g.
        ``{"endpoint_url": "http://minio:9000", "key": ..., "secret": ...}`` for s3fs).
    poll_interval: seconds between directory scans (finite, > 0; also the fallback
        when watchdog notifications are missed).
    rename, strip_prefix, allow_partial, allow_unmatched: name mapping, as in
        :func:`acl_bundle.checkpoint.load_checkpoint`.
    start_after: only apply steps above this one (None: apply the newest present at start).
    use_watchdog: True = require watchdog, False = poll only, None = use it if installed.
    on_apply: called in the watcher thread with each :class:`AppliedCheckpoint`.
    check: ``check(weights)`` run on every checkpoint's weights before it is applied;
        raising (or returning False) refuses it (see :mod:`acl_bundle.checks`).
        Default: :func:`acl_bundle.checks.finite`; None: no check.
    max_bytes: the largest data file accepted (default: twice the model's variable
        bytes + 64 MiB).
    allow_step_reset: True = the most recently committed checkpoint wins even with a
        lower step (for trainers that restart from step 0 without a run id).
    history_size: how many :class:`AppliedCheckpoint` records :attr:`history` keeps.
    golden: a :func:`acl_bundle.checks.golden` check passed to ``model.update`` (needs
        ``BundleModel(..., history=N)``).  The first checkpoint after load cannot be
        guarded by it (the model's current weights are not known on the host, so a
        refusal could not be undone): it is applied with ``check`` only, with a WARNING.
    protocol: "auto" (by what the directory holds), "acl_bundle" (``*.ckpt.json`` markers)
        or "tf" (TensorFlow's ``checkpoint`` state file; needs the ``tf`` extra).
    health_check: ``health_check(model)`` called after each update; raising or
        returning False rolls the model back to the weights served before
        (``model.rollback``, needs ``BundleModel(..., history=N)``) and skips the checkpoint.
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
        check: _checks.Check | None = _DEFAULT,
        max_bytes: int | None = None,
        allow_step_reset: bool = False,
        history_size: int = 100,
        golden: _checks.Golden | None = None,
        health_check: Callable[[Any], Any] | None = None,
        protocol: str = "auto",
        storage_options: Any = None,
    ) -> None:
        if not hasattr(model, "update") or not hasattr(model, "variables"):
            raise TypeError(f"model must have .update() and .variables (a BundleModel), got {type(model).__name__}")
        opts = WatchOptions(
            poll_interval=poll_interval, rename=rename, strip_prefix=strip_prefix, allow_partial=allow_partial,
            allow_unmatched=allow_unmatched, start_after=start_after, use_watchdog=use_watchdog, on_apply=on_apply,
            check=_checks.finite if check is _DEFAULT else check, max_bytes=max_bytes,
            allow_step_reset=allow_step_reset, history_size=history_size, golden=golden, health_check=health_check,
            protocol=protocol, storage_options=storage_options)
        self._opts = opts
        self._store = store = self._open(directory, opts)
        self._dir = Path(str(store.root))
        self._watchdog = False if store.remote else _want_watchdog(opts.use_watchdog)
        self._bind_model(model, opts)
        self._specs = variable_specs(model.variables)
        self._max_bytes = opts.max_bytes if opts.max_bytes is not None else limit_for(self._specs)
        self._policy = StepPolicy(opts.start_after, opts.allow_step_reset)
        tf_store = open_store(directory, opts.storage_options)  # TF's files: every name
        self._scanner = Scanner(store, tf_store, self._protocol_at_start(opts, tf_store), self._keeping,
                                opts.poll_interval)

        self._served: CheckpointInfo | None = None  # the checkpoint whose weights are served
        self._served_order: Order | None = None  # and its commit order (see _checkpoint/scan)
        self._applied_step: int | None = opts.start_after
        self._applied = self._refused = self._rolled_back = 0
        self._last: AppliedCheckpoint | None = None
        self._history: collections.deque[AppliedCheckpoint] = collections.deque(maxlen=opts.history_size)
        self._failures = 0  # consecutive polls that hit a transient store error
        self._transient_error: str | None = None
        self._loop_error: str | None = None
        self._poll_lock = threading.Lock()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Any = None

    @staticmethod
    def _open(directory: str | os.PathLike[str], opts: WatchOptions) -> Store:
        # a remote listing keeps the data objects' keys too (no request per object); a local one lstats markers only
        remote = is_url(directory)
        store = open_store(directory, opts.storage_options, suffixes=(MARKER_SUFFIX,) + (SUFFIXES if remote else ()))
        if store.remote:
            if opts.use_watchdog:
                raise ValueError(f"use_watchdog=True watches a local directory; {store.url!r} is polled")
        elif not Path(str(store.root)).is_dir():
            raise FileNotFoundError(f"checkpoint directory {str(store.root)!r} does not exist or is not a directory")
        return store

    def _protocol_at_start(self, opts: WatchOptions, tf_store: Store) -> str | None:
        if opts.protocol != "auto":
            protocol: str | None = opts.protocol
        elif self._store.remote:
            try:
                names = tf_store.names()  # one LIST; detection is retried by the polls if this fails
            except TransientError:
                return None
            protocol = protocol_of(names, self._store.url)
        else:
            protocol = detect_protocol(self._dir)
        if protocol == "tf":
            require_tensorflow()  # ImportError naming the extra, now rather than in the thread
        return protocol

    def _bind_model(self, model: Any, opts: WatchOptions) -> None:
        """How to call ``model.update`` (what it takes), and whether it can undo what golden/health checks need."""
        try:
            params = inspect.signature(model.update).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        self._model_checks = "check" in params  # a BundleModel: checks run on its staged weights
        # a BundleModel or a fleet takes the checkpoint's step (and a BundleModel a source label)
        self._pass_step = "step" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        self._pass_source = "source" in params
        needs_history = [n for n, v in (("golden", opts.golden), ("health_check", opts.health_check)) if v is not None]
        if needs_history and not getattr(model, "keeps_history", False):
            raise ValueError(f"{' and '.join(needs_history)} need(s) the model's history to undo or roll back: "
                             "open it with BundleModel(..., history=N)")
        self._model = model

    # ------------------------------------------------------------------ state
    @property
    def protocol(self) -> str | None:
        """The protocol in use: "acl_bundle", "tf", or None while an "auto" directory is still empty."""
        return self._scanner.protocol

    @property
    def applied_step(self) -> int | None:
        """The step of the weights now served (``start_after`` until something is applied)."""
        return self._applied_step

    @property
    def applied_run(self) -> str | None:
        """The run id of the checkpoint now served ("" for markers without one; None before the first)."""
        return self._served.run if self._served else None

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
        """How many bad entries (corrupt, half-written, mismatched, malformed, refused by the check) were skipped."""
        return self._scanner.skipped

    @property
    def waiting(self) -> int:
        """How many committed checkpoints are listed but not readable yet (missing, shorter than their marker or
        index says): they are retried with back-off, and at once when one of their files changes."""
        return self._scanner.waiting

    @property
    def refused(self) -> int:
        """How many of the skipped checkpoints the check refused."""
        return self._refused

    @property
    def rolled_back(self) -> int:
        """How many applied checkpoints failed the health check and were rolled back."""
        return self._rolled_back

    @property
    def last(self) -> AppliedCheckpoint | None:
        return self._last

    @property
    def history(self) -> list[AppliedCheckpoint]:
        """The last ``history_size`` applied checkpoints, oldest first (a copy)."""
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
            self._observer = _start_observer(self._dir, self._wake)
        self._thread = threading.Thread(target=self._run, name=f"acl_bundle-watcher:{self._dir.name}", daemon=True)
        self._thread.start()
        log.info("watching %s for checkpoints (%s, poll every %.3g s)", self._store.url,
                 "watchdog" if self._observer else "polling", self._opts.poll_interval)
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
        with self._cond:
            self._cond.notify_all()

    def __enter__(self) -> CheckpointWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.poll()
                self._loop_error = None
            except ModelClosedError:
                log.warning("checkpoint watcher on %s stops: the model was closed", self._dir)
                break
            except Exception as e:  # never let the thread die on a surprise; the model keeps its weights
                what = f"{type(e).__name__}: {e}"
                if what != self._loop_error:  # a traceback once, not every poll
                    self._loop_error = what
                    log.exception("checkpoint watcher on %s: unexpected error (keeps watching)", self._dir)
            self._wake.wait(self.retry_delay)
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ work
    def wait_for_step(self, step: int, timeout: float | None = None, *, run: str | None = None) -> bool:
        """Block until a step >= ``step`` (of ``run``, if given) is applied; False on timeout or once stopped."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while (self._applied_step is None or self._applied_step < step
                   or (run is not None and self.applied_run != run)):
                if self._stop.is_set() and not self.running:
                    return False
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(min(left, 0.5) if left is not None else 0.5)
            return True

    @property
    def retry_delay(self) -> float:
        """Seconds until the next poll: ``poll_interval``, doubled per consecutive transient failure, at most 60 s."""
        return backoff(self._opts.poll_interval, self._failures)

    def poll(self) -> AppliedCheckpoint | None:
        """Scan once and apply the newest good checkpoint above the applied step; return what was applied.

        A transient store error ends the poll (logged once per distinct error); the
        next poll, after :attr:`retry_delay`, tries again from the listing.
        """
        with self._poll_lock:
            try:
                for info in self._scanner.candidates(self._served, self._served_order, self._policy):
                    if self._stop.is_set() and self.running:
                        return None
                    applied = self._try(info)
                    if applied is not None:
                        break
                else:
                    applied = None
            except TransientError as e:
                self._failures += 1
                if str(e) != self._transient_error:
                    self._transient_error = str(e)
                    log.warning("checkpoint store %s: %s; %s, retrying in %.3g s",
                                self._store.url, e, self._keeping(), self.retry_delay)
                return None
            if self._failures:
                log.info("checkpoint store %s reachable again after %d failed poll(s)", self._store.url, self._failures)
            self._failures, self._transient_error = 0, None
            return applied

    def _keeping(self) -> str:
        return _serving(getattr(self._model, "version", None), self._last)

    def _try(self, info: CheckpointInfo) -> AppliedCheckpoint | None:
        t0 = time.perf_counter()
        arrays: Any = None
        try:
            if self._scanner.protocol == "tf":  # read by TensorFlow's own reader (CRC32C-checked)
                weights = self._read_tf(info)
            else:
                arrays = verify_checkpoint(info, max_bytes=self._max_bytes, lazy=True, stop=self._stop.is_set,
                                           store=self._store)
                weights = select_weights(arrays, self._specs, source=f"checkpoint step {info.step} ({info.path.name})",
                                         **self._opts.names)
            if not self._model_checks:
                _checks.run_check(self._opts.check, weights)
        except _checks.WeightsRefused as e:
            self._refused += 1
            self._scanner.mark_bad(info, f"refused: {e}")
            return None
        except TransientError:
            raise  # the store failed, not the checkpoint: retried (poll)
        except NotReadyError as e:  # listed but not readable yet: retried with back-off, not marked bad
            if not self._stop.is_set():
                self._scanner.not_ready(info, str(e))
            return None
        except Exception as e:  # any per-entry failure (CheckpointError, OSError, a surprise): skip this entry
            if self._stop.is_set():
                return None  # abandoned because we are stopping: not the file's fault
            self._scanner.mark_bad(info, str(e) if isinstance(e, CheckpointError) else f"{type(e).__name__}: {e}")
            return None
        t1 = time.perf_counter()
        before = getattr(self._model, "version", None)
        try:
            version = self._update(info, weights)
        except ModelClosedError:
            raise
        except _checks.WeightsRefused as e:
            self._refused += 1
            self._scanner.mark_bad(info, f"refused: {e}")
            return None
        except Exception as e:  # a mismatched checkpoint, or the device refused: keep the last good weights
            self._scanner.mark_bad(info, f"model.update failed: {type(e).__name__}: {e}")
            return None
        finally:
            del arrays
        t2 = time.perf_counter()
        if self._opts.health_check is not None and not self._healthy(info, before):
            return None
        key = self._scanner.commit_key(info)
        lag = max(0.0, time.time() - self._store.key_time(key)) if key else float("nan")
        applied = AppliedCheckpoint(info.step, version, info.path, len(weights), t1 - t0, t2 - t1, lag,
                                    info.run, info.created, info.nbytes)
        self._scanner.applied(info)
        with self._cond:
            self._served, self._served_order = info, self._scanner.order(info)
            self._applied_step = info.step
            self._applied += 1
            self._last = applied
            self._history.append(applied)
            self._cond.notify_all()
        log.info("applied checkpoint step %d%s (%s) as version %d: %d variables, read %.1f ms, update %.1f ms",
                 info.step, f" of run {info.run}" if info.run else "", info.path.name, version, len(weights),
                 1e3 * (t1 - t0), 1e3 * (t2 - t1))
        if self._opts.on_apply is not None:
            try:
                self._opts.on_apply(applied)
            except Exception:
                log.exception("on_apply callback failed for step %d", info.step)
        return applied

    def _read_tf(self, info: CheckpointInfo) -> dict[str, Any]:
        """A TF checkpoint's weights: read in place, or (object store) from a private local copy of its files."""
        names = self._opts.names
        names.pop("allow_unmatched")
        store = self._scanner.tf_store
        if not isinstance(store, FsspecStore):
            return load_tf_checkpoint(info.path, self._specs, **names)
        limit = self._opts.max_bytes if self._opts.max_bytes is not None else TF_BOUND_FACTOR * self._max_bytes
        with fetched(store, self._scanner.tf_entry(info), limit=limit, stop=self._stop.is_set) as local:
            return load_tf_prefix(local, self._specs, label=store.name_url(info.path.name), **names)

    def _update(self, info: CheckpointInfo, weights: dict[str, Any]) -> int:
        """``model.update`` with the checks (on the model's staged weights when it takes them) and a label."""
        kw: dict[str, Any] = {}
        if self._pass_step:
            kw["step"] = info.step
        if self._pass_source:
            kw["source"] = self._store.name_url(info.path.name)  # the URL for a remote store
        if not self._model_checks:
            return int(self._model.update(weights, **kw))
        checks: list[Any] = [c for c in (self._opts.check, self._opts.golden) if c is not None]
        try:
            return int(self._model.update(weights, check=checks, **kw))
        except Exception as e:
            from .model import UnknownPreviousError

            if not isinstance(e, UnknownPreviousError):
                raise
            log.warning("checkpoint step %d applied without the golden check: %s", info.step, e)
            return int(self._model.update(weights, check=[c for c in (self._opts.check,) if c is not None], **kw))

    def _healthy(self, info: CheckpointInfo, before: int | None) -> bool:
        """Run the health check; on failure roll back to version ``before`` and skip the checkpoint."""
        try:
            ok = self._opts.health_check(self._model) is not False  # type: ignore[misc]
            why = "returned False"
        except Exception as e:
            ok, why = False, f"{type(e).__name__}: {e}"
        if ok:
            return True
        try:
            self._model.rollback(to=before)
            self._rolled_back += 1
            self._scanner.mark_bad(info, f"health check failed after the update ({why}); "
                                         f"rolled back to version {before}")
        except ModelClosedError:
            raise
        except Exception as e:
            self._scanner.mark_bad(info, f"health check failed after the update ({why}) and the rollback failed too "
                                 f"({type(e).__name__}: {e}); the model serves this checkpoint")
            with self._cond:  # it is what is served now: record it so later steps compare against it
                self._served, self._served_order = info, self._scanner.order(info)
                self._applied_step = info.step
        return False

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (f"<CheckpointWatcher {str(self._dir)!r} {state} step={self._applied_step} applied={self._applied} "
                f"skipped={self.skipped}>")


def _want_watchdog(use: bool | None) -> bool:
    if use is False:
        return False
    try:
        import watchdog.observers  # noqa: F401
    except ImportError:
        if use:
            from ._errors import extra_hint

            raise ImportError(f"use_watchdog=True needs the watchdog package: {extra_hint('watch')}") from None
        return False
    return True


def _start_observer(directory: Path, wake: threading.Event) -> Any:
    """A watchdog observer that sets ``wake`` on any event in ``directory``."""
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers import Observer

    class _Handler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            wake.set()

    obs = Observer()
    obs.schedule(_Handler(), str(directory), recursive=False)
    obs.daemon = True
    obs.start()
    return obs


def _serving(version: int | None, last: AppliedCheckpoint | None) -> str:
    """What the model serves while the watcher skips or waits (``last``: applied from here), for log lines."""
    if last is None:
        return ("the model keeps its current weights" if version is None
                else f"the model keeps its current weights (version {version}; nothing applied from here yet)")
    if version is None or version == last.version:
        return f"the model keeps the weights of step {last.step}" + ("" if version is None else f" (version {version})")
    return (f"the model keeps its current weights (version {version}; the last checkpoint applied from here "
            f"was step {last.step}, version {last.version})")
