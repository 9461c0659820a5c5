"""Scenarios 5 and 8: inference while updates stream (throughput) and the pause an update causes (stalls, p99)."""
from __future__ import annotations

import bisect
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .config import MiB
from .harness import (
    BenchContext,
    fresh_copies,
    median,
    ratio_of,
    table_row,
)


def _run_for(seconds: float, threads: int, infer: Callable[[int], None], update: Callable[[], None],
             start: threading.Barrier, stop: threading.Event) -> float:
    """Run ``infer(i)`` in ``threads`` threads and ``update()`` in one more, for ``seconds``.

    Every thread waits on ``start`` (``threads + 2`` parties: this one releases them), ``stop`` is set
    after ``seconds`` or at a thread's first error; returns the seconds from the release to the last
    join and raises the first error a thread hit.
    """
    errors: list[BaseException] = []

    def guarded(fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            stop.set()

    ts = [threading.Thread(target=guarded, args=(infer, i), daemon=True) for i in range(threads)]
    ts.append(threading.Thread(target=guarded, args=(update,), daemon=True))
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in ts:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return elapsed


def _serve(m: Any, x: np.ndarray, threads: int, seconds: float, rate: float | None, upd: dict) -> tuple[float, int]:
    """Infers/second of ``threads`` infer threads over ``seconds``, with updates at ``rate`` Hz (inf = max)."""
    stop = threading.Event()
    start = threading.Barrier(threads + 2)
    counts = [0] * threads
    n_upd = [0]

    def infer(i: int) -> None:
        xs = fresh_copies(x, 64)
        start.wait()
        k = 0
        while not stop.is_set():
            m.infer(xs[k % 64])  # 64 live arrays: bounded simulator registrations
            k += 1
        counts[i] = k

    def update() -> None:
        start.wait()
        t_next = time.perf_counter()
        while not stop.is_set():
            if rate is None:
                return
            if rate != float("inf"):
                t_next += 1.0 / rate
                delay = t_next - time.perf_counter()
                if delay > 0 and stop.wait(delay):
                    return
            m.update(upd)
            n_upd[0] += 1

    elapsed = _run_for(seconds, threads, infer, update, start, stop)
    return sum(counts) / elapsed, n_upd[0]


def s5_serving(c: BenchContext) -> dict:
    from ..sim import models

    cfg = c.cfg
    proto, w0 = models.mlp(cfg.s5_model, seed=cfg.seed)
    path = c.build(proto)
    upd = {k: (v * 0.5).astype(v.dtype) for k, v in w0.items()}
    nbytes = sum(v.nbytes for v in upd.values())
    m = c.open(path, max_concurrency=cfg.s5_threads)
    x = c.rng.standard_normal((1, cfg.s5_model[0])).astype(np.float32)
    conds = {"none": None, "10 Hz": 10.0, "max rate": float("inf")}
    thr: dict[str, list[float]] = {k: [] for k in conds}
    ups: dict[str, list[int]] = {k: [] for k in conds}
    try:
        m.update(upd)
        _serve(m, x, cfg.s5_threads, min(0.2, cfg.s5_seconds), None, upd)  # warm: every slot built
        names = list(conds)
        for r in range(cfg.s5_rounds):
            for k in (names if r % 2 == 0 else names[::-1]):
                c.progress(f"5 serving under updates: round {r + 1}/{cfg.s5_rounds}, updates {k}")
                t, u = _serve(m, x, cfg.s5_threads, cfg.s5_seconds, conds[k], upd)
                thr[k].append(t)
                ups[k].append(u)
    finally:
        m.close()
    rows = []
    for k, goal in (("10 Hz", 0.9), ("max rate", None)):
        q = ratio_of(thr[k], thr["none"])
        rows.append(table_row(5, f"infer/s, {cfg.s5_threads} threads, updates {k} vs none", q["ratio"],
                              ">=" if goal else None, goal,
                              infers_per_s=median(thr[k]), baseline_infers_per_s=median(thr["none"]),
                              updates_per_s=median(ups[k]) / cfg.s5_seconds, update_mib=nbytes / MiB,
                              paired_min=q["paired_min"], paired_max=q["paired_max"]))
    return {"rows": rows, "notes": [
        "each update replaces every variable; at the maximum rate the update thread takes its share of the "
        "2 cores and commits hold the exclusive lock back to back, so that ratio is shown for information"]}


def timeline(m: Any, xs: list[np.ndarray], threads: int, seconds: float, rate: float | None,
             upd: dict) -> tuple[list[tuple[float, float]], list[tuple[float, float, float]]]:
    """Run ``threads`` infer threads for ``seconds`` with full updates at ``rate`` Hz (None: none).

    Returns every infer call as ``(start, end)`` and every update as ``(start, end,
    commit seconds)`` (the commit: the update graph's run, the only phase that excludes
    inference), all on ``time.perf_counter``.
    """
    stop = threading.Event()
    start = threading.Barrier(threads + 2)
    calls: list[list[tuple[float, float]]] = [[] for _ in range(threads)]
    updates: list[tuple[float, float, float]] = []
    clock = time.perf_counter

    def infer(i: int) -> None:
        mine, k, n = calls[i], 0, len(xs)
        start.wait()
        while not stop.is_set():
            t0 = clock()
            m.infer(xs[k % n])
            mine.append((t0, clock()))
            k += 1

    def update() -> None:
        start.wait()
        if rate is None:
            return
        t_next = clock()
        while not stop.is_set():
            t_next += 1.0 / rate
            delay = t_next - clock()
            if delay > 0 and stop.wait(delay):
                return
            u0 = clock()
            m.update(upd)
            updates.append((u0, clock(), m.stats["last_update"]["commit_seconds"]))

    _run_for(seconds, threads, infer, update, start, stop)
    return [c for part in calls for c in part], updates


def latencies(m: Any, xs: list[np.ndarray], threads: int, seconds: float, rate: float | None,
              upd: dict) -> tuple[list[float], list[float]]:
    """:func:`timeline` as every infer's latency (s) and every update's commit duration (s)."""
    calls, updates = timeline(m, xs, threads, seconds, rate, upd)
    return [b - a for a, b in calls], [c for _, _, c in updates]


def stalls(calls: list[tuple[float, float]], updates: list[tuple[float, float, float]],
           typical: float) -> tuple[list[float], float]:
    """Per update, the longest extra wait of an infer call that overlapped it, over that update's own commit.

    Extra wait = latency - ``typical`` (the median latency without updates).  Returns the
    per-update ratios and the longest extra wait among the calls that overlapped no
    update (what the machine alone does to a call in the same window).
    """
    updates = sorted(updates)
    starts = [u0 for u0, _, _ in updates]
    worst = [0.0] * len(updates)
    alone = 0.0
    for a, b in calls:
        extra = (b - a) - typical
        hit = False
        j = bisect.bisect_left(starts, b)  # updates starting before the call ended
        for k in range(j - 1, -1, -1):
            u0, u1, _ = updates[k]
            if u1 <= a:
                if u1 < a - 1.0:  # updates are far shorter than a second: none further back overlaps
                    break
                continue
            hit = True
            worst[k] = max(worst[k], extra)
        if not hit:
            alone = max(alone, extra)
    return [w / c for w, (_, _, c) in zip(worst, updates) if c > 0], alone


def p99(xs: Sequence[float]) -> float:
    return float(np.percentile(xs, 99)) if xs else float("nan")


def s8_pause(c: BenchContext) -> dict:
    """The longest infer stall an update causes, against the commit's own duration and the no-update p99.

    Per round, interleaved: a window without updates, a window with full updates at the
    bundle's rate.  Per update, its stall = the longest extra wait (latency minus the
    median latency without updates) of a call that overlapped it, as a ratio to that
    update's own commit (goal <= 1.2x: a call waits about one commit, no more); the worst
    update of the window counts.  Calls that overlapped no update give the noise floor;
    then p99 under updates / p99 without (goal <= 1.2x).
    """
    from ..sim import models

    cfg = c.cfg
    cores = os.cpu_count() or 1
    thread_counts = list(cfg.s8_threads) or sorted({1, cores})
    rows: list[dict] = []
    for label, (kind, sizes, rate) in cfg.s8_bundles.items():
        c.progress(f"8 pause: building {label}")
        if kind == "mlp":
            proto, w0 = models.mlp(sizes, seed=cfg.seed)
            x = c.rng.standard_normal((1, sizes[0])).astype(np.float32)
        else:
            proto, w0 = models.embedding(*sizes, seed=cfg.seed)
            x = np.array([sizes[1] // 2], np.int64)
        path = c.build(proto, init=False)
        del proto
        upd = {k: (v * 0.5).astype(v.dtype) for k, v in w0.items()}
        del w0
        nbytes = sum(v.nbytes for v in upd.values())
        for threads in thread_counts:
            m = c.open(path, max_concurrency=threads)
            xs = fresh_copies(x, 64)
            per: dict[str, list[float]] = {"stall/commit": [], "stall/p99": [], "p99": [], "alone/commit": [],
                                           "stall_ms": [], "commit_ms": [], "p99_none_ms": [], "alone_ms": []}
            try:
                m.update(upd)
                timeline(m, xs, threads, min(0.2, cfg.s8_seconds), None, upd)  # warm: every slot built
                for r in range(cfg.s8_rounds):
                    got: dict[str, tuple[list, list]] = {}
                    for side in (("none", "upd") if r % 2 == 0 else ("upd", "none")):
                        c.progress(
                            f"8 pause: {label}, {threads} infer thread(s), round {r + 1}/{cfg.s8_rounds}, {side}"
                        )
                        got[side] = timeline(m, xs, threads, cfg.s8_seconds, None if side == "none" else rate, upd)
                    base = [b - a for a, b in got["none"][0]]
                    calls, updates = got["upd"]
                    if not base or not calls or not updates:
                        continue
                    typical, p99_none = median(base), p99(base)
                    ratios, alone = stalls(calls, updates, typical)
                    if not ratios:
                        continue
                    k = max(range(len(ratios)), key=ratios.__getitem__)  # the worst update of the window
                    stall = ratios[k] * updates[k][2]
                    commit = median([u[2] for u in updates])
                    per["stall/commit"].append(ratios[k])
                    per["stall/p99"].append(stall / p99_none)
                    per["p99"].append(p99([b - a for a, b in calls]) / p99_none)
                    per["alone/commit"].append(max(max(base) - typical, alone) / commit)
                    per["stall_ms"].append(1e3 * stall)
                    per["commit_ms"].append(1e3 * commit)
                    per["p99_none_ms"].append(1e3 * p99_none)
                    per["alone_ms"].append(1e3 * max(max(base) - typical, alone))
            finally:
                m.close()
            if not per["stall/commit"]:
                continue
            what = f"{label}, {threads} infer thread{'s' if threads > 1 else ''}"
            detail: dict[str, Any] = {"stall_ms": median(per["stall_ms"]), "commit_ms": median(per["commit_ms"]),
                      "p99_none_ms": median(per["p99_none_ms"]), "alone_ms": median(per["alone_ms"]),
                      "update_mib": nbytes / MiB, "updates_hz": rate, "gil_switch_ms": 1e3 * sys.getswitchinterval()}
            for key, name, op, goal in (("stall/commit", "longest stall / its commit", "<=", 1.2),
                                        ("alone/commit", "longest wait without an update / commit", None, None),
                                        ("stall/p99", "longest stall / no-update p99", None, None),
                                        ("p99", f"p99 under {rate:g} Hz updates / no-update p99", "<=", 1.2)):
                xs_r = per[key]
                rows.append(table_row(8, f"{name}, {what}", median(xs_r), op, goal, **detail,
                                      paired_min=min(xs_r), paired_max=max(xs_r)))
    return {"rows": rows, "notes": [
        "stall: per update, the longest extra wait (latency - median latency without updates) of an infer call "
        "that overlapped the update (stage and commit), over that update's own commit (the update graph's run "
        "under the gate's writer side); the row is the worst update of each window, median over rounds, "
        "'rounds' = their range; each round interleaves a no-update window. A call that arrives while another "
        "reader is in flight waits for that reader's remaining work and then the commit, so stall/commit > 1 "
        "grows with the infer's own duration (the dense MLP reads all its weights per call; the embedding a few "
        "rows). 'without an update' = the longest extra wait of a call that overlapped no update (both windows): "
        "what the machine (scheduler, GIL hand-offs, gil_switch_ms) does to a call by itself, the noise floor of "
        "the stall rows"]}
