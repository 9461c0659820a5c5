"""The driver side: :class:`Fleet` routes inference and runs the two-phase publish over its replicas."""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from .errors import (
    DEFAULT_TIMEOUT,
    FleetError,
    NoReadyReplicaError,
    PublishError,
    check_timeout,
    failure_reason,
    import_ray,
)
from .publisher import Inbox, Publisher
from .replica import ReplicaActor
from .rounds import wait_round
from .transport import ObjectStoreTransport, Transport

if TYPE_CHECKING:
    from ..model import Weights

log = logging.getLogger("acl_bundle")


class Inference(NamedTuple):
    output: Any             # what BundleModel.infer returned
    step: int | None        # the fleet step of the weights that produced it (None: the bundle's initial weights)
    replica: str


@dataclass
class PublishResult:
    step: int
    replicas: list[str]                     # the replicas that committed
    stage_seconds: float                    # publish start to the last replica staged
    seconds: float                          # publish start to the last commit confirmed
    commit_skew: float                      # first to last replica's commit end (replica clocks)
    commit_ends: dict[str, float] = field(default_factory=dict)
    # where the time went: "send" (the payload into the transport), "stage" (stage calls out to the last
    # replica staged), "commit" (commit calls out to the last commit confirmed), seconds
    phases: dict[str, float] = field(default_factory=dict)
    # per replica, seconds: "stage_call" (stage call sent to its start in the replica), "receive", "stage"
    # (BundleModel.stage), "commit_call", "commit_wait" (waiting for the commit instant), "commit"
    timings: dict[str, dict[str, float]] = field(default_factory=dict)



@dataclass
class _Replica:
    name: str
    actor: Any
    pid: int
    node: str
    device_id: int
    ready: bool = False


