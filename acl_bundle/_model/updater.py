"""The update graph's I/O and the two phases of an update; the init graph at load.

*Stage* copies the changed weights host->device into the staging pool (one device
block, allocated at load), points each changed update input's data buffer at its
place in the pool (``acl.update_data_buffer``) and attaches to each input the tensor
descriptor it needs: the variable's full shape for a changed one, the empty
descriptor (dims ``[0]``: leave this variable alone) for every other one.  Unchanged
inputs point at one small shared device buffer, so the staging memory is the pool,
not one buffer per variable.  Inference keeps running meanwhile.  *Commit* executes the update graph under the writer
side of the gate — the only moment inference waits — and bumps the version.  A *verify*
step (the golden-input check) may run inside the commit, after the update graph and
before any reader is admitted; if it refuses, the changed variables get their previous
values back (a second run of the update graph) before the writer side is left, so no
reader ever runs on refused weights.  If even that restore fails, the gate is shut:
the model refuses every later call rather than serve the refused weights.  With the
model's history on, each commit records a host copy of what it applied.
"""
from __future__ import annotations

import logging
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np

from .._constants import ACL_FORMAT_ND, NUMPY_TO_ACL
from .._errors import AclCleanupWarning, AclError, check, null_handle, recent_error, unwrap
from .buffers import Ledger
from .context import ModelContext, restore_context
from .description import Description, check_array, tensor_info
from .gate import Gate
from .history import History
from .worker import INLINE

log = logging.getLogger("acl_bundle")

_EMPTY, _FULL, _CUSTOM = 0, 1, 2  # which tensor desc is attached to an update input

# Every unchanged update input points at this one buffer.  What GE requires of an
# empty-desc input's buffer (GitHub hicann/ge, api/acl/acl_model/model/model.cpp at
# ffdcbc9f): RuntimeV2ModelExecute (the path of dynamic-shape graphs, which the update
# graph is: unknown-rank inputs) rejects only a NULL aclDataBuffer (line 592) and hands
# the buffer's address and length to the tensor unchecked (lines 603-604); the shape is
# the dims [0] desc, range-checked at line 619; the legacy ModelExecute does the same
# (lines 737-750).  An empty tensor reads no bytes, so any live device address serves
# for all of them at once.  64 B: the smallest block acl.rt.malloc hands out aligned.
EMPTY_INPUT_BYTES = 64
# Offsets of the variables staged together in the pool: acl.rt.malloc's alignment (64 B),
# so each staged variable is aligned as its own malloc would have been.
POOL_ALIGN = 64


