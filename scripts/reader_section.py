#!/usr/bin/env python
"""Experiment behind the reader-section choice in acl_bundle/_model/gate.py (issue 16).

Today an ``infer`` is a reader of the gate across copy-in, execute and copy-out.  The
alternative holds the reader side only around ``execute`` (and the version read): the
call owns its slot throughout, copies outside the section.  This script builds that
variant from the gate's own state, opens the same bundle twice (today / execute-only)
and measures, interleaved in one process:

* the longest infer stall under 10 Hz full updates minus the median latency without,
  as in bench scenario 8, with 1 infer thread and 4 (more than the cores);
* the per-call cost of the two on a tiny MLP, one thread, no updates.

    PYTHONPATH=. .venv/bin/python scripts/reader_section.py --rounds 8

Simulator only; prints one line per case with the per-round paired ratios.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from acl_bundle import BundleModel, sim
from acl_bundle._errors import AclError, recent_error
from acl_bundle.bench.harness import fresh_copies
from acl_bundle.bench.latency import latencies
from acl_bundle.sim import builder, models


def execute_only(m: BundleModel):
    """m's fast path with the reader side held only around execute + version read (experiment)."""
    gate, acl, ctx, d = m._gate, m._acl, m._ctx, m._desc
    cond, lock, free = gate._cond, gate._cond._lock, gate._free

    def fast(inputs):
        if len(inputs) != len(d.accept):
            return None
        batch = 0
        for a, (dtype, shapes) in zip(inputs, d.accept):
            if type(a) is not np.ndarray or a.dtype != dtype or not a.flags.c_contiguous:
                return None
            b = shapes.get(a.shape)
            if b is None:
                return None
            batch = b or batch
        batch = batch or d.default_batch
        with lock:  # take an idle slot (in flight, not a reader yet)
            idle = free.get(batch)
            if gate.closed or not idle:
                return None
            gate._ops += 1
            slot = idle.pop()
        restore = 0
        try:
            cur, ret = acl.rt.get_context()  # as the fast path: set only when another context is current
            if ret or cur != ctx.handle:
                if acl.rt.set_context(ctx.handle):
                    raise AclError("acl.rt.set_context", 1, recent_error(acl))
                restore = cur if ret == 0 else 0
            for a, (ptr, size) in zip(inputs, slot.inputs):
                if acl.rt.memcpy(ptr, size, ctx.host_ptr(a), a.nbytes, ctx.h2d):
                    raise AclError("acl.rt.memcpy", 1, recent_error(acl))
            with cond:  # the reader section: phase-fair admission as Gate.begin_read
                if gate._writer or (gate._writers_waiting and not gate._admit):
                    gate._wait_to_read()
                gate._readers += 1
            try:
                ret = acl.mdl.execute(m._infer_id, slot.in_ds, slot.out_ds)
                version = m._updater.current
            finally:
                with lock:
                    gate._readers -= 1
                    if not gate._readers and gate._writers_waiting:
                        cond.notify_all()
            if ret:
                raise AclError("acl.mdl.execute", ret, recent_error(acl))
            outs = []
            for ptr, _size, shape, dtype in slot.outputs:
                out = np.empty(shape, dtype)
                if acl.rt.memcpy(ctx.host_ptr(out), out.nbytes, ptr, out.nbytes, ctx.d2h):
                    raise AclError("acl.rt.memcpy", 1, recent_error(acl))
                outs.append(out)
        finally:
            if restore:
                acl.rt.set_context(restore)
            with lock:
                free[batch].append(slot)
                gate._ops -= 1
                if gate._slot_waiters or (gate.closed and not gate._ops):
                    cond.notify_all()
        return outs, version

    return fast


def _open_pair(path: str, threads: int) -> dict[str, BundleModel]:
    ms = {"today": BundleModel(path, acl=sim.acl, max_concurrency=threads),
          "execute-only": BundleModel(path, acl=sim.acl, max_concurrency=threads)}
    ms["execute-only"]._fast = execute_only(ms["execute-only"])
    return ms


def stalls(path: str, x: np.ndarray, upd: dict, threads: int, rounds: int, seconds: float) -> None:
    ms = _open_pair(path, threads)
    try:
        xs = fresh_copies(x, 64)
        for m in ms.values():
            m.update(upd)
            latencies(m, xs, threads, 0.2, None, upd)
        stall: dict[str, list[float]] = {k: [] for k in ms}
        commit: dict[str, list[float]] = {k: [] for k in ms}
        for r in range(rounds):
            for k in (list(ms) if r % 2 == 0 else list(ms)[::-1]):
                base, _ = latencies(ms[k], xs, threads, seconds, None, upd)
                lat, commits = latencies(ms[k], xs, threads, seconds, 10.0, upd)
                stall[k].append(max(lat) - statistics.median(base))
                commit[k].append(statistics.median(commits))
        for k in ms:
            print(f"  {threads} thread(s) {k:12s}: stall {1e3 * statistics.median(stall[k]):7.2f} ms, "
                  f"commit {1e3 * statistics.median(commit[k]):6.2f} ms")
        pairs = [a / b for a, b in zip(stall["execute-only"], stall["today"])]
        print(f"  {threads} thread(s) stall execute-only / today: median {statistics.median(pairs):.2f}, "
              f"rounds {min(pairs):.2f}..{max(pairs):.2f}")
    finally:
        for m in ms.values():
            m.close()


def call_cost(path: str, rounds: int) -> None:
    ms = _open_pair(path, 1)
    x = np.ones((1, 8), np.float32)
    try:
        for m in ms.values():
            for _ in range(50):
                m.infer(x)
        t: dict[str, list[float]] = {k: [] for k in ms}
        for r in range(rounds):
            for k in (list(ms) if r % 2 == 0 else list(ms)[::-1]):
                xs = fresh_copies(x, 100)
                t0 = time.perf_counter()
                for a in xs:
                    ms[k].infer(a)
                t[k].append((time.perf_counter() - t0) / len(xs))
        pairs = sorted(a / b for a, b in zip(t["execute-only"], t["today"]))
        print(f"tiny MLP infer: today {1e6 * statistics.median(t['today']):.1f} us, execute-only "
              f"{1e6 * statistics.median(t['execute-only']):.1f} us; "
              f"paired ratio median {statistics.median(pairs):.3f}, "
              f"quartiles {pairs[len(pairs) // 4]:.3f}..{pairs[3 * len(pairs) // 4]:.3f}")
    finally:
        for m in ms.values():
            m.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=0.6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        def build(proto, name):
            om, _ = builder.save(builder.build_bundle(proto, init=False), Path(tmp) / name)
            return str(om)

        tiny, _ = models.mlp((8, 16, 4))
        call_cost(build(tiny, "tiny.om"), 20 * args.rounds)
        for label, (proto, w0), x in (
            ("7 MiB MLP", models.mlp((512, 1024, 1024, 256)), np.ones((1, 512), np.float32)),
            ("64 MiB embedding", models.embedding(4, 65536, 64), np.array([7], np.int64)),
        ):
            path = build(proto, label.replace(" ", "_") + ".om")
            upd = {k: (v * 0.5).astype(v.dtype) for k, v in w0.items()}
            print(f"{label}, 10 Hz full updates:")
            for threads in (1, 4):
                stalls(path, x, upd, threads, args.rounds, args.seconds)
    print(f"simulator leaks: {sim.leaks()}")


if __name__ == "__main__":
    main()