class Fleet:
    """N replicas of one bundle, each a Ray actor with its own BundleModel; see the module docstring.

    bundle: path of the ``.om`` (with its manifest beside it); on a multi-host cluster it
        must exist at that path on every node.
    replicas: how many to start (named ``replica-0`` ...).
    npus_per_replica: Ray ``NPU`` resources each replica asks for (0: none, e.g. on the simulator).
    device_ids: the device id of each replica; default: 0 when NPUs are requested (Ray makes
        only the replica's own NPU visible), else the replica's index.
    backend: ``"sim"`` runs each replica on its own acl_bundle simulator; None: the rule
        ``BundleModel`` applies (``ACL_BUNDLE_BACKEND``, else a simulator-format bundle on the
        simulator, a device bundle on pyACL).  A simulated host has a device per replica.
    timeout: default seconds for every call (start, stage, commit, abort, infer).
    model_options: extra ``BundleModel`` keyword arguments (``max_concurrency``, ``manifest`` ...).
    commit_lead: 0 (default): each replica commits when its commit call arrives; > 0: the commit calls
        carry the instant (sent + ``commit_lead`` seconds) at which every replica commits (the commit
        barrier, docs/fleet.md).  Settable between publishes.
    """

    def __init__(self, bundle: str | os.PathLike[str], replicas: int = 1, *, npus_per_replica: float = 0,
                 device_ids: Sequence[int] | None = None, backend: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, model_options: Mapping[str, Any] | None = None,
                 transport: Transport | None = None, actor_threads: int = 4, commit_lead: float = 0.0) -> None:
        ray = import_ray()
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise ValueError(f"replicas must be an int >= 1, got {replicas!r}")
        if device_ids is not None and len(device_ids) != replicas:
            raise ValueError(f"device_ids has {len(device_ids)} entries for {replicas} replicas")
        check_timeout(timeout)
        if backend not in (None, "sim"):
            raise ValueError(f"backend must be None (pyACL) or 'sim', got {backend!r}")
        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised: call ray.init() (or ray.init(address='auto')) first")
        self._bundle = os.path.abspath(os.fspath(bundle))  # replicas run in their own cwd (Ray worker dirs)
        self._npus, self._backend, self._timeout = npus_per_replica, backend, float(timeout)
        self._device_ids = list(device_ids) if device_ids is not None else None
        self._options = dict(model_options or {})
        self._transport: Transport = transport or ObjectStoreTransport()
        self._threads = actor_threads
        self._mu = threading.Lock()           # the replica table and the round-robin cursor
        self._publish_lock = threading.Lock()  # publishes and catch-ups, one at a time
        self._replicas: dict[str, _Replica] = {}
        self._starting: set[str] = set()       # names reserved by an add_replica whose process is starting
        self._closed = False
        self._cursor = itertools.count()
        self._txn = itertools.count(1)
        self._step: int | None = None
        self._payloads: list[tuple[Any, frozenset[str]]] = []  # oldest first: what a joiner must apply
        self._variables: dict[str, tuple[tuple[int, ...] | None, np.dtype]] = {}
        self._names: list[str] = []
        self._next_index = itertools.count()
        self.evicted: dict[str, str] = {}      # name -> why, for every replica ever evicted
        self.commit_lead = commit_lead
        try:
            for _ in range(replicas):
                self.add_replica()
        except BaseException:
            self.shutdown()
            raise

    # ---------------------------------------------------------------- replicas
    def _spawn(self, name: str, index: int, hooks: Mapping[str, float] | None, timeout: float) -> _Replica:
        """Start the actor and wait for its first answer; on any failure (timeout included) kill it."""
        ray = import_ray()
        device_id = (self._device_ids[index] if self._device_ids is not None and index < len(self._device_ids)
                     else 0 if self._npus else index)
        opts: dict[str, Any] = {"max_concurrency": self._threads, "num_cpus": 0, "max_restarts": 0}
        if self._npus:
            opts["resources"] = {"NPU": self._npus}
        actor = ray.remote(ReplicaActor).options(**opts).remote(
            name, self._bundle, device_id, self._backend, self._options, self._transport, hooks)
        try:
            info = ray.get(actor.info.remote(), timeout=timeout)
        except BaseException as e:
            ray.kill(actor, no_restart=True)  # also a creation still pending or running: no process left behind
            raise FleetError(f"replica {name} did not start: {failure_reason(e, timeout)}",
                             {name: "did not start"}) from e
        if not self._variables:
            self._variables = {n: (tuple(s) if s is not None else None, np.dtype(d)) for n, s, d in info["variables"]}
            self._names = [n for n, _, _ in info["variables"]]
        return _Replica(name, actor, info["pid"], info["node"], device_id)

    def add_replica(self, name: str | None = None, *, block: bool = True,
                    hooks: Mapping[str, float] | None = None, timeout: float | None = None) -> str:
        """Start a replica (a late joiner, or a replacement for an evicted one); return its name.

        The name is reserved before the process is spawned: a second ``add_replica`` of a name in
        the fleet or being added raises ``ValueError`` (nothing is started).  A replica that does
        not start within ``timeout`` is killed (``FleetError``) and its name freed.  It is not
        routed until it has applied the fleet's latest weights, which it reads from the object
        store.  ``block=False`` returns once it has started and catches up in a thread
        (:meth:`wait_ready`).  ``hooks``: test fault injection (see :class:`ReplicaActor`)."""
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"a replica name must be a non-empty str, got {name!r}")
        t = self._timeout if timeout is None else check_timeout(timeout)
        index = next(self._next_index)
        name = name or f"replica-{index}"
        with self._mu:
            if self._closed:
                raise FleetError(f"add_replica({name!r}): the fleet is shut down")
            if name in self._replicas or name in self._starting:
                raise ValueError(f"a replica named {name!r} is already in the fleet"
                                 + (" (being started)" if name in self._starting else ""))
            self._starting.add(name)
        try:
            r = self._spawn(name, index, hooks, t)
        except BaseException:
            with self._mu:
                self._starting.discard(name)
            raise
        with self._mu:
            self._starting.discard(name)
            closed = self._closed
            if not closed:
                self._replicas[name] = r
                self.evicted.pop(name, None)
        if closed:  # shutdown() ran while this one started: it must not outlive the fleet
            self._kill(r)
            raise FleetError(f"add_replica({name!r}): the fleet was shut down while the replica started")
        if block:
            self._catch_up(r, timeout)
        else:
            threading.Thread(target=self._catch_up_quietly, args=(r, timeout), daemon=True,
                             name=f"acl_bundle-fleet-join-{name}").start()
        return name

    @staticmethod
    def _kill(r: _Replica) -> None:
        try:
            import_ray().kill(r.actor, no_restart=True)
        except Exception:  # already gone
            log.debug("fleet: replica %s was already gone", r.name)

    def _catch_up_quietly(self, r: _Replica, timeout: float | None) -> None:
        try:
            self._catch_up(r, timeout)
        except Exception as e:
            log.warning("fleet: %s", e)

    def _catch_up(self, r: _Replica, timeout: float | None) -> None:
        ray = import_ray()
        t = self._timeout if timeout is None else check_timeout(timeout)
        if not self._publish_lock.acquire(timeout=t):
            raise TimeoutError(f"replica {r.name}: a publish held the fleet for {t} s; it stays not ready")
        try:
            handles = [h for h, _ in self._payloads]
            try:
                ray.get(r.actor.catch_up.remote(handles, self._step, t), timeout=t)
            except BaseException as e:
                why = failure_reason(e, t)
                self._evict(r, why)
                raise FleetError(f"replica {r.name} could not apply step {self._step}: {why}", {r.name: why}) from e
            r.ready = True
            ray.get(r.actor.mark_ready.remote(), timeout=t)
            log.info("fleet: replica %s ready at step %s", r.name, self._step)
        finally:
            self._publish_lock.release()

    def wait_ready(self, name: str, timeout: float | None = None) -> bool:
        """Wait until replica ``name`` is ready; False on timeout or if it was evicted."""
        deadline = time.monotonic() + (self._timeout if timeout is None else check_timeout(timeout))
        while time.monotonic() < deadline:
            with self._mu:
                r = self._replicas.get(name)
            if r is None:
                return False
            if r.ready:
                return True
            time.sleep(0.01)
        return False

    def _evict(self, r: _Replica, why: str) -> None:
        with self._mu:
            r.ready = False
            if self._replicas.get(r.name) is r:
                del self._replicas[r.name]
                self.evicted[r.name] = why
        self._kill(r)
        log.warning("fleet: evicted replica %s (%s)", r.name, why)

    def set_hooks(self, name: str, **hooks: float) -> None:
        """Fault injection for tests: e.g. ``set_hooks("replica-1", stage_delay=60)``."""
        import_ray().get(self._get(name).actor.set_hooks.remote(**hooks), timeout=self._timeout)

    def _get(self, name: str) -> _Replica:
        with self._mu:
            r = self._replicas.get(name)
        if r is None:
            raise KeyError(f"no replica named {name!r} in the fleet (evicted: {sorted(self.evicted)})")
        return r

    # ---------------------------------------------------------------- state
    @property
    def commit_lead(self) -> float:
        """Seconds from sending the commit calls to the instant every replica commits (0: no barrier)."""
        return self._commit_lead

    @commit_lead.setter
    def commit_lead(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= 1:
            raise ValueError(f"commit_lead must be a number of seconds in [0, 1], got {seconds!r}")
        self._commit_lead = float(seconds)

    @property
    def step(self) -> int | None:
        """The step the fleet last committed (None: nothing published yet)."""
        return self._step

    @property
    def variables(self) -> list[str]:
        return list(self._names)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per replica: ready (routed), pid, node, device id."""
        with self._mu:
            return {r.name: {"ready": r.ready, "pid": r.pid, "node": r.node, "device_id": r.device_id}
                    for r in self._replicas.values()}

    def replica_steps(self, timeout: float | None = None) -> dict[str, int | None]:
        """Ask every replica in the fleet for the step it serves (for checks and monitoring)."""
        ray = import_ray()
        t = self._timeout if timeout is None else check_timeout(timeout)
        with self._mu:
            rs = list(self._replicas.values())
        refs = [r.actor.info.remote() for r in rs]
        out = {}
        for r, ref in zip(rs, refs):
            try:
                out[r.name] = ray.get(ref, timeout=t)["step"]
            except Exception as e:
                self._evict(r, failure_reason(e, t))
        return out

    # ---------------------------------------------------------------- publish
    def publish(self, weights: Weights, step: int, *,
                timeout: float | None = None) -> PublishResult:
        """Make ``weights`` live on every ready replica, or on none.

        ``step`` must be above the fleet's current step.  ``timeout`` bounds each phase
        (waiting for the previous publish, stage, commit, abort).  Raises
        :class:`PublishError` naming the replicas lost (see the module docstring for
        what ``committed`` means), ``ValueError``/``TypeError`` for bad weights (nothing sent)."""
        t = self._timeout if timeout is None else check_timeout(timeout)
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        step = int(step)
        checked = check_weights(weights, self._names, self._variables)
        if not self._publish_lock.acquire(timeout=t):
            raise TimeoutError(f"publish of step {step}: another publish or catch-up held the fleet for {t} s")
        try:
            if self._step is not None and step <= self._step:
                raise ValueError(f"step must increase: the fleet is at step {self._step}, got {step}")
            with self._mu:
                live = [r for r in self._replicas.values() if r.ready]
            if not live:
                raise NoReadyReplicaError(f"publish of step {step}: no ready replica "
                                          f"(evicted: {self.evicted or 'none'})")
            t0 = time.perf_counter()
            handle = self._transport.send(checked)  # once, whatever the fleet size
            t_sent, wall_sent = time.perf_counter(), time.time()
            txn = next(self._txn)
            staged: dict[str, Any] = {}
            failed = wait_round(live, [r.actor.stage.remote([handle], step, txn, t) for r in live], t, "stage",
                                 staged)
            t_staged = time.perf_counter()
            if failed:
                survivors = [r for r in live if r.name not in failed]
                aborts = [r.actor.abort.remote(txn) for r in survivors]
                failed.update(wait_round(survivors, aborts, t, "abort"))
                for r in live:
                    if r.name in failed:
                        self._evict(r, failed[r.name])
                raise PublishError(
                    f"publish of step {step} aborted, the fleet stays at step {self._step}: "
                    + "; ".join(f"replica {n}: {w}" for n, w in failed.items()),
                    failed, step=step, committed=False, fleet_step=self._step)
            wall_commit = time.time()
            at = wall_commit + self._commit_lead if self._commit_lead else None
            refs = [r.actor.commit.remote(txn, at) for r in live]
            results: dict[str, Any] = {}
            failed = wait_round(live, refs, t, "commit", results)
            t_end = time.perf_counter()
            for r in live:
                if r.name in failed:
                    self._evict(r, failed[r.name])
            self._step = step
            self._remember(handle, frozenset(checked))
            ends = {n: end for n, (_, end, _) in results.items()}
            if failed:
                raise PublishError(
                    f"publish of step {step} committed on {sorted(ends)}; lost while committing: "
                    + "; ".join(f"replica {n}: {w}" for n, w in failed.items()),
                    failed, step=step, committed=True, fleet_step=step)
            skew = max(ends.values()) - min(ends.values())
            log.debug("fleet: step %d live on %d replicas, skew %.3f ms", step, len(ends), 1e3 * skew)
            timings = {n: {"stage_call": staged[n]["called"] - wall_sent, "receive": staged[n]["receive"],
                           "stage": staged[n]["stage"], "commit_call": c["called"] - wall_commit,
                           "commit_wait": c["wait"], "commit": c["commit"]}
                       for n, (_, _, c) in results.items()}
            phases = {"send": t_sent - t0, "stage": t_staged - t_sent, "commit": t_end - t_staged}
            return PublishResult(step, sorted(ends), t_staged - t0, t_end - t0, skew, ends, phases, timings)
        finally:
            self._publish_lock.release()

    def _remember(self, handle: Any, names: frozenset[str]) -> None:
        """Keep what a joiner needs: the newest payload of every variable ever published."""
        self._payloads.append((handle, names))
        covered: set[str] = set()
        keep = []
        for h, ns in reversed(self._payloads):
            if ns - covered:
                keep.append((h, ns))
            else:
                self._transport.release(h)
            covered |= ns
        self._payloads = keep[::-1]

    # ---------------------------------------------------------------- infer
    def infer(self, *inputs: Any, timeout: float | None = None) -> Inference:
        """Run one inference on a ready replica (round robin); returns (output, step, replica).

        A replica that died is evicted and the call goes to the next one; a replica that does
        not answer within ``timeout`` raises ``TimeoutError`` naming it."""
        ray = import_ray()
        t = self._timeout if timeout is None else check_timeout(timeout)
        deadline = time.monotonic() + t
        tried: set[str] = set()
        while True:
            with self._mu:
                ready = [r for r in self._replicas.values() if r.ready and r.name not in tried]
                r = ready[next(self._cursor) % len(ready)] if ready else None
            if r is None:
                raise NoReadyReplicaError(f"infer: no ready replica (tried {sorted(tried)}, "
                                          f"evicted: {sorted(self.evicted)})")
            tried.add(r.name)
            ref = r.actor.infer.remote(inputs)
            try:
                y, step = ray.get(ref, timeout=max(0.0, deadline - time.monotonic()))
            except ray.exceptions.GetTimeoutError:
                ray.cancel(ref)
                raise TimeoutError(f"infer: replica {r.name} did not answer within {t} s") from None
            except ray.exceptions.RayActorError as e:
                self._evict(r, f"died: {failure_reason(e, t)}")
                continue
            except ray.exceptions.RayTaskError as e:
                if "is not ready" in str(e):
                    continue
                raise e.as_instanceof_cause() from None
            return Inference(y, step, r.name)

    # ---------------------------------------------------------------- trainer side, checkpoints
    def follow(self, directory: str | os.PathLike[str], **watcher_options: Any) -> Any:
        """Drive the fleet from a checkpoint directory: each newer committed checkpoint becomes one publish.

        Returns a started :class:`~acl_bundle.CheckpointWatcher` (stop it to stop following)."""
        from ..watcher import CheckpointWatcher

        return CheckpointWatcher(_FleetAsModel(self), directory, **watcher_options).start()

    def serve_publisher(self, name: str, namespace: str | None = None) -> Publisher:
        """Let training processes publish by ``name`` (:class:`Publisher`) without knowing the replicas.

        Starts a small named actor (the inbox) and a thread here that publishes what arrives."""
        ray = import_ray()
        inbox = ray.remote(Inbox).options(name=name, namespace=namespace, max_concurrency=8, num_cpus=0).remote()
        self._inboxes = getattr(self, "_inboxes", []) + [inbox]
        threading.Thread(target=self._drain, args=(inbox,), daemon=True, name=f"acl_bundle-fleet-inbox-{name}").start()
        return Publisher(name, namespace=namespace)

    def _drain(self, inbox: Any) -> None:
        ray = import_ray()
        while True:
            try:
                item = ray.get(inbox.take.remote(1.0), timeout=self._timeout)
            except Exception:  # the inbox (or Ray) is gone
                return
            if item is None:
                continue
            ticket, handles, step = item
            try:
                weights = ray.get(handles[0], timeout=self._timeout)
                res = self.publish(weights, step)
                outcome: Any = ("ok", res.replicas)
            except Exception as e:
                outcome = ("error", f"{type(e).__name__}: {e}")
            try:
                inbox.done.remote(ticket, outcome)
            except Exception:
                return

    # ---------------------------------------------------------------- lifecycle
    def shutdown(self) -> None:
        """Close every replica's model and stop its actor (bounded by the fleet timeout)."""
        ray = import_ray()
        with self._mu:
            self._closed = True
            rs = list(self._replicas.values())
            self._replicas.clear()
        refs = [r.actor.close.remote() for r in rs]
        with contextlib.suppress(Exception):
            ray.wait(refs, num_returns=len(refs), timeout=self._timeout)
        for r in rs:
            with contextlib.suppress(Exception):
                ray.kill(r.actor, no_restart=True)
        for inbox in getattr(self, "_inboxes", []):
            with contextlib.suppress(Exception):
                ray.kill(inbox, no_restart=True)
        self._payloads.clear()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        st = self.status()
        return f"<Fleet {self._bundle!r} step={self._step} ready={sum(s['ready'] for s in st.values())}/{len(st)}>"


class _FleetAsModel:
    """What CheckpointWatcher needs (``variables``, ``update(weights, step=)``), mapped onto a fleet."""

    def __init__(self, fleet: Fleet) -> None:
        self._fleet = fleet
        self.variables = fleet.variables

    def update(self, weights: Mapping[str, np.ndarray], *, step: int | None = None) -> int:
        if step is None:
            raise ValueError("a fleet publish needs the checkpoint's step")
        self._fleet.publish(weights, step)
        return step


def check_weights(weights: Any, names: list[str], variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A publish's driver-side validation (before anything is sent): keys, array types, dtypes and shapes."""
    if not isinstance(weights, Mapping) or not weights:
        raise TypeError(f"weights must be a non-empty mapping of variable name or index to array, "
                        f"got {type(weights).__name__}")
    out: dict[str, np.ndarray] = {}
    problems = []
    for key, a in weights.items():
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool) and 0 <= key < len(names):
            name = names[key]
        elif isinstance(key, str) and key in variables:
            name = key
        else:
            problems.append(f"{key!r} is not a variable (expected one of {names} or an index "
                            f"< {len(names)})")
            continue
        if name in out:
            problems.append(f"variable {name!r} is given twice")
            continue
        if not isinstance(a, np.ndarray):
            problems.append(f"variable {name!r}: expected a numpy.ndarray, got {type(a).__name__}")
            continue
        shape, dtype = variables[name]
        if a.dtype != dtype:
            problems.append(f"variable {name!r} is {dtype}, got {a.dtype}; cast it with .astype(numpy.{dtype})")
        elif shape is not None and a.shape != shape:
            problems.append(f"variable {name!r} has shape {shape}, got {a.shape}")
        else:
            out[name] = np.ascontiguousarray(a)
    if problems:
        raise ValueError("publish: " + "; ".join(problems))
    return out