def _aligned(n: int) -> int:
    return -(-n // POOL_ALIGN) * POOL_ALIGN


def pool_bytes_for(nbytes: Sequence[int]) -> int:
    """Pool bytes that stage variables of these sizes together."""
    return sum(_aligned(n) for n in nbytes)


class StagingTooSmallError(ValueError):
    """An update's variables do not fit the staging pool (``staging_bytes``)."""


class WeightVersion(int):
    """Which weights produced a result: the number of committed updates since load (an ``int``),
    with ``step``, the identity the caller gave that update (e.g. the trainer's global step; None if not given)."""

    step: int | None

    def __new__(cls, n: int, step: int | None = None) -> WeightVersion:
        v = super().__new__(cls, n)
        v.step = step
        return v


class StagedUpdate:
    """Weights validated and copied to the device, not live yet: :meth:`commit` or :meth:`abort`.

    While it is open, no other update of the model can stage or commit (``BundleModel.stage``
    waits, or raises ``TimeoutError`` after its ``timeout``).  Leaving a ``with`` block
    without committing aborts it, and so does garbage collection.  The served weights
    change only in :meth:`commit`.
    """

    def __init__(self, updater: Updater, variables: int, nbytes: int, stage_seconds: float, step: int | None) -> None:
        self.variables, self.nbytes, self.stage_seconds, self.step = variables, nbytes, stage_seconds, step
        self.version: WeightVersion | None = None  # set by commit
        # Set by the model before commit: the golden verify and the values that undo it,
        # and what the history records (host copies of the applied arrays, their source).
        self.verify: Callable[[], None] | None = None
        self.undo: dict[int, np.ndarray] | None = None
        self.kept: dict[int, np.ndarray] | None = None
        self.source: str | None = None
        self._updater: Updater | None = updater
        self._release = weakref.finalize(self, updater.lock.release)  # abort on GC

    @property
    def open(self) -> bool:
        return self._updater is not None

    def _take(self) -> Updater:
        updater = self._updater
        if updater is None:
            raise RuntimeError("this staged update was already committed or aborted")
        self._updater = None
        return updater

    def _commit_entered(self) -> WeightVersion:
        """Commit; the caller has registered the in-flight call with the gate (see :func:`commit_admitted`)."""
        updater = self._take()
        try:
            self.version = updater.commit(self)
        finally:
            self._release()
        return self.version

    def commit(self) -> WeightVersion:
        """Make the staged weights live (the only pause inference sees); return their version."""
        updater = self._updater
        if updater is None:
            return self._commit_entered()  # raises: already done
        return updater.protect(self._commit_job)

    def _commit_job(self, job: Any) -> WeightVersion:
        updater = self._updater
        if updater is None:
            return self._commit_entered()  # raises: already done
        try:
            updater._gate.enter()
        except BaseException:
            self._abort()  # the model is closed: nothing can go live any more
            raise
        try:
            return self._commit_entered()  # a commit runs to its end, even for an interrupted caller
        finally:
            updater._gate.exit()

    def abort(self) -> None:
        """Drop the stage; the served weights stay as they are. Idempotent."""
        updater = self._updater
        if updater is not None:
            updater.protect(lambda job: self._abort())

    def _abort(self) -> None:
        if self._updater is not None:
            self._updater = None
            self._release()
            log.debug("staged update (step %s) aborted", self.step)

    def __enter__(self) -> StagedUpdate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def __repr__(self) -> str:
        state = "open" if self.open else (f"committed v{self.version}" if self.version is not None else "aborted")
        return f"<StagedUpdate {self.variables} variables, {self.nbytes} B, step={self.step} {state}>"


def commit_admitted(staged: StagedUpdate) -> WeightVersion:
    """Commit ``staged`` for a caller that has already entered the model's gate (``Gate.enter``).

    ``BundleModel.update`` stages and commits in one admitted write (``BundleModel._write``), so
    the commit must not enter the gate a second time as :meth:`StagedUpdate.commit` does; like
    it, this raises ``RuntimeError`` when the stage was already committed or aborted.
    """
    return staged._commit_entered()


class Updater:
    """Update-graph buffers, datasets and descriptors (built once at load), version and update stats."""

    def __init__(self, ctx: ModelContext, ledger: Ledger, d: Description, desc: int, model_id: int, gate: Gate,
                 staging_bytes: int | None = None) -> None:
        acl = ctx.acl
        self._ctx, self._gate, self._model_id = ctx, gate, model_id
        self._variables = d.variables
        full = pool_bytes_for([v.nbytes for v in d.variables])
        # None: every update fits (today's contract); smaller pools trade that for memory.
        self.staging_bytes = full if staging_bytes is None else min(staging_bytes, full)
        self._pool = ledger.malloc(self.staging_bytes) if self.staging_bytes else 0
        empty = ledger.malloc(EMPTY_INPUT_BYTES)
        self._dbufs: list[int] = []  # each update input's data buffer ...
        self._in = ledger.dataset([(empty, EMPTY_INPUT_BYTES)] * len(d.variables), self._dbufs)
        self._points = [(empty, EMPTY_INPUT_BYTES)] * len(d.variables)  # ... and where it points now
        size = partial(acl.mdl.get_output_size_by_index, desc)
        self._out = ledger.dataset([(ledger.malloc(size(i)), size(i)) for i in range(acl.mdl.get_num_outputs(desc))])
        make = acl.create_tensor_desc
        self._empty_desc = [
            ledger.create("acl.create_tensor_desc", partial(make, NUMPY_TO_ACL[v.dtype], [0], ACL_FORMAT_ND),
                          acl.destroy_tensor_desc)
            for v in d.variables
        ]
        self._full_desc = [
            ledger.create("acl.create_tensor_desc", partial(make, NUMPY_TO_ACL[v.dtype], list(v.shape), ACL_FORMAT_ND),
                          acl.destroy_tensor_desc) if v.shape is not None else 0
            for v in d.variables
        ]
        for i, td in enumerate(self._empty_desc):
            unwrap(acl, "acl.mdl.set_dataset_tensor_desc", acl.mdl.set_dataset_tensor_desc(self._in, td, i))
        self._attached = [_EMPTY] * len(d.variables)
        self._not_empty: set[int] = set()
        self.lock = threading.Lock()  # serialises updates: held from stage to commit or abort
        self.current = WeightVersion(0)  # what the served weights are; read by infer inside its reader section
        self.commit_ended = 0.0  # perf_counter at the last commit's end_write (before the hand-off)
        self._stats_lock = threading.Lock()  # held only to change or copy the counters
        self._stats: dict[str, Any] = {
            "updates": 0, "failed_updates": 0, "update_bytes": 0,
            "stage_seconds": 0.0, "commit_seconds": 0.0, "last_update": None,
            "refused_updates": 0, "rollbacks": 0,
        }
        self.history = History(d.variables, 0, 0)  # off unless the model sets one
        # Runs a write-side call where no signal handler can interrupt it (the model's worker,
        # see worker.py); set by the model.  ``protect(fn)`` calls ``fn(job)``.
        self.protect: Callable[[Callable[[Any], Any]], Any] = lambda fn: fn(INLINE)

    @property
    def version(self) -> int:
        return int(self.current)

    @property
    def stats(self) -> dict[str, Any]:
        with self._stats_lock:
            return dict(self._stats)

    def _failed(self) -> None:
        with self._stats_lock:
            self._stats["failed_updates"] += 1

    def check_fits(self, changed: Mapping[int, np.ndarray]) -> None:
        """Refuse (before any device copy) an update whose variables do not fit the staging pool."""
        need = pool_bytes_for([a.nbytes for a in changed.values()])
        if need > self.staging_bytes:
            raise StagingTooSmallError(
                f"update of {len(changed)} variable(s) needs {need} bytes of staging; the pool has "
                f"{self.staging_bytes} (staging_bytes={self.staging_bytes}); update fewer variables at a time "
                f"or load with a larger staging_bytes (every update fits with {self._full_pool()})"
            )

    def _full_pool(self) -> int:
        return pool_bytes_for([v.nbytes for v in self._variables])

    def count(self, key: str) -> None:
        """Count a refused update or a rollback (stats keys ``refused_updates``, ``rollbacks``)."""
        with self._stats_lock:
            self._stats[key] += 1

    def stage(self, changed: dict[int, np.ndarray], step: int | None) -> StagedUpdate:
        """Phase 1: copy ``changed`` (validated arrays by variable index) to the device. Hold ``self.lock``."""
        t0 = time.perf_counter()
        restore = 0
        try:
            restore = self._ctx.enter()
            nbytes = self._stage(changed)
        except BaseException:
            self._failed()
            raise
        finally:
            restore_context(self._ctx.acl, restore)
        return StagedUpdate(self, len(changed), nbytes, time.perf_counter() - t0, step)

    def commit(self, staged: StagedUpdate) -> WeightVersion:
        """Phase 2: run the update graph as the gate's writer; the new weights and version go live together."""
        t1 = time.perf_counter()
        restore = 0
        self._refused = False
        try:
            restore = self._ctx.enter()
            version = self._commit(staged.step, staged.verify, staged.undo)
        except BaseException:
            if self._refused:
                self.count("refused_updates")
            else:
                self._failed()
            raise
        finally:
            restore_context(self._ctx.acl, restore)
        try:
            self._gate.hand_off()  # the readers this commit held back go first (see Gate.hand_off)
        finally:  # applied and live even if an interrupt lands in the hand-off: counted as an update
            t2 = self.commit_ended
            if staged.kept is not None:
                self.history.record(int(version), staged.kept, staged.source, staged.step)
            with self._stats_lock:
                st = self._stats
                st["updates"] += 1
                st["update_bytes"] += staged.nbytes
                st["stage_seconds"] += staged.stage_seconds
                st["commit_seconds"] += t2 - t1
                st["last_update"] = {"version": int(version), "step": version.step, "variables": staged.variables,
                                     "bytes": staged.nbytes, "stage_seconds": staged.stage_seconds,
                                     "commit_seconds": t2 - t1}
        log.debug("update v%d (step %s): %d variables, %d bytes, stage %.3f ms, commit %.3f ms", version, version.step,
                  staged.variables, staged.nbytes, 1e3 * staged.stage_seconds, 1e3 * (t2 - t1))
        return version

    def _stage(self, changed: dict[int, np.ndarray]) -> int:
        """Copy the changed weights into staging and attach the descriptors; inference keeps running."""
        ctx = self._ctx
        acl = ctx.acl
        nbytes = 0
        offset = 0
        for i, a in changed.items():  # laid out in the pool in the caller's order; check_fits bounded it
            ptr, size = self._pool + offset, a.nbytes
            offset += _aligned(size)
            ctx.memcpy(ptr, size, ctx.host_ptr(a), size, ctx.h2d)
            if self._points[i] != (ptr, size):
                check(acl, "acl.update_data_buffer", acl.update_data_buffer(self._dbufs[i], ptr, size))
                self._points[i] = (ptr, size)
            nbytes += size
        for i in self._not_empty - changed.keys():
            self._attach(i, _EMPTY, self._empty_desc[i])
        for i, a in changed.items():
            if self._full_desc[i]:
                self._attach(i, _FULL, self._full_desc[i])
            else:  # shape unknown to the bundle: describe the array as given
                td = acl.create_tensor_desc(NUMPY_TO_ACL[a.dtype], list(a.shape), ACL_FORMAT_ND)
                if not td:
                    raise null_handle(acl, "acl.create_tensor_desc")
                try:
                    self._attach(i, _CUSTOM, td)
                finally:
                    acl.destroy_tensor_desc(td)  # the dataset keeps its own copy (pyACL documentation)
        return nbytes

    def _commit(self, step: int | None, verify: Callable[[], None] | None = None,
                undo: dict[int, np.ndarray] | None = None) -> WeightVersion:
        """Execute the update graph as the gate's writer: the only phase that excludes inference.

        The version is bumped *before* the graph runs (no reader can see it meanwhile) and
        taken back only on a clean non-zero return: an exception raised between the C call
        returning and the next line (KeyboardInterrupt, ``sys.exit`` in a SIGTERM handler)
        then cannot leave applied weights under the old version.
        """
        acl = self._ctx.acl
        refusal: BaseException | None = None
        self._gate.begin_write()
        try:
            before = self.current
            self.current = WeightVersion(before + 1, step)
            ret = acl.mdl.execute(self._model_id, self._in, self._out)
            if ret != 0:
                self.current = before
            elif verify is not None:
                try:
                    verify()  # the new weights are live on the device, but no reader is admitted
                except BaseException as e:
                    refusal = e
                    self._refused = True
                    self._undo(set(self._not_empty) - set(undo or {}), undo or {}, e)
                    self.current = before
            version = self.current
        finally:
            self._gate.end_write()
            self.commit_ended = time.perf_counter()  # the commit's end: readers may run from here
        if refusal is not None:
            raise refusal
        if ret != 0:
            err = AclError("acl.mdl.execute", ret, recent_error(acl))
            if hasattr(err, "add_note"):
                err.add_note(
                    "the update graph failed: on the simulator no variable was changed; on real hardware the "
                    "graph may have stopped part-way, so push the full set of weights again before trusting results"
                )
            raise err
        return version

    def _undo(self, missing: set[int], previous: dict[int, np.ndarray], refusal: BaseException) -> None:
        """Write the previous values back (writer side held); shut the gate if that fails."""
        try:
            if missing:
                raise ValueError(f"no previous value for variable(s) {sorted(missing)}")
            self._stage(previous)
            check(self._ctx.acl, "acl.mdl.execute", self._ctx.acl.mdl.execute(self._model_id, self._in, self._out))
            log.info(
                "update refused inside the commit and undone (%d variable(s) restored): %s", len(previous), refusal
            )
        except BaseException as e:
            self._gate.shutdown(0)  # fail closed: no reader may run on the refused weights
            log.error(
                "update refused but its undo failed (%s); the model is closed so that nothing is served from "
                "the refused weights",
                e,
            )
            if hasattr(refusal, "add_note"):
                refusal.add_note(
                    f"undoing it failed ({e}); the model was closed so that no reader sees the refused weights"
                )

    def _attach(self, i: int, state: int, td: int) -> None:
        if self._attached[i] == state and state != _CUSTOM:
            return
        acl = self._ctx.acl
        unwrap(acl, "acl.mdl.set_dataset_tensor_desc", acl.mdl.set_dataset_tensor_desc(self._in, td, i))
        self._attached[i] = state
        if state == _EMPTY:
            self._not_empty.discard(i)
        else:
            self._not_empty.add(i)


def run_init(ctx: ModelContext, desc: int, model_id: int, init_inputs: Sequence[np.ndarray] | None) -> None:
    """Execute the init graph once (it writes every variable's built-in value); its I/O is released right after."""
    acl = ctx.acl
    infos = [tensor_info(acl, desc, i, False) for i in range(acl.mdl.get_num_inputs(desc))]
    arrays = list(init_inputs) if init_inputs is not None else []
    if len(arrays) != len(infos):
        raise ValueError(
            f"the init graph takes {len(infos)} inputs {[t.name for t, _ in infos]}; init_inputs has {len(arrays)}"
        )
    arrays = [check_array(a, t, f"init input {t.name!r}") for a, (t, _) in zip(arrays, infos)]
    tmp = Ledger(acl)
    try:
        ins = [(tmp.malloc(max(a.nbytes, 1)), a.nbytes) for a in arrays]
        for (ptr, size), a in zip(ins, arrays):
            ctx.memcpy(ptr, size, ctx.host_ptr(a), a.nbytes, ctx.h2d)
        outs = [(tmp.malloc(s), s) for s in
                (acl.mdl.get_output_size_by_index(desc, i) for i in range(acl.mdl.get_num_outputs(desc)))]
        in_ds, out_ds = tmp.dataset(ins), tmp.dataset(outs)
        check(acl, "acl.mdl.execute", acl.mdl.execute(model_id, in_ds, out_ds))
    finally:
        for p in tmp.release():
            warnings.warn(f"init teardown: {p}", AclCleanupWarning, stacklevel=3)
