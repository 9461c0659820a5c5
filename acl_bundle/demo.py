"""``acl-bundle demo``: online learning end to end on the simulator, in a few seconds.

What runs:

* a **data stream** of ``n_classes`` Gaussian clusters whose centres rotate in a
  plane (embedded in ``n_features`` dims) between ``drift_start`` and ``drift_end``
  ticks: concept drift.  After a quarter turn (the default ``drift_degrees=90`` with 4
  classes) every class sits where its neighbour was, so the frozen model confidently
  predicts the neighbour and its accuracy falls well below chance;
* a **trainer thread** (numpy only) that learns a softmax classifier online with SGD
  on the stream and commits a checkpoint every ``checkpoint_every`` ticks with
  :func:`~acl_bundle.checkpoint.write_checkpoint`;
* a **serving loop**: a :class:`~acl_bundle.BundleModel` kept fresh by a
  :class:`~acl_bundle.watcher.CheckpointWatcher`, and a frozen copy (the same bundle
  loaded again, never updated), both scored on a held-out stream each tick; every
  output is checked against an independent numpy forward pass of the weights the
  trainer wrote.

The trainer and the server share nothing but the checkpoint directory.  A tick clock
keeps them in step (the server waits until the tick's checkpoint is applied), so one
seed always reproduces the same accuracies; latencies are measured, not simulated.
"""
from __future__ import annotations

import math
import queue
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .device.precision import PRECISION_MODES

#: How far a reduced-precision bundle's probabilities may be from the float32 reference (fp16 logits, softmax).
REDUCED_PRECISION_TOLERANCE = 2e-2

