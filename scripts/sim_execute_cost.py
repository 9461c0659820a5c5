"""Simulated ``acl.mdl.execute`` against onnxruntime's own call on the same graph (issue 27).

One bundle (an MLP 64-256-256-10, batch 1, a dynamic-batch bundle like the serving
benchmark's), loaded on the simulator by the raw pyACL sequence; then, interleaved over
``--rounds`` rounds of ``--calls`` calls each (A B B A ...):

- A: ``acl.mdl.execute(infer, in_ds, out_ds)`` (the simulator: checks, bindings, onnxruntime);
- B: onnxruntime alone: ``session.run_with_iobinding`` of an IOBinding built once over the
  same device buffers (the kernel the simulator calls, nothing else).

Both run in one thread, on the same session and buffers; round 0 warms both up and is not
counted.  Prints per-call medians of the rounds and the median (and range) of the per-round
ratios A/B.  Run: ``python scripts/sim_execute_cost.py``.
"""
from __future__ import annotations

import argparse
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

            times: dict[str, list[float]] = {"A": [], "B": []}
            ratios: list[float] = []
            for r in range(args.rounds + 1):  # round 0 warms both up and is not counted
                got: dict[str, float] = {}
                for kind in ("AB" if r % 2 == 0 else "BA"):
                    t0 = time.perf_counter()
                    (a if kind == "A" else b)()
                    got[kind] = (time.perf_counter() - t0) / args.calls
                if r:
                    times["A"].append(got["A"])
                    times["B"].append(got["B"])
                    ratios.append(got["A"] / got["B"])
            ta, tb = statistics.median(times["A"]), statistics.median(times["B"])
            print(f"MLP {sizes}, batch 1, {args.rounds} interleaved rounds x {args.calls} calls (one thread)")
            print(f"A simulated acl.mdl.execute      {ta * 1e6:8.2f} us/call (median of rounds)")
            print(f"B onnxruntime run_with_iobinding {tb * 1e6:8.2f} us/call (median of rounds)")
            print(f"A/B {statistics.median(ratios):.2f}x median of per-round ratios, "
                  f"range {min(ratios):.2f}-{max(ratios):.2f}x (goal <= 2x)")
        finally:
            raw.close()


if __name__ == "__main__":
    main()
