"""Concurrency stress: many infer threads against a stream of whole-set weight updates.

Every infer result must equal the numpy reference of exactly one complete weight
set, and that set must be the one whose commit produced the returned version
(``infer(..., return_version=True)`` + the updater's version -> set log).  A result
matching no set (a half-applied update, a buffer shared between calls) or the
wrong set is a *torn* result.  Throughput with and without the update stream is
printed, never asserted.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import pytest

from acl_bundle import BundleModel, ModelClosedError, sim
from helpers.reliability import TOL, reference, weight_sets


@dataclass
class Run:
    threads: int
    ops_per_thread: int
    infer_ops: int = 0
    update_ops: int = 0
    torn: int = 0
    wrong_set: int = 0
    backwards: int = 0
    errors: list = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.infer_ops / self.seconds if self.seconds else 0.0


def _hammer(m: BundleModel, sets: list[dict], n_threads: int, ops: int, *, updates: bool, batches=(1,),
            only: str | None = None) -> Run:
    """``n_threads`` infer threads doing ``ops`` infers each; optionally one updater cycling ``sets``
    (only variable ``only`` of each set, when given: the sets then differ in that variable alone)."""
    run = Run(n_threads, ops)
    rng = np.random.default_rng(42)
    xs = [rng.standard_normal((batches[i % len(batches)], 8)).astype(np.float32) for i in range(n_threads)]
    refs = [[reference(x, s) for s in sets] for x in xs]  # refs[thread][set]
    # version -> index of the weight set that version committed; the starting version
    # holds sets[0] (the caller applied it before calling us).
    log = {m.version: 0}
    results: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n_threads)]
    done = threading.Event()
    start = threading.Barrier(n_threads + 1 + (1 if updates else 0))

    def reader(i: int) -> None:
        try:
            start.wait()
            out = results[i]
            for _ in range(ops):
                out.append(m.infer(xs[i], return_version=True)[::-1])
        except BaseException as e:  # reported by the test
            run.errors.append(e)

    def updater() -> None:
        try:
            start.wait()
            while not done.is_set():
                k = 1 + run.update_ops % (len(sets) - 1)  # sets 1, 2, ..., n-1, 1, ... (0 is the start)
                v = m.update(sets[k] if only is None else {only: sets[k][only]})
                log[v] = k
                run.update_ops += 1
        except BaseException as e:
            run.errors.append(e)

    threads = [threading.Thread(target=reader, args=(i,), name=f"infer-{i}") for i in range(n_threads)]
    upd = threading.Thread(target=updater, name="updater") if updates else None
    for t in threads + ([upd] if upd else []):
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    run.seconds = time.perf_counter() - t0
    done.set()
    if upd:
        upd.join()
    for i, res in enumerate(results):
        last = -1
        for v, y in res:
            run.infer_ops += 1
            if v < last:
                run.backwards += 1
            last = v
            hits = [k for k, r in enumerate(refs[i]) if np.allclose(y, r, **TOL)]
            if len(hits) != 1:
                run.torn += 1
            elif log.get(v) != hits[0]:
                run.wrong_set += 1
    return run


def _check(run: Run) -> None:
    assert not run.errors, f"{len(run.errors)} exceptions, first: {run.errors[0]!r}"
    assert run.infer_ops == run.threads * run.ops_per_thread
    assert run.torn == 0, f"{run.torn} torn results (matching no complete weight set)"
    assert run.wrong_set == 0, f"{run.wrong_set} results from a weight set other than their version's"
    assert run.backwards == 0, f"version went backwards {run.backwards} times within a thread"


def _stress(bundle, threads: int, ops: int, n_sets: int, batches, only: str | None = None) -> None:
    sets = weight_sets(bundle.weights, n_sets, seed=3)
    staging = None
    if only is not None:  # single-variable updates through a pool that holds that one variable only
        sets = [{**sets[0], only: s[only]} for s in sets]
        staging = sets[0][only].nbytes
    with BundleModel(bundle.path, max_concurrency=4, staging_bytes=staging) as m:
        for part in ([sets[0]] if only is None else [{name: a} for name, a in sets[0].items()]):
            m.update(part)
        quiet = _hammer(m, sets, threads, ops, updates=False, batches=batches)
        _check(quiet)
        busy = _hammer(m, sets, threads, ops, updates=True, batches=batches, only=only)
        _check(busy)
        assert busy.update_ops > 0
        assert m.stats["infers"] >= 2 * threads * ops
    print(
        f"\nSTRESS: {threads} infer threads x {ops} infers (batch sizes {list(batches)}) + 1 updater cycling "
        f"{n_sets - 1} weight sets (after set 0): {busy.infer_ops} infers and {busy.update_ops} updates checked, "
        f"torn 0, "
        f"wrong set 0, version regressions 0; infer throughput {quiet.rate:,.0f}/s without updates, "
        f"{busy.rate:,.0f}/s with the update stream ({busy.update_ops / busy.seconds:,.0f} updates/s)"
    )


def test_stress_infer_threads_with_update_stream(bundles):
    _stress(bundles["wide_dynamic"], threads=8, ops=1000, n_sets=3, batches=(1, 2, 4))


def test_stress_single_variable_updates_through_a_one_variable_pool(bundles):
    # Torn-output check on the bounded-staging path: every commit re-points the update input into the
    # pool, which holds exactly the largest variable; a partial copy would match no weight set.
    bundle = bundles["wide_dynamic"]
    largest = max(bundle.weights, key=lambda k: bundle.weights[k].nbytes)
    _stress(bundle, threads=4, ops=500, n_sets=4, batches=(1, 2, 4), only=largest)


@pytest.mark.slow
def test_stress_long(bundles):
    _stress(bundles["wide_dynamic"], threads=16, ops=5000, n_sets=4, batches=(1, 2, 4))


def test_torn_detector_can_fail(bundles):
    """The checker itself: a result computed from a mix of two weight sets is flagged as torn."""
    sets = weight_sets(bundles["wide"].weights, 3, seed=3)
    x = np.ones((1, 8), np.float32)
    mixed = {**sets[1], "fc1.weight": sets[2]["fc1.weight"]}
    y = reference(x, mixed)
    hits = [k for k, s in enumerate(sets) if np.allclose(y, reference(x, s), **TOL)]
    assert hits == []


def test_several_models_in_several_threads(bundles):
    """Four models, two threads each (one infers, one updates and infers): no cross-talk."""
    names = ["init", "noinit", "wide", "dynamic"]
    errors: list[BaseException] = []
    checked = [0]
    lock = threading.Lock()
    models = [BundleModel(bundles[n].path) for n in names]
    try:
        def worker(m: BundleModel, base: dict, seed: int, updates: bool) -> None:
            try:
                sets = weight_sets(base, 2, seed=seed)
                x = np.random.default_rng(seed).standard_normal((1, 8)).astype(np.float32)
                refs = [reference(x, s) for s in sets]
                for i in range(150):
                    if updates:
                        m.update(sets[i % 2])
                        y = m.infer(x)
                        assert np.allclose(y, refs[i % 2], **TOL), "own update not visible"
                    else:
                        y = m.infer(x)
                        hits = [k for k, r in enumerate(refs) if np.allclose(y, r, **TOL)]
                        assert len(hits) == 1, "torn result"
                    with lock:
                        checked[0] += 1
            except BaseException as e:
                errors.append(e)

        # Each model starts on set 0 of its seed, so its readers must always see set 0 or 1.
        threads = []
        for j, (n, m) in enumerate(zip(names, models)):
            m.update(weight_sets(bundles[n].weights, 2, seed=10 + j)[0])
            threads.append(threading.Thread(target=worker, args=(m, bundles[n].weights, 10 + j, True)))
            threads.append(threading.Thread(target=worker, args=(m, bundles[n].weights, 10 + j, False)))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for m in models:
            m.close()
    assert not errors, f"{len(errors)} errors, first: {errors[0]!r}"
    assert checked[0] == 8 * 150
    print(f"\nSTRESS: 4 models x 2 threads x 150 ops = {checked[0]} checked operations, 0 errors")


def _churn(threads: int, cycles: int, bundle) -> tuple[int, int]:
    """``threads`` threads open/infer/update/close ``cycles`` times while one long-lived model serves."""
    errors: list[BaseException] = []
    sets = weight_sets(bundle.weights, 2, seed=5)
    x = np.ones((1, 8), np.float32)
    refs = [reference(x, s) for s in sets]
    stop = threading.Event()
    served = [0]

    def churner(seed: int) -> None:
        try:
            for i in range(cycles):
                with BundleModel(bundle.path) as m:
                    k = (seed + i) % 2
                    m.update(sets[k])
                    assert np.allclose(m.infer(x), refs[k], **TOL)
        except BaseException as e:
            errors.append(e)

    with BundleModel(bundle.path) as keeper:
        keeper.update(sets[0])

        def serve() -> None:
            try:
                while not stop.is_set():
                    assert np.allclose(keeper.infer(x), refs[0], **TOL)
                    served[0] += 1
            except BaseException as e:
                errors.append(e)

        server = threading.Thread(target=serve)
        server.start()
        workers = [threading.Thread(target=churner, args=(s,)) for s in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        stop.set()
        server.join()
        assert sim.live_resources()["initialized"], "the runtime was finalised under a live model"
    assert not errors, f"{len(errors)} errors, first: {errors[0]!r}"
    return threads * cycles, served[0]


def test_open_close_churn_in_threads(bundles):
    cycles, served = _churn(6, 40, bundles["init"])
    assert sim.leaks() == {}
    print(
        f"\nCHURN: 6 threads x 40 open/update/infer/close cycles = {cycles}, while another model served {served} infers"
    )


@pytest.mark.slow
def test_open_close_churn_long(bundles):
    cycles, served = _churn(8, 500, bundles["init"])
    assert sim.leaks() == {}
    print(f"\nCHURN: {cycles} cycles, {served} infers on the long-lived model")


def test_close_refuses_new_calls_while_threads_run(bundles):
    """Threads hammering a model that gets closed: each call either completes or raises ModelClosedError."""
    b = bundles["init"]
    x = np.ones((1, 8), np.float32)
    ref = reference(x, b.weights)
    outcomes = {"ok": 0, "closed": 0}
    errors: list[BaseException] = []
    lock = threading.Lock()
    m = BundleModel(b.path, max_concurrency=4)
    go = threading.Event()

    def worker() -> None:
        go.wait()
        while True:
            try:
                y = m.infer(x)
            except ModelClosedError:
                with lock:
                    outcomes["closed"] += 1
                return
            except BaseException as e:
                errors.append(e)
                return
            if not np.allclose(y, ref, **TOL):
                errors.append(AssertionError("wrong result"))
            with lock:
                outcomes["ok"] += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    go.set()
    while m.stats["infers"] < 200:
        time.sleep(0.001)
    m.close()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    assert outcomes["closed"] == 8
    assert sim.leaks() == {}