__all__ = ["DemoConfig", "DemoResult", "DemoRow", "DriftingStream", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Everything that shapes a demo run (defaults: about 5 s on 2 cores)."""

    ticks: int = 60
    checkpoint_every: int = 2
    drift_start: int = 10
    drift_end: int = 45
    drift_degrees: float = 90.0
    n_features: int = 8
    n_classes: int = 4
    noise: float = 0.8
    train_batch: int = 64
    train_steps: int = 4  # SGD steps per tick
    learning_rate: float = 0.5
    pretrain_steps: int = 200
    eval_batch: int = 512
    seed: int = 0
    poll_interval: float = 0.02
    pace: float = 0.05  # seconds to sleep per tick so the table can be watched live
    print_every: int = 5
    precision_mode: str | None = None  # GE's --precision_mode the bundle computes in (None: exact float32)

    def check(self) -> None:
        """Raise ValueError listing every setting that is out of range."""
        problems = []
        for name in ("ticks", "checkpoint_every", "n_features", "n_classes", "train_batch", "train_steps",
                     "eval_batch", "print_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.n_features < 2:
            problems.append(f"n_features must be >= 2, got {self.n_features}")
        if self.n_classes < 2:
            problems.append(f"n_classes must be >= 2, got {self.n_classes}")
        if not 0 <= self.drift_start < self.drift_end < self.ticks:
            problems.append(
                f"need 0 <= drift_start < drift_end < ticks, got {self.drift_start}, {self.drift_end}, {self.ticks}"
            )
        if (
            self.pretrain_steps < 0
            or self.pace < 0
            or self.noise <= 0
            or self.learning_rate <= 0
            or self.poll_interval <= 0
        ):
            problems.append("pretrain_steps and pace must be >= 0; noise, learning_rate and poll_interval > 0")
        if self.precision_mode is not None and self.precision_mode not in PRECISION_MODES:
            problems.append(f"precision_mode must be one of {', '.join(PRECISION_MODES)}, got {self.precision_mode!r}")
        if problems:
            raise ValueError("bad demo config: " + "; ".join(problems))


@dataclass(frozen=True)
class DemoRow:
    """One tick as the server saw it."""

    tick: int
    drift_degrees: float
    live_accuracy: float
    frozen_accuracy: float
    version: int  # weight version that produced the live outputs
    step: int | None  # checkpoint step being served (None: initial weights)
    update_ms: float | None  # model.update time of the checkpoint being served
    lag_ms: float | None  # commit (marker written) -> update done, for that checkpoint
    new_checkpoint: bool = False  # a checkpoint was applied at this tick


@dataclass
class DemoResult:
    """What a demo run measured; ``live_after_drift`` > ``frozen_after_drift`` is the point."""

    config: DemoConfig
    rows: list[DemoRow] = field(default_factory=list)
    checkpoints_written: int = 0
    checkpoints_applied: int = 0
    checkpoints_skipped: int = 0
    max_abs_error: float = 0.0  # served probabilities vs the numpy reference
    seconds: float = 0.0
    plot: Path | None = None

    def _after(self, attr: str) -> float:
        rows = [r for r in self.rows if r.tick >= self.config.drift_end]
        return float(np.mean([getattr(r, attr) for r in rows])) if rows else float("nan")

    @property
    def live_after_drift(self) -> float:
        """Mean live accuracy over the ticks after the drift ended."""
        return self._after("live_accuracy")

    @property
    def frozen_after_drift(self) -> float:
        return self._after("frozen_accuracy")

    @property
    def before_drift(self) -> tuple[float, float]:
        """Mean (live, frozen) accuracy before the drift started."""
        rows = [r for r in self.rows if r.tick < self.config.drift_start]
        return (float(np.mean([r.live_accuracy for r in rows])), float(np.mean([r.frozen_accuracy for r in rows])))


class DriftingStream:
    """Labelled samples whose class centres rotate with time (seeded per tick, so reproducible)."""

    def __init__(self, cfg: DemoConfig) -> None:
        self.cfg = cfg
        rng = np.random.default_rng([cfg.seed, 0])
        q, _ = np.linalg.qr(rng.standard_normal((cfg.n_features, 2)))
        self.basis = q  # plane the centres live in
        self.radius = 2.0

    def angle(self, tick: int) -> float:
        """Drift angle in degrees at ``tick``."""
        c = self.cfg
        frac = min(max((tick - c.drift_start) / (c.drift_end - c.drift_start), 0.0), 1.0)
        return c.drift_degrees * frac

    def centres(self, tick: int) -> np.ndarray:
        k = self.cfg.n_classes
        a = 2 * np.pi * np.arange(k) / k + math.radians(self.angle(tick))
        return (self.radius * np.stack([np.cos(a), np.sin(a)], 1)) @ self.basis.T

    def sample(self, tick: int, n: int, kind: int, sub: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``n`` samples at ``tick``; ``kind`` separates train (1), held-out (2) and pretrain (3) draws."""
        rng = np.random.default_rng([self.cfg.seed, kind, tick, sub])
        y = rng.integers(0, self.cfg.n_classes, n)
        x = self.centres(tick)[y] + self.cfg.noise * rng.standard_normal((n, self.cfg.n_features))
        return x.astype(np.float32), y


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _reference_probs(x: np.ndarray, w: Mapping[str, np.ndarray]) -> np.ndarray:
    """Independent numpy forward pass (float64) of the linear softmax classifier."""
    return _softmax(x.astype(np.float64) @ w["W1"].astype(np.float64) + w["b1"].astype(np.float64))


def _sgd(w: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray, lr: float) -> None:
    p = _softmax(x.astype(np.float64) @ w["W1"] + w["b1"])
    p[np.arange(len(y)), y] -= 1.0  # d(cross-entropy)/d(logits)
    p /= len(y)
    w["W1"] -= lr * (x.T.astype(np.float64) @ p)
    w["b1"] -= lr * p.sum(0)


class _Trainer(threading.Thread):
    """Learns online on the stream; commits a checkpoint every ``checkpoint_every`` ticks."""

    def __init__(self, cfg: DemoConfig, stream: DriftingStream, weights: dict[str, np.ndarray], ckpt_dir: Path) -> None:
        super().__init__(name="acl_bundle-demo-trainer", daemon=True)
        self.cfg, self.stream, self.dir = cfg, stream, ckpt_dir
        self.w = {k: v.astype(np.float64) for k, v in weights.items()}
        self.ticks: queue.Queue[int | None] = queue.Queue()
        self.done: queue.Queue[Any] = queue.Queue()
        self.written: dict[int, dict[str, np.ndarray]] = {}  # step -> float32 weights as committed

    def run(self) -> None:
        from .checkpoint import write_checkpoint

        for tick in iter(self.ticks.get, None):
            try:
                for i in range(self.cfg.train_steps):
                    x, y = self.stream.sample(tick, self.cfg.train_batch, kind=1, sub=i)
                    _sgd(self.w, x, y, self.cfg.learning_rate)
                step = None
                if (tick + 1) % self.cfg.checkpoint_every == 0:
                    step = tick + 1
                    snapshot = {k: v.astype(np.float32) for k, v in self.w.items()}
                    self.written[step] = snapshot
                    write_checkpoint(self.dir, snapshot, step, keep=3)
                self.done.put(step)
            except BaseException as e:  # hand it to the server, which re-raises
                self.done.put(e)
                return


def _bar(acc: float, width: int = 20) -> str:
    n = int(round(acc * width))
    return "#" * n + "." * (width - n)


HEADER = (f"{'tick':>4}  {'drift':>6}  {'live acc':<26}  {'frozen acc':<26}  {'version':>7}  {'step':>4}  "
          f"{'update ms':>9}  {'lag ms':>6}")


def format_row(r: DemoRow) -> str:
    """One line of the live table."""
    upd = f"{r.update_ms:9.3f}" if r.update_ms is not None else f"{'-':>9}"
    lag = f"{r.lag_ms:6.1f}" if r.lag_ms is not None else f"{'-':>6}"
    return (
        f"{r.tick:>4}  {r.drift_degrees:5.1f}°  {r.live_accuracy:.3f} {_bar(r.live_accuracy)}  "
        f"{r.frozen_accuracy:.3f} {_bar(r.frozen_accuracy)}  {r.version:>7}  "
        f"{r.step if r.step is not None else '-':>4}  "
        f"{upd}  {lag}"
    )


def _check_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from ._errors import extra_hint

        raise ImportError(f"--plot needs matplotlib: {extra_hint('plot')}") from None


def run_demo(
    config: DemoConfig | None = None,
    *,
    plot: str | Path | None = None,
    workdir: str | Path | None = None,
    out: Callable[[str], None] | None = print,
    **overrides: Any,
) -> DemoResult:
    """Run the online-learning demo and return what it measured.

    ``config`` (or keyword ``overrides`` of :class:`DemoConfig` fields) shapes the run;
    ``plot`` writes a PNG of both accuracy curves and the update latencies (needs
    matplotlib); ``workdir`` keeps the bundle and checkpoints there (default: a temp
    dir removed afterwards); ``out`` receives each display line (None = silent).
    Raises RuntimeError if a served output disagrees with the numpy reference.
    """
    cfg = replace(config or DemoConfig(), **overrides)
    cfg.check()
    if plot is not None:
        _check_matplotlib()
    say = out or (lambda s: None)
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="acl_bundle_demo_") as tmp:
            return _run(cfg, Path(tmp), plot, say)
    wd = Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    return _run(cfg, wd, plot, say)


