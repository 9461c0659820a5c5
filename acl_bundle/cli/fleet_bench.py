"""``acl-bundle fleet-bench``: a Ray fleet's publish against one replica's update."""

from __future__ import annotations

import argparse

from .base import Command, UsageError, check_extras, int_list


class FleetBench(Command):
    """Benchmark a Ray fleet's publish against one replica's update, and commit skew (needs ray).

    Start a local Ray cluster (unless one is running), a fleet on the simulator, and time
    publish vs a single replica's update of the same bytes, interleaved.
    """

    name = "fleet-bench"
    extras = ("ray", "sim")

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--replicas", type=int, default=4, metavar="N", help="replicas in the fleet (default 4)")
        p.add_argument("--sizes", default="4,64", metavar="MIB,MIB", help="full-update sizes in MiB (default 4,64)")
        p.add_argument("--rounds", type=int, default=20, metavar="N", help="interleaved rounds per size (default 20)")
        p.add_argument("--modes", default="calls", metavar="MODE,MODE",
                       help="publish modes, interleaved: calls, barrier (commit_lead 4 ms), barrier:MS (default calls)")

    def run(self, args: argparse.Namespace) -> int:
        if args.replicas < 1 or args.rounds < 1:
            raise UsageError("--replicas and --rounds must be >= 1")
        sizes = tuple(int_list(args.sizes, "--sizes"))
        check_extras("fleet-bench", *self.extras)
        from ..bench import fleet as fleet_bench

        modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
        if not modes:
            raise UsageError("--modes: give at least one publish mode")
        try:
            for m in modes:
                fleet_bench.mode_settings(m)
        except ValueError as e:
            raise UsageError(f"--modes: {e}") from None
        rows = fleet_bench.run_fleet_bench(replicas=args.replicas, sizes_mib=sizes, rounds=args.rounds, modes=modes)
        print(fleet_bench.format_fleet_table(rows))
        return 0
