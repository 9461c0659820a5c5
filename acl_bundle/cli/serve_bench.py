"""``acl-bundle serve-bench``: the server on loopback, measured."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .base import Command, check_extras, output_file


class ServeBench(Command):
    """Benchmark the server on loopback: REST and gRPC round trips vs in-process infer, batching on vs off.

    Start acl-bundle serve processes on loopback (simulator) and measure, interleaved:
    HTTP and gRPC round trip vs in-process infer (added latency), and dynamic batching
    on vs off at 16 concurrent single-row clients.
    """

    name = "serve-bench"
    extras = ("serve", "sim")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--quick", action="store_true", help="few requests (smoke test)")
        p.add_argument("--json", metavar="FILE", help="write the results as JSON")
        p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")

    def run(self, args: argparse.Namespace) -> int:
        json_path = output_file(args.json, "--json") if args.json else None
        check_extras("serve-bench", *self.extras)
        from ..bench import serve as bench

        t0 = time.perf_counter()

        def progress(msg: str) -> None:
            if not args.no_progress:
                sys.stderr.write(f"[{time.perf_counter() - t0:5.1f}s] {msg}\n")
                sys.stderr.flush()

        results = bench.run(bench.ServeBenchConfig(quick=args.quick), progress=progress)
        print(bench.format_table(results))
        if json_path:
            with open(json_path, "w") as f:
                json.dump(results, f, indent=1)
            print(f"wrote {json_path}")
        return 0
