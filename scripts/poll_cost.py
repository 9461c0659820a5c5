"""Cost of one CheckpointWatcher poll in a directory of 100,000 unrelated files, two checkouts side by side.

    python scripts/poll_cost.py OLD_CHECKOUT NEW_CHECKOUT [DIR]

Each checkout is imported in its own subprocess (A/B/B/A, three rounds); each
subprocess applies the newest checkpoint, then times 20 polls that find nothing new
and prints their median.  Prints the median per checkout and the ratio new/old.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ONE = r"""
import sys, time, statistics
from pathlib import Path
from acl_bundle.watcher import CheckpointWatcher
class M:  # a model stand-in: what is timed is the directory scan
    variables = ["a"]
    def update(self, w): return 1
w = CheckpointWatcher(M(), Path(sys.argv[1]), use_watchdog=False)
w.poll()
ts = []
for _ in range(20):
    t = time.perf_counter(); w.poll(); ts.append(time.perf_counter() - t)
print(statistics.median(ts))
"""


def main() -> None:
    old_root, new_root = sys.argv[1], sys.argv[2]
    d = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(tempfile.mkdtemp(prefix="poll_cost_"))
    if not any(d.glob("*.ckpt.json")):
        for i in range(100_000):
            (d / f"unrelated-{i}.bin").touch()
        code = ("import sys, numpy as np; from acl_bundle.checkpoint import write_checkpoint\n"
                "for s in (1, 2, 3): write_checkpoint(sys.argv[1], {'a': np.ones(4, np.float32)}, s)")
        subprocess.run([sys.executable, "-c", code, str(d)], check=True, cwd=d,
                       env=dict(os.environ, PYTHONPATH=new_root))
        old = os.stat(d).st_mtime - 600
        os.utime(d, (old, old))  # a settled directory
    roots = {"old": old_root, "new": new_root}
    res: dict[str, list[float]] = {k: [] for k in roots}
    for order in (["old", "new"], ["new", "old"]) * 3:
        for k in order:
            out = subprocess.run([sys.executable, "-c", ONE, str(d)], capture_output=True, text=True, check=True, cwd=d,
                                 env=dict(os.environ, PYTHONPATH=roots[k], ACL_BUNDLE_BACKEND="sim"))
            res[k].append(float(out.stdout.strip()))
    for k, v in res.items():
        print(f"{k} ({roots[k]}): median poll {statistics.median(v) * 1e6:.0f} µs over {len(v)} runs")
    print(f"ratio new/old: {statistics.median(res['new']) / statistics.median(res['old']):.5f}")


if __name__ == "__main__":
    main()
