"""BundleModel: load an Ascend bundle model once, update its weights live, serve inference.

The façade over the device runtime in ``acl_bundle/_model/``, one file per concern:
``context`` (the model's ACL context, copies), ``bundle`` (reading a bundle),
``description`` (roles, tensors, variables; argument checks), ``buffers`` (release
ledger, infer slots), ``updater`` (update graph, stage/commit, version), ``guard``
(update checks), ``gate`` (admission), ``history`` (host copies for rollback),
``fastinfer`` (infer's plain case), ``general`` (its other cases), ``worker`` (the
main thread's calls, out of reach of signal handlers), ``process`` (fork, exit).

Concurrency model (what runs at the same time and what is serialised):

* ``infer`` calls run concurrently with each other (up to ``max_concurrency`` per
  batch size, each on its own pre-built buffers) and with the *stage* phase of an
  update.  Each is a reader of the gate while it uses its buffers (copy in, execute,
  copy out: microseconds to a few ms).
* ``update`` has two phases.  *Stage* validates the new weights and copies them
  host->device into the update graph's own input buffers; inference keeps running.
  *Commit* executes the update graph as the gate's writer: it waits for in-flight infer
  calls to end and holds new ones back until it is done.  The gate is phase-fair: infer
  calls already waiting when a commit ends go before the next one.  That is the only
  pause inference sees, and it is why no ``infer`` ever observes a half-applied update.
  Concurrent ``update`` calls are serialised.
* ``close`` refuses new calls, waits for in-flight calls to finish, then releases
  everything in reverse order of acquisition.

Device memory the wrapper itself costs (besides the bundle's variables, which ACL
allocates at load): the staging pool (``staging_bytes``; by default the variables'
total, so that every update fits), one 64-byte buffer every unchanged update input
points at, the update graph's outputs, plus per batch size and per concurrent infer
slot the model's input and output buffers at the size the model reports for them (its
largest batch's).  ``BundleModel.device_bytes`` reports the total.
"""
from __future__ import annotations

import logging
import os
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from . import _backend
from ._errors import AclCleanupWarning, ModelClosedError, unwrap
from ._manifest import ManifestVariable, manifest_path, read_manifest
from ._model.buffers import Ledger, probe_output_shapes
from ._model.bundle import BundleDescription, describe_bundle, read_bundle
from ._model.context import ModelContext, current_context, restore_context
from ._model.description import TensorInfo, Variable
from ._model.fastinfer import build as build_fast_infer
from ._model.gate import Gate
from ._model.general import GeneralPath
from ._model.guard import Guard, UnknownPreviousError  # noqa: F401  (re-exported: update(check=golden) raises it)
from ._model.history import History, HistoryEntry
from ._model.options import LoadOptions, check_load_options, check_step, load_options, with_load_signature
from ._model.process import lifecycle, release_quietly
from ._model.updater import StagedUpdate, Updater, WeightVersion, commit_admitted, run_init
from ._model.worker import INLINE, Worker, in_main_thread
from .checks import Check, Golden, split_checks

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

__all__ = ["BundleDescription", "BundleModel", "StagedUpdate", "TensorInfo", "Variable", "WeightVersion",
           "describe_bundle"]

log = logging.getLogger("acl_bundle")

Checks: TypeAlias = "Check | Golden | Sequence[Check | Golden] | None"
# Mapping is invariant in its key type: a dict[str, ndarray] is not a Mapping[int | str, ndarray].
Weights: TypeAlias = "Mapping[str, np.ndarray] | Mapping[int, np.ndarray] | Mapping[int | str, np.ndarray]"


