"""``acl-bundle demo``: online learning end to end on the simulator."""

from __future__ import annotations

import argparse
import sys

from ..device.precision import PRECISION_MODES
from .base import PROG, Command, UsageError, output_dir, output_file, require_extra

_EPILOG = """\
A trainer thread learns online on a drifting data stream and commits checkpoints;
the serving loop hot-applies them to a live bundle (CheckpointWatcher) and scores it
beside a frozen copy of the initial model.  Runs on the simulator (numpy, onnx,
onnxruntime), in a few seconds.  Exit code 1 if the live model does not beat the
frozen one after the drift.

examples:
  acl-bundle demo
  acl-bundle demo --plot demo.png          (needs matplotlib: pip install -e '.[plot]' in a checkout)
  acl-bundle demo --ticks 120 --seed 3 --fast
"""


class Demo(Command):
    """Online learning end to end: trainer -> checkpoints -> live bundle vs frozen copy.

    Run the online-learning demo on the simulator and show, live, the accuracy of
    the hot-updated model beside a frozen copy, the update latency and the weight version.
    """

    name = "demo"
    extras = ("sim",)
    epilog = _EPILOG

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--ticks",
            type=int,
            default=60,
            metavar="N",
            help="stream length in ticks (default 60, min 20); the drift spans ticks N/6 .. 3N/4",
        )
        p.add_argument(
            "--seed", type=int, default=0, help="random seed; a seed reproduces the accuracies exactly (default 0)"
        )
        p.add_argument(
            "--checkpoint-every",
            type=int,
            default=2,
            metavar="K",
            help="trainer commits a checkpoint every K ticks (default 2)",
        )
        p.add_argument(
            "--plot",
            metavar="PNG",
            help="also draw both accuracy curves and the update latencies to PNG "
            "(or into a directory); its directory must exist",
        )
        p.add_argument(
            "--dir",
            metavar="DIR",
            help="keep the bundle and checkpoints in DIR, created if missing (its "
            "parent must exist; default: a temp dir, removed)",
        )
        p.add_argument(
            "--fast", action="store_true", help="no pause between ticks (the default paces the table to be watchable)"
        )
        p.add_argument("--precision-mode", metavar="MODE", choices=PRECISION_MODES,
                       help="build the bundle with this GE precision mode (e.g. force_fp16, GE's default on a device) "
                       "and report how far the served outputs drift from float32")

    def run(self, args: argparse.Namespace) -> int:
        if args.ticks < 20:
            raise UsageError(f"--ticks must be at least 20, got {args.ticks}")
        if args.checkpoint_every < 1:
            raise UsageError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
        workdir = output_dir(args.dir, "--dir") if args.dir is not None else None
        plot = None
        if args.plot is not None:
            plot = output_file(args.plot, "--plot", "acl-bundle-demo.png", ".png")
            try:
                import matplotlib  # noqa: F401
            except ImportError as e:
                raise require_extra("plot", "--plot", e) from None
        from .. import demo

        cfg = demo.DemoConfig(
            ticks=args.ticks,
            seed=args.seed,
            checkpoint_every=args.checkpoint_every,
            drift_start=args.ticks // 6,
            drift_end=(3 * args.ticks) // 4,
            pace=0.0 if args.fast else demo.DemoConfig.pace,
            print_every=max(1, args.ticks // 12), precision_mode=args.precision_mode,
        )
        result = demo.run_demo(cfg, plot=plot, workdir=workdir)
        if not result.live_after_drift > result.frozen_after_drift:
            print(f"{PROG}: demo: the live model did not beat the frozen one after the drift", file=sys.stderr)
            return 1
        return 0
