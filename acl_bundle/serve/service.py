"""The served model behind both front ends: readiness, infer through the batcher, weight updates.

The REST and gRPC front ends only translate their transport into calls on
:class:`ModelService` and its :class:`~acl_bundle.serve.protocol.ServeError` back into
status codes.  Every blocking model call (``infer``, ``update``, parsing weight
files) runs in a worker thread; the event loop only moves bytes.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import checks as _checks
from .auth import UpdateAuth
from .batcher import Batcher, BatchResult
from .metrics import Metrics
from .protocol import (
    InputTensor,
    ModelSpec,
    ServeError,
    decode_inputs,
    requested_outputs,
)
from .shm import SharedMemoryRegistry
from .stats import ModelStats
from .updates import describe, merge_weight_files, update_error

log = logging.getLogger("acl_bundle.serve")

__all__ = ["InferOutcome", "ModelService"]


class InferOutcome:
    """What a front end needs to answer an infer request."""

    __slots__ = ("outputs", "version", "step")

    def __init__(self, outputs: list[tuple[Any, np.ndarray]], version: int, step: int | None) -> None:
        self.outputs = outputs  # (TensorSpec, array) for each requested output
        self.version = version
        self.step = step


class _WatchedModel:
    """What the CheckpointWatcher sees: the model, with updates going through the service."""

    def __init__(self, service: ModelService) -> None:
        self._service = service

    @property
    def variables(self) -> Any:
        return self._service.model.variables

    def update(self, weights: Mapping[str, np.ndarray], *, step: int | None = None) -> int:
        # the watcher passes the checkpoint's step; the model keeps it with the version it commits
        return self._service.apply_update(weights, source="watch", step=step)


class ModelService:
    """One bundle served under one name."""

    def __init__(
        self,
        name: str,
        metrics: Metrics,
        auth: UpdateAuth,
        *,
        dynamic_batching: bool = True,
        max_queue_delay: float = 0.0,
        instances: int = 2,
        require_weights: bool = False,
        max_update_bytes: int = 1 << 30,
        finite_check: bool = True,
    ) -> None:
        self.name = name
        self.metrics = metrics
        self.auth = auth
        self.dynamic_batching = dynamic_batching
        self.max_queue_delay = max_queue_delay
        self.instances = instances
        self.require_weights = require_weights
        self.max_update_bytes = max_update_bytes
        self.finite_check = finite_check  # every wire update must hold finite values (the watcher's default check)
        self.model: Any = None
        self.stats = ModelStats(name)
        self.shm = SharedMemoryRegistry()
        self.spec: ModelSpec | None = None
        self.batcher: Batcher | None = None
        self.watcher: Any = None
        self.shutting_down = False
        self._update_lock = threading.Lock()
        self._infer_pool = ThreadPoolExecutor(max_workers=instances, thread_name_prefix="acl_bundle-infer")
        self._update_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="acl_bundle-update")

    # ------------------------------------------------------------------ state
    def attach(self, model: Any) -> None:
        """Serve ``model`` (called on the loop once it is loaded)."""
        self.model = model
        self.spec = ModelSpec.from_model(self.name, model)
        self.batcher = Batcher(self._infer, self._infer_pool, batch_sizes=self.spec.batch_sizes,
                               enabled=self.dynamic_batching and self.spec.can_batch,
                               max_queue_delay=self.max_queue_delay, slots=self.instances, on_batch=self._on_batch)
        self.batcher.start()
        self.metrics.weight_version.set(int(model.version))
        self._refresh_ready()

    @property
    def model_ready(self) -> bool:
        if self.model is None or self.shutting_down or self.model.closed:
            return False
        return not self.require_weights or int(self.model.version) > 0

    def _refresh_ready(self) -> None:
        self.metrics.ready.set(1 if self.model_ready else 0)

    def check_model(self, name: str, version: str | None = None) -> ModelSpec:
        """The spec of model ``name`` (404 listing the names there are)."""
        if name != self.name:
            raise ServeError(404, f"unknown model {name!r}; this server serves {[self.name]}")
        if self.spec is None:
            raise ServeError(503, f"model {self.name!r} is still loading")
        self.spec.check_version(version)
        return self.spec

    # ------------------------------------------------------------------ infer
    def _infer(self, *arrays: np.ndarray) -> tuple[list[np.ndarray], int]:
        out, version = self.model.infer(*arrays, return_version=True)  # a WeightVersion: .step is its checkpoint's
        return (list(out) if isinstance(out, tuple) else [out]), version

    def _on_batch(self, rows: int, size: int, seconds: float, stack: float, split: float) -> None:
        self.stats.execution(size, stack, seconds, split)
        m = self.metrics
        m.compute_seconds.observe(seconds)
        if size:
            m.batch_size.observe(size)
            m.batch_rows.observe(rows)

    def statistics(self, name: str = "", version: str | None = None) -> dict[str, Any]:
        """``{"model_stats": [...]}`` for model ``name`` ("": every model; 404 for an unknown one)."""
        if name == "" and not version:
            return {"model_stats": [self.stats.as_json()] if self.spec is not None else []}
        self.check_model(name, version)
        return {"model_stats": [self.stats.as_json()]}

    async def infer(self, name: str, version: str | None, tensors: Sequence[InputTensor],
                    outputs: Sequence[str] | None) -> InferOutcome:
        spec = self.check_model(name, version)
        t0 = time.perf_counter()  # statistics: success/fail durations from here (the request read and parsed)
        try:
            which = requested_outputs(spec, outputs)
            if not self.model_ready:
                why = ("shutting down" if self.shutting_down
                       else "waiting for its first weight update (--require-weights)")
                raise ServeError(503, f"model {self.name!r} is not ready: {why}")
            t_dec = time.perf_counter()
            arrays, rows = decode_inputs(spec, tensors)
            t_dec = time.perf_counter() - t_dec
            assert self.batcher is not None
            try:
                res: BatchResult = await self.batcher.submit(arrays, rows)
            except ServeError:
                raise
            except Exception as e:
                log.exception("infer failed")
                raise ServeError(500, f"infer failed: {type(e).__name__}: {e}") from None
        except BaseException:
            self.stats.request(False, time.perf_counter() - t0)
            raise
        self.stats.request(True, time.perf_counter() - t0, rows=rows, queue=res.queue_seconds,
                           compute_input=t_dec + res.input_seconds, compute_infer=res.compute_seconds,
                           compute_output=res.output_seconds)
        self.metrics.queue_seconds.observe(res.queue_seconds)
        return InferOutcome([(spec.outputs[i], res.outputs[i]) for i in which], int(res.version),
                            getattr(res.version, "step", None))

    # ------------------------------------------------------------------ updates
    def authorize(self, authorization: str | None, source: str) -> None:
        try:
            self.auth.check(authorization)
        except ServeError:
            self.metrics.updates.labels(source, "unauthorized").inc()
            raise

    def apply_update(self, weights: Mapping[str, np.ndarray], *, source: str, step: int | None = None) -> int:
        """Apply one validated-or-refused update (worker thread); record its metrics; return the version.

        ``step`` (the watcher's checkpoint step; None for wire updates) is kept by the model
        with the version, so responses report it from the version that produced them."""
        model = self.model
        # the watcher has run its own checks (--no-finite-check turns both off); wire updates get the same one
        check = _checks.finite if self.finite_check and source != "watch" else None
        with self._update_lock:  # serialise with the watcher so last_update is this update's
            try:
                version = int(model.update(weights, step=step, check=check))
            except (KeyError, TypeError, ValueError) as e:
                self.metrics.updates.labels(source, "rejected").inc()
                raise update_error(e) from None
            except Exception:
                self.metrics.updates.labels(source, "failed").inc()
                raise
            last = model.stats.get("last_update") or {}
        m = self.metrics
        m.updates.labels(source, "ok").inc()
        m.update_bytes.inc(last.get("bytes", 0))
        m.stage_seconds.observe(last.get("stage_seconds", 0.0))
        m.commit_seconds.observe(last.get("commit_seconds", 0.0))
        m.weight_version.set(version)
        self._refresh_ready()
        names, nbytes = describe(weights)
        log.info("applied %s update as version %d: %d variables, %d bytes", source, version, len(names), nbytes)
        return version

    async def update_files(self, name: str, files: Mapping[str, bytes], *, source: str) -> dict[str, Any]:
        """Parse ``files`` and apply them as one update (the caller has authorised it)."""
        self.check_model(name)
        if self.shutting_down:
            raise ServeError(503, "the server is shutting down")

        def work() -> dict[str, Any]:
            try:
                weights = merge_weight_files(files, max_bytes=self.max_update_bytes)
            except ServeError:
                self.metrics.updates.labels(source, "rejected").inc()
                raise
            version = self.apply_update(weights, source=source)
            names, nbytes = describe(weights)
            return {"model_name": self.name, "weight_version": version, "variables": names, "bytes": nbytes}

        return await self._on_update_pool(work, "update")

    async def rollback(self, name: str, to: int | None, *, source: str) -> dict[str, Any]:
        """Serve the weights of version ``to`` again (None: the version before the last update); the caller
        has authorised it.  Answers the version now served; refused (400, nothing changed) without history
        or for a version the history no longer covers."""
        self.check_model(name)
        if self.shutting_down:
            raise ServeError(503, "the server is shutting down")
        if to is not None and (isinstance(to, bool) or not isinstance(to, int) or to < 0):
            raise ServeError(400, f"rollback 'to' must be a version number (an integer >= 0), got {to!r}")

        def work() -> dict[str, Any]:
            model = self.model
            with self._update_lock:
                hist = model.history
                target = to if to is not None else (hist[-1].version - 1 if hist else None)  # what rollback() restores
                try:
                    version = int(model.rollback(to))
                except (KeyError, TypeError, ValueError) as e:
                    self.metrics.updates.labels(source, "rejected").inc()
                    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
                    raise ServeError(400, f"rollback refused, nothing changed: {msg}") from None
            self.metrics.updates.labels(source, "ok").inc()
            self.metrics.weight_version.set(version)
            self._refresh_ready()
            log.info("rolled back over %s to the weights of version %d: now version %d", source, target, version)
            return {"model_name": self.name, "weight_version": version, "restored_version": target}

        return await self._on_update_pool(work, "rollback")

    async def _on_update_pool(self, work: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
        """Run ``work`` on the update thread; a ServeError passes, anything else is a logged 500."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._update_pool, work)
        except ServeError:
            raise
        except Exception as e:
            log.exception("%s failed", what)
            raise ServeError(500, f"{what} failed: {type(e).__name__}: {e}") from None

    def on_checkpoint(self, applied: Any) -> None:
        """CheckpointWatcher on_apply: the checkpoint_step gauge."""
        self.metrics.checkpoint_step.set(int(applied.step))

    def start_watcher(self, directory: str, poll_interval: float, *, finite_check: bool = True,
                      allow_step_reset: bool = False, options: Mapping[str, Any] | None = None) -> None:
        """Follow ``directory``; ``options``: more CheckpointWatcher keyword arguments (rename, strip_prefix, ...)."""
        from ..watcher import CheckpointWatcher

        kw: dict[str, Any] = {k: v for k, v in (options or {}).items() if v is not None}
        if not finite_check:
            kw["check"] = None  # the watcher's default: check=finite
        self.watcher = CheckpointWatcher(_WatchedModel(self), directory, poll_interval=poll_interval,
                                         on_apply=self.on_checkpoint, allow_step_reset=allow_step_reset, **kw)
        self.watcher.start()

    # ------------------------------------------------------------------ shutdown
    def begin_shutdown(self) -> None:
        """From now on not ready (readiness routes and the ready gauge say so); new updates are refused."""
        self.shutting_down = True
        self._refresh_ready()

    async def drain(self) -> None:
        """Stop updates from the watcher, finish queued infer requests, stop the worker threads."""
        self.begin_shutdown()
        loop = asyncio.get_running_loop()
        if self.watcher is not None:
            await loop.run_in_executor(None, self.watcher.stop, 10.0)
        if self.batcher is not None:
            await self.batcher.drain()
        await loop.run_in_executor(None, self._shutdown_pools)
        self.shm.close()

    def _shutdown_pools(self) -> None:
        self._update_pool.shutdown(wait=True)
        self._infer_pool.shutdown(wait=True)
