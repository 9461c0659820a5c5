"""The benchmark's configuration: scenario names (SCENARIOS), sizes and repetitions (BenchConfig)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

FORMAT = "acl-bundle-bench"
VERSION = 1
MiB = 1 << 20

#: scenario number -> short name
SCENARIOS: dict[int, str] = {
    1: "wrapper overhead",
    2: "update proportional to change",
    3: "update bandwidth",
    4: "update vs physical bound",
    7: "staging memory",
    5: "serving under updates",
    6: "allocation discipline",
    8: "pause caused by an update",
    9: "start-up",
}

Progress = Callable[[str], None]


@dataclass
class BenchConfig:
    """Sizes and repetitions; the defaults run in well under 2 minutes on 2 cores.

    ``quick=True`` replaces every size by a small one (CI smoke test, a few seconds).
    ``only`` restricts the run to some scenario numbers (1..9).
    """

    quick: bool = False
    only: Sequence[int] | None = None
    rounds: int = 7  # interleaved A/B rounds per measurement
    seed: int = 0
    # 1. wrapper overhead: MLP layer sizes per model, batch sizes, infer calls per timed block
    s1_models: dict[str, tuple[int, ...]] = field(
        default_factory=lambda: {"tiny": (8, 16, 4), "small": (64, 128, 10), "medium": (512, 1024, 1024, 256)}
    )
    s1_batches: tuple[int, ...] = (1, 64)
    s1_calls: int = 200
    s1_warmup_s: float = 0.3  # untimed alternation before each configuration's rounds
    # 2. update proportional to change: variables x float32 elements each, updates per block
    s2_variables: int = 100
    s2_size: int = 256 * 1024  # 1 MiB per variable
    s2_counts: tuple[int, ...] = (1, 10, 100)
    s2_calls: int = 5
    # 3. update bandwidth: total variable bytes, split into this many variables
    s3_bytes: int = 256 * MiB
    s3_variables: int = 16
    s3_rounds: int = 7
    # 4. update vs reload: MLP sizes
    s4_model: tuple[int, ...] = (512, 1024, 1024, 256)
    s4_rounds: int = 5
    # 5. serving under updates: MLP sizes, infer threads, seconds per window, update rates
    s5_model: tuple[int, ...] = (512, 1024, 1024, 256)
    s5_threads: int = 3
    s5_seconds: float = 1.5
    s5_rounds: int = 3
    # 6. allocation discipline: steady-state calls counted
    s6_calls: int = 1000
    # 8. pause: bundles (label -> kind, sizes, update rate Hz), infer thread counts (() = 1 and the cores),
    # seconds per window, interleaved rounds
    s8_bundles: dict[str, tuple[str, tuple[int, ...], float]] = field(default_factory=lambda: {
        "7 MiB MLP": ("mlp", (512, 1024, 1024, 256), 10.0),
        "256 MiB embedding": ("embedding", (16, 65536, 64), 4.0),
    })
    s8_threads: tuple[int, ...] = ()
    s8_seconds: float = 1.0
    s8_rounds: int = 5
    # 9. start-up: interleaved whole-process runs of each command and of ``python -c pass``
    s9_rounds: int = 20

    def __post_init__(self) -> None:
        if self.quick:
            self.rounds = 3
            self.s1_models = {"tiny": (4, 8, 2), "small": (16, 32, 8), "medium": (128, 256, 64)}
            self.s1_batches = (1, 8)
            self.s1_calls = 30
            self.s1_warmup_s = 0.02
            self.s2_size = 4096
            self.s2_calls = 3
            self.s3_bytes = 16 * MiB
            self.s3_variables = 4
            self.s3_rounds = 3
            self.s4_model = (64, 128, 10)
            self.s4_rounds = 3
            self.s5_model = (64, 128, 10)
            self.s5_threads = 2
            self.s5_seconds = 0.25
            self.s5_rounds = 2
            self.s6_calls = 200
            self.s8_bundles = {"0.4 MiB MLP": ("mlp", (64, 512, 128, 64), 10.0),
                               "4 MiB embedding": ("embedding", (4, 4096, 64), 10.0)}
            self.s8_seconds = 0.3
            self.s8_rounds = 2
            self.s9_rounds = 3
        if self.only is not None:
            bad = [s for s in self.only if s not in SCENARIOS]
            if bad or not self.only:
                raise ValueError(f"only must name scenarios among {sorted(SCENARIOS)}, got {list(self.only)}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")

    def selected(self) -> list[int]:
        return sorted(set(self.only)) if self.only is not None else sorted(SCENARIOS)