def _initial_weights(cfg: DemoConfig, stream: DriftingStream) -> dict[str, np.ndarray]:
    """Pretrain on the undrifted stream: the model a user would deploy on day one."""
    w = {"W1": np.zeros((cfg.n_features, cfg.n_classes)), "b1": np.zeros(cfg.n_classes)}
    for i in range(cfg.pretrain_steps):
        x, y = stream.sample(0, cfg.train_batch, kind=3, sub=i)
        _sgd(w, x, y, cfg.learning_rate)
    return {k: v.astype(np.float32) for k, v in w.items()}


def _build_bundle(cfg: DemoConfig, weights: dict[str, np.ndarray], path: Path) -> Path:
    from onnx import numpy_helper

    from .sim import builder, models

    model, _ = models.classifier(cfg.n_features, cfg.n_classes, batch=cfg.eval_batch, seed=cfg.seed)
    for init in model.graph.initializer:  # the bundle's initial values = the pretrained weights
        init.CopyFrom(numpy_helper.from_array(weights[init.name], init.name))
    om, _ = builder.save(builder.build_bundle(model, precision_mode=cfg.precision_mode), path)
    return om


def _run(cfg: DemoConfig, wd: Path, plot: str | Path | None, say: Callable[[str], None]) -> DemoResult:
    from . import sim
    from .model import BundleModel
    from .watcher import CheckpointWatcher

    t_start = time.perf_counter()
    stream = DriftingStream(cfg)
    initial = _initial_weights(cfg, stream)
    om = _build_bundle(cfg, initial, wd / "classifier.om")
    ckpt = wd / "checkpoints"
    ckpt.mkdir(exist_ok=True)
    for old in ckpt.iterdir():  # a reused --dir starts clean
        if old.is_file():
            old.unlink()
    result = DemoResult(cfg)
    say(
        f"acl-bundle demo: {cfg.n_classes}-class softmax classifier ({cfg.n_features} features) on the pyACL "
        "simulator; "
        f"the stream's classes rotate {cfg.drift_degrees:g}° between ticks {cfg.drift_start} and {cfg.drift_end}."
    )
    say(f"trainer thread: {cfg.train_steps} SGD steps/tick, checkpoint every {cfg.checkpoint_every} ticks -> {ckpt}")
    say("live = bundle hot-updated from the checkpoints; frozen = the same bundle, never updated.")
    say("")
    say(HEADER)

    trainer = _Trainer(cfg, stream, initial, ckpt)
    applied: dict[int, Any] = {}
    acl = sim.acl
    with BundleModel(om, acl=acl) as live, BundleModel(om, acl=acl) as frozen:
        watcher = CheckpointWatcher(live, ckpt, poll_interval=cfg.poll_interval, start_after=0,
                                    on_apply=lambda a: applied.__setitem__(a.step, a))
        trainer.start()
        watcher.start()
        try:
            update_ms = lag_ms = None
            step_of = {0: 0}  # live weight version -> checkpoint step that produced it
            for tick in range(cfg.ticks):
                trainer.ticks.put(tick)
                step = trainer.done.get()
                if isinstance(step, BaseException):
                    raise RuntimeError(f"trainer failed at tick {tick}: {step!r}") from step
                if step is not None:
                    result.checkpoints_written += 1
                    if not watcher.wait_for_step(step, timeout=30.0):
                        raise RuntimeError(f"checkpoint step {step} was not applied within 30 s "
                                           f"(skipped so far: {watcher.skipped}); see the log")
                    a = applied[watcher.applied_step]  # type: ignore[index]
                    step_of.update({b.version: b.step for b in list(applied.values())})
                    update_ms, lag_ms = 1e3 * a.update_seconds, 1e3 * a.lag_seconds
                x, y = stream.sample(tick, cfg.eval_batch, kind=2)
                (_, live_p), version = live.infer(x, return_version=True)
                _, frozen_p = frozen.infer(x)
                served = trainer.written[step_of[version]] if step_of[version] else initial
                err = max(float(np.max(np.abs(live_p - _reference_probs(x, served)))),
                          float(np.max(np.abs(frozen_p - _reference_probs(x, initial)))))
                result.max_abs_error = max(result.max_abs_error, err)
                if err > (1e-4 if cfg.precision_mode is None else REDUCED_PRECISION_TOLERANCE):
                    raise RuntimeError(
                        f"tick {tick}: served probabilities differ from the numpy reference by {err:.3g}"
                    )
                row = DemoRow(tick, stream.angle(tick), float(np.mean(live_p.argmax(1) == y)),
                              float(np.mean(frozen_p.argmax(1) == y)), version, watcher.applied_step or None,
                              update_ms, lag_ms, step is not None)
                result.rows.append(row)
                if tick % cfg.print_every == 0 or tick == cfg.ticks - 1:
                    say(format_row(row))
                if cfg.pace:
                    time.sleep(cfg.pace)
        finally:
            trainer.ticks.put(None)
            watcher.stop()
            trainer.join()
        result.checkpoints_applied = watcher.applied
        result.checkpoints_skipped = watcher.skipped
    result.seconds = time.perf_counter() - t_start
    _summary(result, say)
    if plot is not None:
        result.plot = _plot(result, Path(plot))
        say(f"plot written to {result.plot}")
    return result


