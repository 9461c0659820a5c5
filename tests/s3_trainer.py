"""A trainer process for the object-store tests: commits steps 1..N of models.mlp weights (initial + step) to a URL."""
from __future__ import annotations

import json
import sys
import time

from acl_bundle.checkpoint import write_checkpoint
from acl_bundle.sim import models


def main() -> None:
    url, steps, pause, opts = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4])
    _, w = models.mlp((8, 16, 4), seed=0)
    for step in range(1, steps + 1):
        write_checkpoint(url, {k: (v + step).astype(v.dtype) for k, v in w.items()}, step, keep=3, grace=0,
                         storage_options=opts)
        time.sleep(pause)


if __name__ == "__main__":
    main()
