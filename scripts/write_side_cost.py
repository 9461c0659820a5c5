"""Cost of running the main thread's update on the model's worker (issue 25), against the same call made inline.

An update called from the main thread runs on the model's worker thread (acl_bundle/_model/worker.py), so
that no signal handler can interrupt its lock-holding bookkeeping; from any other thread it runs inline.
This times both on one model, alternating call by call (main, thread, main, ...), and prints the medians.

    PYTHONPATH=. python scripts/write_side_cost.py [--rounds 5] [--calls 200]
"""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path
from tempfile import TemporaryDirectory

os.environ.setdefault("ACL_BUNDLE_BACKEND", "sim")

from acl_bundle import BundleModel  # noqa: E402
from acl_bundle.sim import builder, models  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args()
    model, w = models.mlp((64, 256, 256, 10), seed=0)
    with TemporaryDirectory() as d:
        om, _ = builder.save(builder.build_bundle(model, init=True), Path(d) / "b.om")
        with BundleModel(om) as m:
            # one long-lived helper thread takes its turn at every other call
            go, done = threading.Semaphore(0), threading.Semaphore(0)
            out: list[float] = []

            def helper() -> None:
                while True:
                    go.acquire()
                    t0 = time.perf_counter()
                    m.update(w)
                    out.append(time.perf_counter() - t0)
                    done.release()

            threading.Thread(target=helper, daemon=True).start()
            ratios = []
            for r in range(args.rounds):
                main_t: list[float] = []
                out.clear()
                for _ in range(args.calls):
                    t0 = time.perf_counter()
                    m.update(w)
                    main_t.append(time.perf_counter() - t0)
                    go.release()
                    done.acquire()
                thread_t = list(out)
                a, b = statistics.median(main_t), statistics.median(thread_t)
                ratios.append(a / b)
                print(f"round {r}: main thread (worker) {a * 1e6:.1f} us, other thread (inline) {b * 1e6:.1f} us, "
                      f"ratio {a / b:.3f}")
            print(f"median ratio main/inline: {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