class BundleModel:
    """A loaded Ascend bundle model (infer + optional init + update graphs sharing variables).

    ::

        with BundleModel("bundle.om") as m:
            m.update({1: new_w})          # by index or by variable name
            y = m.infer(x)                # numpy in, numpy out

    Parameters
    ----------
    path: the bundle ``.om`` file (``acl.mdl.bundle_load_from_file``).
    device_id: Ascend device to run on.
    acl: the ``acl`` module to use.  None: ``ACL_BUNDLE_BACKEND`` if set (``sim`` or
        ``pyacl``), else the file decides: a bundle in the simulator's format (what
        ``acl-bundle build`` writes) runs on the simulator, any other on pyACL; a device
        bundle without pyACL raises :class:`BackendNotFoundError` saying how to get either.
    run_init: run the init graph at load (sets every variable to its built-in value).
    init_inputs: arrays for an init graph that declares inputs (in input order).
    manifest: variable shapes. None = ``<bundle>.manifest.json`` beside ``path`` if it
        exists; a path or mapping = use that; False = ignore manifests.
    roles: ``{"infer": i, "update": j[, "init": k]}`` bundle indexes, for bundles whose
        graph order is not the standard [infer, init, update].
    max_concurrency: infer calls that may run at once per batch size (each has its own
        device buffers).
    pad_batch: for a dynamic-batch model, accept any row count up to the largest batch
        size: the rows run on the next batch size up (the padding rows are zeros on the
        device and are dropped from the outputs). False: only the model's batch sizes.
    staging_bytes: device bytes staging an update may use (the variables an update
        changes are copied there, 64-byte aligned, before the commit).  None (default):
        the variables' total, so any update fits, as when every weight is pushed at once.
        A model updated a few variables at a time (e.g. embedding tables) needs only its
        largest update: ``staging_bytes=max(v.nbytes for v in variables)`` for one at a
        time.  An update that does not fit raises ``StagingTooSmallError`` (a
        ``ValueError``) naming the sizes, before anything is copied.
    history: keep host copies of the last ``history`` applied weight sets (0 = off), within
        ``history_bytes``; needed by :meth:`rollback` and golden checks (see :mod:`._history`).
    history_bytes: the most host memory the history may hold (default 512 MiB); past it the
        oldest sets are dropped first.

    ``update``, ``rollback`` and ``staged.commit()`` return the new version, a
    :class:`WeightVersion` (an ``int`` with ``.step``); ``infer`` returns one array for a
    one-output model, else a tuple in ``outputs`` order.
    """

    # The keyword-only load options (LoadOptions, defaults LOAD_DEFAULTS in _model/options.py) are the same for
    # both loaders; help() and inspect show them through the signature with_load_signature gives.
    @with_load_signature("path", "str | os.PathLike[str]", "None")
    def __init__(self, path: str | os.PathLike[str], **options: Unpack[LoadOptions]) -> None:
        opts = load_options("BundleModel", options)
        path = os.fspath(path)
        self._unloaded(repr(path))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"bundle file {path!r} does not exist or is not a file")
        if opts["manifest"] is None:
            auto = manifest_path(path)
            opts["manifest"] = auto if auto.is_file() else False
        self._open(
            lambda acl: unwrap(acl, "acl.mdl.bundle_load_from_file", acl.mdl.bundle_load_from_file(path)),
            path, opts, backend_source=path,
        )

    @classmethod
    @with_load_signature("data", "bytes", "BundleModel")
    def from_bytes(cls, data: bytes, **options: Unpack[LoadOptions]) -> BundleModel:
        """Load a bundle from bytes in host memory (``acl.mdl.bundle_load_from_mem``; a bytearray or memoryview is
        copied); the keyword options are the constructor's (no manifest unless ``manifest=`` gives one)."""
        opts = load_options("from_bytes", options)
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)  # bytes_to_ptr needs an immutable bytes object that lives as long as the load
        if not isinstance(data, bytes):
            raise TypeError(
                f"from_bytes expects bytes, got {type(data).__name__} (a bytearray or memoryview is copied)"
            )
        if not data:
            raise ValueError("from_bytes got an empty bytes object")
        self = cls.__new__(cls)
        self._unloaded("'<bytes>'")

        def load(acl: Any) -> int:
            ptr = acl.util.bytes_to_ptr(data)
            return unwrap(acl, "acl.mdl.bundle_load_from_mem", acl.mdl.bundle_load_from_mem(ptr, len(data)))

        opts["manifest"] = opts["manifest"] or False
        self._open(load, "<bytes>", opts, backend_source=data)
        return self

    # ------------------------------------------------------------------ load
    def _unloaded(self, what: str) -> None:
        """The state close() and the properties read before (or without) a successful load."""
        self._gate = Gate.shut(f"BundleModel({what})")
        self._finalizer: weakref.finalize | None = None
        self._worker: Worker | None = None

    def _open(self, load: Callable[[Any], int], source: str, opts: Mapping[str, Any], backend_source: Any) -> None:
        """Check every option (``load_options``' dict), then load; on any failure release what was acquired."""
        acl, run_init, init_inputs, manifest, roles, pad_batch, staging_bytes, history, history_bytes = (
            opts["acl"], opts["run_init"], opts["init_inputs"], opts["manifest"], opts["roles"], opts["pad_batch"],
            opts["staging_bytes"], opts["history"], opts["history_bytes"])
        device_id, max_concurrency = check_load_options(
            opts["device_id"], run_init, init_inputs, roles, opts["max_concurrency"], pad_batch, staging_bytes, history,
            history_bytes)
        self._history_args = (history, history_bytes)
        manifest_vars = None if manifest is False else read_manifest(manifest)
        acl = _backend.resolve_acl(acl, source=backend_source)  # the one backend rule (see _backend)
        self._acl = acl
        self._source = source
        self._device_id = device_id
        lifecycle.begin_load(source)
        try:
            prev = current_context(acl)  # the caller's, given back however the load ends
            self._ledger = ledger = Ledger(acl)
            self._gate = gate = Gate(max_concurrency, f"BundleModel({source!r})")
            try:
                self._load(load, run_init, init_inputs, manifest_vars, roles, pad_batch, staging_bytes)
            except BaseException as e:
                gate.shutdown(0)
                for p in ledger.release(restore=prev):
                    if hasattr(e, "add_note"):
                        e.add_note(f"while unwinding: {p}")
                raise
            # Only a loaded model gets a worker and a finalizer (a failed load has unwound itself above).
            self._worker = worker = Worker(f"acl_bundle {source}")
            weakref.finalize(self, worker.stop)  # the worker outlives close (later calls are refused on it)
            self._updater.protect = self._protect
            self._finalizer = weakref.finalize(self, release_quietly, gate, ledger)
            lifecycle.opened(gate)
            restore_context(acl, prev if prev != self._ctx.handle else 0)
        finally:
            lifecycle.end_load()
        log.info(
            "loaded bundle %s on device %d: model ids %s, %d variables, init %s",
            source,
            device_id,
            self.model_ids,
            len(self.variables),
            "run" if (self.has_init and run_init) else "skipped",
        )

    def _load(
        self,
        load: Callable[[Any], int],
        run_init_graph: bool,
        init_inputs: Sequence[np.ndarray] | None,
        manifest_vars: list[ManifestVariable] | None,
        roles: Mapping[str, int] | None,
        pad_batch: bool,
        staging_bytes: int | None,
    ) -> None:
        acl, ledger = self._acl, self._ledger
        self._ctx = ctx = ModelContext(acl, self._device_id, ledger)
        bundle_id, ids, descs, d = read_bundle(acl, ledger, load, roles, manifest_vars, pad_batch)
        self.bundle_id: int = bundle_id
        self._desc = d
        self._profile_of = d.profile_of
        self.model_ids: dict[str, int] = {"infer": ids[d.infer], "update": ids[d.update]}
        if d.init is not None:
            self.model_ids["init"] = ids[d.init]
        self.has_init: bool = d.init is not None
        self.inputs: tuple[TensorInfo, ...] = d.inputs
        self.outputs: tuple[TensorInfo, ...] = d.outputs
        self.batch_sizes: tuple[int, ...] = d.batch_sizes
        self.variables: tuple[Variable, ...] = d.variables
        self._infer_id = ids[d.infer]
        self._out_shapes = probe_output_shapes(acl, d, self._infer_id, descs[d.infer])
        d.mark_dynamic_outputs(self._out_shapes)
        self.outputs = d.outputs  # image-size / dims models: dims that differ between gears are -1
        self._updater = Updater(ctx, ledger, d, descs[d.update], ids[d.update], self._gate, staging_bytes)
        self._updater.history = History(d.variables, *self._history_args)
        self._guard = Guard(ctx, ledger, d, self._infer_id, self._out_shapes, self._updater)
        self._general = GeneralPath(ctx, ledger, d, self._infer_id, self._out_shapes, self._updater, self._gate)
        self._fast = build_fast_infer(ctx, d.accept, d.default_batch, self._gate, self._infer_id, self._updater)
        if d.init is not None and run_init_graph:
            run_init(ctx, descs[d.init], ids[d.init], init_inputs)
        elif init_inputs is not None:
            raise ValueError("init_inputs given but the init graph is not run (no init graph, or run_init=False)")

    # ------------------------------------------------------------------ infer / update
    def infer(self, *inputs: Any, return_version: bool = False) -> Any:
        """Run the infer graph on the current weights.

        Give the inputs positionally in ``self.inputs`` order, or one mapping by input
        name.  Returns one new array for a one-output model, else a tuple of arrays in
        ``self.outputs`` order; the arrays belong to the caller.  With
        ``return_version=True`` returns ``(result, version)``: the number of committed
        updates whose weights produced the result (a :class:`WeightVersion`; its
        ``.step`` is the step that update was given).
        """
        done = self._fast(inputs)  # the plain case (see _fastinfer); None: anything else, below
        if done is not None:
            return done if return_version else done[0]
        if self._gate.closed:
            raise ModelClosedError(f"BundleModel({self._source!r}) is closed")
        arrays, rows = self._desc.check_inputs(inputs)
        batch = self._profile_of[rows]  # the batch size that runs these rows (itself when it is one)
        outs, version = self._protect(self._general.read, batch, arrays, rows)
        result = outs[0] if len(outs) == 1 else tuple(outs)
        return (result, version) if return_version else result

    def _protect(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(job, *args)``: on the model's worker when called from the main thread (see _model/worker.py)."""
        worker = self._worker
        if worker is None or self._gate.forked or not in_main_thread():
            return fn(INLINE, *args)
        return worker.call(fn, *args)

    def update(
        self,
        weights: Weights,
        *,
        step: int | None = None,
        check: Checks = None,
        source: str | None = None,
    ) -> int:
        """Replace some variables; return the new version (a :class:`WeightVersion`, an ``int``).

        Keys are variable indexes or names; values are arrays of exactly the
        variable's shape and dtype.  Only the given variables are copied to the
        device; the update graph leaves every other one untouched (empty tensor
        descriptor).  ``step`` is your identity for these weights (e.g. the trainer's
        global step), reported by ``infer(..., return_version=True)`` as ``version.step``
        and in ``stats``.  On any error the model keeps serving the previous weights.

        ``check``: one check or a list (see :mod:`acl_bundle.checks`).  A weight check
        sees ``{name: array}`` after validation, before anything is staged; a golden
        check runs the new weights on its inputs inside the commit and undoes the update
        if it refuses (needs ``history``).  A refused update raises
        :class:`~acl_bundle.checks.WeightsRefused`, changes nothing and is counted in
        ``stats["refused_updates"]``.  ``source`` labels the history entry.
        """
        changed, plain, goldens = self._validate(weights, step, check, source)
        stage = partial(self._guard.stage, changed, step, plain, goldens, source)
        return self._protect(self._write, None, stage, True)

    def stage(self, weights: Weights, *, step: int | None = None,
              timeout: float | None = None, check: Checks = None, source: str | None = None) -> StagedUpdate:
        """Phase 1 of an update: validate and copy to the device while inference goes on.

        Returns a :class:`StagedUpdate`; its ``commit()`` makes the weights live, its
        ``abort()`` (or leaving ``with``, or garbage collection) drops them.  One stage is
        open per model at a time: this waits for an open one to end, at most ``timeout``
        seconds (None: no limit), then raises ``TimeoutError``.  ``check`` and
        ``source`` as in :meth:`update` (weight checks run now, golden checks in commit).
        """
        changed, plain, goldens = self._validate(weights, step, check, source)
        if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 0):
            raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
        stage = partial(self._guard.stage, changed, step, plain, goldens, source)
        return self._protect(self._write, timeout, stage, False)  # the StagedUpdate owns the update lock

    def _write(self, job: Any, timeout: float | None, stage: Callable[[], StagedUpdate], commit: bool) -> Any:
        """The write side, once for update, stage and rollback: admit, take the update lock, stage, [commit].

        Runs where no signal handler does (see _protect).  A caller interrupted while this
        staged (``job.cancelled``) gets none of it: the stage is aborted before any commit.
        """
        gate = self._gate
        gate.enter()
        try:
            lock = self._updater.lock
            if not lock.acquire(timeout=-1 if timeout is None else timeout):
                raise TimeoutError(f"{self!r}: another update is staged or committing; waited {timeout} s")
            try:
                staged = stage()
            except BaseException:
                lock.release()
                raise
            if job.cancelled:
                staged.abort()  # on the worker (or another thread): runs at once
                return None
            return commit_admitted(staged) if commit else staged
        finally:
            gate.exit()

    def _validate(self, weights: Any, step: Any, check: Checks, source: str | None
                  ) -> tuple[dict[int, np.ndarray], list[Check], list[Golden]]:
        """Everything an update is checked for before the first device copy."""
        if self._gate.closed:
            raise ModelClosedError(f"BundleModel({self._source!r}) is closed")
        changed = self._desc.check_weights(weights)
        check_step(step)
        self._updater.check_fits(changed)
        plain, goldens = _checks_of(check, source)
        return changed, plain, goldens

    def rollback(self, to: int | None = None) -> int:
        """Re-apply the weights of an earlier version as one atomic update; return the new version (a WeightVersion).

        ``to``: the version whose weights to restore (default: the one before the last
        update).  Needs ``history``: every variable changed since ``to`` must have a
        known value at ``to`` (ValueError naming those that do not).  The outputs are
        then bit-identical to those of version ``to``.
        """
        if self._gate.closed:
            raise ModelClosedError(f"BundleModel({self._source!r}) is closed")
        updater = self._updater
        if not updater.history.enabled:
            raise ValueError("rollback needs the model's history: open the model with BundleModel(..., history=N)")
        restored: list[Any] = []

        def stage() -> StagedUpdate:
            target, values = updater.history.target(to, updater.version)
            updater.check_fits(values)
            step = next((e.step for e in reversed(updater.history.entries) if e.version <= target), None)
            staged = updater.stage(values, step)
            staged.kept, staged.source = values, f"rollback to version {target}"
            restored[:] = [target, len(values)]
            return staged

        def rollback(job: Any) -> Any:
            version = self._write(job, None, stage, True)
            if version is not None:  # None: cancelled, the caller is being interrupted
                updater.count("rollbacks")
                log.warning("rolled back to the weights of version %d (now version %d, %d variable(s) restored)",
                            restored[0], version, restored[1])
            return version

        return self._protect(rollback)

    @property
    def history(self) -> list[HistoryEntry]:
        """The applied updates the history still covers, oldest first (empty when history is off)."""
        return self._updater.history.entries

    @property
    def keeps_history(self) -> bool:
        """True when host copies of applied weights are kept (``history=N``): rollback and golden checks can undo."""
        return self._updater.history.enabled

    # ------------------------------------------------------------------ info / lifecycle
    @property
    def version(self) -> int:
        """Number of committed updates since load."""
        return self._updater.version

    @property
    def step(self) -> int | None:
        """The ``step`` given with the update that produced the served weights (None: not given, or none yet)."""
        return self._updater.current.step

    @property
    def staging_bytes(self) -> int:
        """Bytes of the staging pool: the most one update may change (see the constructor)."""
        return self._updater.staging_bytes

    @property
    def closed(self) -> bool:
        return self._gate.closed

    @property
    def context(self) -> int:
        """The ACL context (``aclrtContext`` handle) the model's resources live in; ModelClosedError once closed.

        For the caller's own pyACL work beside the model, e.g. a dataset run in the same context.
        """
        if self._gate.closed:
            raise ModelClosedError(f"BundleModel({self._source!r}) is closed")
        return self._ctx.handle

    @property
    def device_bytes(self) -> int:
        """Device memory this wrapper allocated (staging pool, update and infer buffers), not counting the variables."""
        return self._ledger.device_bytes

    @property
    def stats(self) -> dict[str, Any]:
        """Counters: version, infers, updates, failed updates, bytes and stage/commit seconds."""
        st = self._updater.stats
        current = self._updater.current
        st["version"] = int(current)
        st["step"] = current.step
        st["infers"] = self._gate.reads
        return st

    def close(self) -> None:
        """Release every ACL resource in reverse order; idempotent; waits for in-flight calls.

        In a child forked while the model was open it returns at once, touching nothing.
        """
        finalizer = self._finalizer
        if finalizer is None or self._gate.forked or not finalizer.alive:
            return
        problems = self._protect(lambda job: (self._gate.shutdown(), finalizer())[1])
        for p in problems or ():
            warnings.warn(f"BundleModel.close: {p}", AclCleanupWarning, stacklevel=2)
        if problems is not None:
            log.info("closed bundle %s", self._source)

    def __enter__(self) -> BundleModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        updater = getattr(self, "_updater", None)
        state = "closed" if self.closed or updater is None else f"version={updater.version}"
        return f"<BundleModel {getattr(self, '_source', '?')!r} device={getattr(self, '_device_id', '?')} {state}>"


def _checks_of(check: Any, source: Any) -> tuple[list[Check], list[Golden]]:
    if source is not None and not isinstance(source, str):
        raise TypeError(f"source must be a str or None, got {type(source).__name__}")
    return split_checks(check)