def _summary(r: DemoResult, say: Callable[[str], None]) -> None:
    live0, frozen0 = r.before_drift
    upd = [row.update_ms for row in r.rows if row.new_checkpoint and row.update_ms is not None]
    lag = [row.lag_ms for row in r.rows if row.new_checkpoint and row.lag_ms is not None]
    say("")
    say(f"before the drift  (ticks < {r.config.drift_start}):   live {live0:.3f}   frozen {frozen0:.3f}")
    say(
        f"after the drift   (ticks >= {r.config.drift_end}):  live {r.live_after_drift:.3f}   frozen "
        f"{r.frozen_after_drift:.3f}"
        + ("   -> the live model tracks the drift" if r.live_after_drift > r.frozen_after_drift else "")
    )
    say(
        f"checkpoints: {r.checkpoints_written} written, {r.checkpoints_applied} applied, {r.checkpoints_skipped} "
        "skipped; "
        f"model.update median {statistics.median(upd) if upd else float('nan'):.3f} ms, "
        f"commit->served lag median {statistics.median(lag) if lag else float('nan'):.1f} ms"
    )
    if r.config.precision_mode is None:
        say(f"every served output matched an independent numpy forward pass (max |diff| {r.max_abs_error:.1e}); "
            f"{r.seconds:.1f} s total")
    else:
        say(f"computed as precision_mode {r.config.precision_mode} (as the device would): served probabilities "
            f"differ from the float32 numpy forward pass by up to {r.max_abs_error:.1e}; {r.seconds:.1f} s total")


def _plot(r: DemoResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ticks = [row.tick for row in r.rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    ax1.plot(ticks, [row.live_accuracy for row in r.rows], label="live (hot-updated)", color="tab:blue")
    ax1.plot(ticks, [row.frozen_accuracy for row in r.rows], label="frozen (initial weights)", color="tab:red")
    ax1.axvspan(r.config.drift_start, r.config.drift_end, color="0.9", label="drift")
    ax1.set_ylabel("held-out accuracy")
    ax1.set_ylim(0, 1.02)
    ax1.legend(loc="lower left")
    ax1.set_title("acl-bundle demo: online learning with live weight updates")
    pts = [(row.tick, row.update_ms, row.lag_ms) for row in r.rows if row.new_checkpoint]
    ax2.plot([p[0] for p in pts], [p[1] for p in pts], "o", ms=3, label="model.update")
    ax2.plot([p[0] for p in pts], [p[2] for p in pts], "x", ms=3, label="commit -> served")
    ax2.set_ylabel("ms")
    ax2.set_xlabel("tick")
    ax2.set_yscale("log")
    ax2.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
