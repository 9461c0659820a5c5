"""``acl-bundle bench``: the wrapper's benchmarks (ratios measured side by side, on the simulator)."""

from __future__ import annotations

import argparse
import sys
import time

from .base import Command, UsageError, int_list, output_file, require_extra

#: the scenarios ``--help`` lists (without importing the benchmarks); a test checks they are bench.SCENARIOS
SCENARIO_HELP = {
    1: "wrapper overhead",
    2: "update proportional to change",
    3: "update bandwidth",
    4: "update vs physical bound (numpy.copyto)",
    5: "serving under updates",
    6: "allocation discipline",
    7: "staging memory",
    8: "pause caused by an update",
    9: "start-up (whole processes)",
}
_FIRST, _LAST = min(SCENARIO_HELP), max(SCENARIO_HELP)

_EPILOG = f"""\
Every figure is a ratio of two things measured in the same run, interleaved
over several rounds (medians), on the simulator.  Exit code 0 even when a goal
is missed: the table says PASS/FAIL per goal.

scenarios:
{chr(10).join(f"  {n}  {text}" for n, text in SCENARIO_HELP.items())}

examples:
  acl-bundle bench                      # all scenarios, default sizes (a few minutes)
  acl-bundle bench --quick              # small sizes, a few seconds (CI smoke test)
  acl-bundle bench --only 1,3 --json bench.json --plot bench.png
"""


class Bench(Command):
    """Benchmark the wrapper against raw pyACL and the physical limits (simulator).

    Run the benchmarks (scenarios {first}-{last}, listed below) and print a table
    with each goal and PASS/FAIL (UNRELIABLE when the rounds disagree).
    """

    name = "bench"
    extras = ("sim",)
    epilog = _EPILOG

    @classmethod
    def description(cls) -> str:
        return super().description().format(first=_FIRST, last=_LAST)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--quick", action="store_true", help="small sizes and few rounds (smoke test)")
        p.add_argument("--only", metavar="N,N,...", help=f"run only these scenarios ({_FIRST}-{_LAST})")
        p.add_argument("--json", metavar="FILE", help="write the full results as JSON")
        p.add_argument("--plot", metavar="PNG", help="write a bar chart of ratios vs goals (needs matplotlib)")
        p.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")

    def run(self, args: argparse.Namespace) -> int:
        from .. import bench

        only = int_list(args.only, "--only") if args.only is not None else None
        if only is not None and any(n not in bench.SCENARIOS for n in only):
            raise UsageError(f"--only takes scenario numbers among {sorted(bench.SCENARIOS)}, got {args.only!r}")
        plot = None
        if args.plot:
            if only is not None and not set(only) - {6}:
                raise UsageError(
                    "--plot draws the ratio goals; scenario 6 only counts calls (add another scenario to --only)"
                )
            plot = output_file(args.plot, "--plot", "acl-bundle-bench.png", ".png")
            try:
                import matplotlib  # noqa: F401
            except ImportError as e:
                raise require_extra("plot", "--plot", e) from None
        json_path = output_file(args.json, "--json") if args.json else None
        tty = sys.stderr.isatty()
        t0 = time.perf_counter()

        def progress(msg: str) -> None:
            if args.no_progress:
                return
            line = f"[{time.perf_counter() - t0:5.1f}s] {msg}"
            sys.stderr.write("\r\033[K" + line if tty else line + "\n")
            sys.stderr.flush()

        results = bench.run_bench(bench.BenchConfig(quick=args.quick, only=only), progress=progress)
        if tty and not args.no_progress:
            sys.stderr.write("\r\033[K")
        print(bench.format_table(results))
        if json_path:
            bench.write_json(results, json_path)
            print(f"wrote {json_path}")
        if plot:
            bench.write_plot(results, plot)
            print(f"wrote {plot}")
        return 0
