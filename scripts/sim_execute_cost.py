"""Simulated ``acl.mdl.execute`` against onnxruntime's own call on the same graph (issue 27).

One bundle (an MLP 64-256-256-10, batch 1, a dynamic-batch bundle like the serving
benchmark's), loaded on the simulator by the raw pyACL sequence; then, interleaved over
``--rounds`` rounds of ``--calls`` calls each (A B B A ...):

- A: ``acl.mdl.execute(infer, in_ds, out_ds)`` (the simulator: checks, bindings, onnxruntime);
- B: onnxruntime alone: ``session.run_with_iobinding`` of an IOBinding built once over the
  same device buffers (the kernel the simulator calls, nothing else).

Both run in one thread, on the same session and buffers; round 0 warms both up and is not
counted; both first compute once into the emptied output buffer and must agree, and every
simulated execute must succeed (the simulator's execution count).  Prints the per-call
medians of the rounds, the median (and range) of the per-round ratios A/B, by wall clock
and by the thread's own CPU time (onnxruntime runs in the calling thread with one intra-op
thread; CPU time leaves out the time other processes on the machine took the core), and
the load average.  Run: ``python scripts/sim_execute_cost.py``.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--sizes", default="64,256,256,10")
    args = ap.parse_args()

    from acl_bundle import sim
    from acl_bundle.bench import RawInfer
    from acl_bundle.sim import _state, acl, builder, models

    sizes = tuple(int(s) for s in args.sizes.split(","))
    model, _ = models.mlp(sizes, seed=0)
    with tempfile.TemporaryDirectory() as d:
        om, _ = builder.save(builder.build_bundle(model, batch_sizes=[1, 2, 4, 8], init=True), Path(d) / "b.om")
        raw = RawInfer(acl, str(om), batch=1)
        try:
            x = np.random.default_rng(0).standard_normal((1, sizes[0])).astype(np.float32)
            raw(x)
            m = _state.WORLD.models[raw.infer_id]
            sess = m.session
            # the same bindings the simulator makes, built once
            from acl_bundle.sim import _data

            ids, ods = _data.get_ds(raw.in_ds), _data.get_ds(raw.out_ds)
            in_dbs = [_data.get_db(h) for h in ids.buffers]
            out_dbs = [_data.get_db(h) for h in ods.buffers]
            gear = m.dyn.find([1]) if m.dyn is not None else None
            shapes_in = m.dyn.input_shapes(gear) if gear is not None else [t.shape for t in m.graph.inputs]
            shapes_out = m.dyn.output_shapes(gear) if gear is not None else [t.shape for t in m.graph.outputs]
            io = sess.io_binding()
            for s, shape, db in zip(m.graph.inputs, shapes_in, in_dbs):
                io.bind_input(s.name, "cpu", 0, s.np_dtype.type, list(shape), db.addr)
            for v in m.bundle.vars:
                io.bind_input(v.spec.name, "cpu", 0, v.spec.np_dtype.type, list(v.spec.shape), v.ptr)
            for s, shape, db in zip(m.graph.outputs, shapes_out, out_dbs):
                io.bind_output(s.name, "cpu", 0, s.np_dtype.type, list(shape), db.addr)

            def a() -> None:
                ex, i_ds, o_ds, mid = acl.mdl.execute, raw.in_ds, raw.out_ds, raw.infer_id
                for _ in range(args.calls):
                    ex(mid, i_ds, o_ds)

            def b() -> None:
                run = sess.run_with_iobinding
                for _ in range(args.calls):
                    run(io)

            # Both compute the same: the same outputs into the same buffer (A's return code checked below).
            out = out_dbs[0]
            got_ab = []
            for once in (lambda: acl.mdl.execute(raw.infer_id, raw.in_ds, raw.out_ds),
                         lambda: sess.run_with_iobinding(io)):
                ctypes.memset(out.addr, 0, out.size)
                once()
                got_ab.append(ctypes.string_at(out.addr, out.size))
            if got_ab[0] != got_ab[1] or not any(got_ab[0]):
                raise SystemExit("A and B computed different outputs: not the same graph and buffers")
            done = sim.stats()["executions"].get(raw.infer_id, 0)

            clocks = {"wall": time.perf_counter, "cpu": time.thread_time}  # cpu: this thread's CPU time only
            times = {(c, k): [] for c in clocks for k in "AB"}
            ratios: dict[str, list[float]] = {c: [] for c in clocks}
            for r in range(args.rounds + 1):  # round 0 warms both up and is not counted
                got: dict[tuple[str, str], float] = {}
                for kind in ("AB" if r % 2 == 0 else "BA"):
                    w0, c0 = time.perf_counter(), time.thread_time()
                    (a if kind == "A" else b)()
                    got["cpu", kind] = (time.thread_time() - c0) / args.calls
                    got["wall", kind] = (time.perf_counter() - w0) / args.calls
                if r:
                    for key, v in got.items():
                        times[key].append(v)
                    for c in clocks:
                        ratios[c].append(got[c, "A"] / got[c, "B"])
            if sim.stats()["executions"].get(raw.infer_id, 0) - done != (args.rounds + 1) * args.calls:
                raise SystemExit(f"some simulated executes failed: {acl.get_recent_err_msg()}")
            load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
            print(f"MLP {sizes}, batch 1, {args.rounds} interleaved rounds x {args.calls} calls (one thread), "
                  f"load average {load}")
            print("                                  wall clock    thread CPU time   (us/call, median of rounds)")
            med = statistics.median
            for k, label in (("A", "A simulated acl.mdl.execute     "), ("B", "B onnxruntime run_with_iobinding")):
                print(f"{label} {med(times['wall', k]) * 1e6:8.2f}      {med(times['cpu', k]) * 1e6:8.2f}")
            for c, label in (("wall", "wall clock"), ("cpu", "thread CPU time")):
                rs = ratios[c]
                print(f"A/B {med(rs):.2f}x by {label}: median of per-round ratios, range {min(rs):.2f}-{max(rs):.2f}x "
                      "(goal <= 2x)")
        finally:
            raw.close()


if __name__ == "__main__":
    main()
