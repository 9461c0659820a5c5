"""The watcher's and the reader's state stay bounded by what is on disk (issue 29): no growth per checkpoint.

The scan/apply loop is driven directly (write one checkpoint with ``keep=2``, ``poll()`` once), with no sleeps;
``tracemalloc`` measures the Python heap between two points well after warm-up (caches, the first listings).
"""
from __future__ import annotations

import gc
import logging
import os
import pathlib
import tracemalloc

import numpy as np
import pytest

from acl_bundle import BundleModel
from acl_bundle.checkpoint import write_checkpoint
from acl_bundle.watcher import CheckpointWatcher

WEIGHTS = {"w": np.arange(4, dtype=np.float32), "b": np.ones(2, np.float32)}


class _Model:
    """The watcher's view of a model: variables and update (what a BundleModel adds is the model's own state)."""

    class _V:
        def __init__(self, name, a):
            self.name, self.shape, self.dtype = name, a.shape, a.dtype

    def __init__(self) -> None:
        self.variables = [self._V(k, a) for k, a in WEIGHTS.items()]
        self.version = 0

    def update(self, weights, *, step=None):
        self.version += 1
        return self.version


def _heap() -> int:
    """Traced bytes, less the interpreter's table of interned strings: pathlib interns every path part (each
    checkpoint's unique temp name too) and that table, which forgets a string when it dies, grows in one
    ~2 MB step when it resizes, whenever that happens to fall (not growth per checkpoint)."""
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, pathlib.__file__)])
    return sum(s.size for s in snap.statistics("filename"))


def _growth_per_checkpoint(model, directory, weights, n: int, warm: int = 300) -> float:
    wt = CheckpointWatcher(model, directory, use_watchdog=False, history_size=10)
    step = 0

    def commit_and_apply(count: int) -> None:
        nonlocal step
        for _ in range(count):
            step += 1
            write_checkpoint(directory, weights, step, keep=2)
            applied = wt.poll()
            assert applied is not None and applied.step == step

    commit_and_apply(warm)
    tracemalloc.start()
    try:
        commit_and_apply(warm)  # the tracer's own first allocations, then the measured stretch
        gc.collect()
        before = _heap()
        commit_and_apply(n)
        gc.collect()
        after = _heap()
    finally:
        tracemalloc.stop()
    assert wt.applied == 2 * warm + n and len(os.listdir(directory)) == 4  # keep=2: two markers, two data files
    return (after - before) / n


@pytest.fixture
def no_fsync(monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # durability is not what is measured; 3,000 fsyncs cost seconds
    # pytest's log capture keeps every record it sees: with the INFO line per applied checkpoint that is the
    # test's growth, not the watcher's (a service logs to a stream or a rotating file)
    log = logging.getLogger("acl_bundle")
    level = log.level
    log.setLevel(logging.WARNING)  # (setLevel, not the attribute: it clears the loggers' level caches)
    yield
    log.setLevel(level)


def test_the_watcher_does_not_grow_per_checkpoint(tmp_path, no_fsync):
    per = _growth_per_checkpoint(_Model(), tmp_path, WEIGHTS, 3000)
    assert per < 16, f"the heap grew by {per:.1f} bytes per checkpoint"


@pytest.mark.slow
def test_a_bundle_model_and_its_watcher_do_not_grow_over_10000_checkpoints(tmp_path, make_bundle, no_fsync):
    om, w = make_bundle()
    d = tmp_path / "ckpt"
    d.mkdir()
    with BundleModel(om) as m:
        per = _growth_per_checkpoint(m, d, w, 10_000)
    assert per < 16, f"the heap grew by {per:.1f} bytes per checkpoint"
