"""CheckpointWatcher on directories written by TensorFlow: TF's state file is the commit point; TF is the reference."""
from __future__ import annotations

import logging
import random
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tfhelp

from acl_bundle import BundleModel, CheckpointWatcher, sim, write_checkpoint
from acl_bundle.sim import builder, tf_builder

X = np.random.default_rng(7).standard_normal((4, 8)).astype(np.float32)


def _state(directory: Path, steps: list[int]) -> None:
    """Rewrite TF's state file with TF's own function, naming model.ckpt-<step> (newest last)."""
    paths = [str(directory / f"model.ckpt-{s}") for s in steps]
    tf.compat.v1.train.update_checkpoint_state(str(directory), paths[-1], all_model_checkpoint_paths=paths)


def _copy_as(src: Path, dst: Path) -> None:
    """A TF checkpoint under another prefix (its files do not record their own prefix)."""
    for f in src.parent.glob(src.name + ".*"):
        if not f.name.endswith(".meta"):
            shutil.copy(f, dst.parent / (dst.name + f.name[len(src.name):]))


@pytest.fixture
def tf1_dir(tf1_run, tmp_path):
    d = tmp_path / "ckpts"
    shutil.copytree(tf1_run.dir, d)
    return d


def _assert_serves(m: BundleModel, prefix: Path, oracles) -> None:
    np.testing.assert_allclose(m.infer(X), oracles["tf1"](prefix, X), rtol=1e-5, atol=1e-6)


def test_applies_the_newest_checkpoint_the_state_file_names(tf1_run, tf1_dir, oracles):
    with BundleModel(tf1_run.om) as m:
        w = CheckpointWatcher(m, tf1_dir, use_watchdog=False)
        assert w.protocol == "tf"
        applied = w.poll()
        assert applied.step == 6 and m.version == 1 and m.stats["updates"] == 1  # one update, 2 and 4 skipped
        _assert_serves(m, tf1_dir / "model.ckpt-6", oracles)
        assert w.poll() is None and m.version == 1


def test_a_checkpoint_the_state_file_does_not_name_is_invisible(tf1_run, tf1_dir, oracles):
    _state(tf1_dir, [2, 4])  # step 6's files are complete, but TF has not committed it
    with BundleModel(tf1_run.om) as m:
        w = CheckpointWatcher(m, tf1_dir, use_watchdog=False)
        assert w.poll().step == 4
        _assert_serves(m, tf1_dir / "model.ckpt-4", oracles)
        assert w.poll() is None
        _state(tf1_dir, [2, 4, 6])  # the commit
        assert w.poll().step == 6
        _assert_serves(m, tf1_dir / "model.ckpt-6", oracles)


@pytest.mark.parametrize("damage", ["flip", "truncate", "index"])
def test_a_corrupt_or_truncated_checkpoint_is_refused_and_the_last_good_weights_keep_serving(
        tf1_run, tf1_dir, oracles, caplog, damage):
    _state(tf1_dir, [2, 4])
    with BundleModel(tf1_run.om) as m:
        w = CheckpointWatcher(m, tf1_dir, use_watchdog=False)
        assert w.poll().step == 4
        good = sim.variables(m.bundle_id)
        target = tf1_dir / ("model.ckpt-6.index" if damage == "index" else "model.ckpt-6.data-00000-of-00001")
        raw = bytearray(target.read_bytes())
        if damage == "flip":
            raw[len(raw) // 2] ^= 0x01
        else:
            raw = raw[: len(raw) - 40]
        target.write_bytes(bytes(raw))
        _state(tf1_dir, [2, 4, 6])
        with caplog.at_level(logging.WARNING, logger="acl_bundle"):
            assert w.poll() is None
        if damage == "truncate":  # a shard shorter than the index says: maybe still being copied, retried
            assert w.skipped == 0 and w.waiting == 1 and "not readable yet" in caplog.text
        else:
            assert w.skipped == 1 and "skipping checkpoint model.ckpt-6.index" in caplog.text
        assert w.applied_step == 4 and m.version == 1 and "the model keeps the weights of step 4" in caplog.text
        after = sim.variables(m.bundle_id)
        for k in good:
            np.testing.assert_array_equal(after[k], good[k])
        _assert_serves(m, tf1_dir / "model.ckpt-4", oracles)
        assert w.poll() is None and w.skipped == (damage != "truncate")  # not retried until it changes (or backs off)
        _copy_as(tf1_run.dir / "model.ckpt-6", tf1_dir / "model.ckpt-8")  # the trainer's next, good checkpoint
        _state(tf1_dir, [2, 4, 6, 8])
        assert w.poll().step == 8
        _assert_serves(m, tf1_dir / "model.ckpt-8", oracles)


@pytest.mark.parametrize("how", ["completed", "fixed"])
def test_a_shard_completed_or_fixed_in_place_is_applied_within_a_few_polls(tf1_run, tf1_dir, oracles, caplog, how):
    """The Saver's ckpt-6 lands with its shard short (copied after the index) or damaged, then is mended in place."""
    _state(tf1_dir, [2, 4])
    with BundleModel(tf1_run.om) as m:
        w = CheckpointWatcher(m, tf1_dir, use_watchdog=False, poll_interval=60)  # back-off alone would wait >= 60 s
        assert w.poll().step == 4
        shard = tf1_dir / "model.ckpt-6.data-00000-of-00001"
        good = shard.read_bytes()
        if how == "completed":
            shard.write_bytes(good[: len(good) // 3])  # gsutil / a parallel rsync still copying it
        else:
            bad = bytearray(good)
            bad[len(bad) // 2] ^= 0x01  # a late NFS flush: TF's CRC32C refuses it
            shard.write_bytes(bytes(bad))
        _state(tf1_dir, [2, 4, 6])
        with caplog.at_level(logging.WARNING, logger="acl_bundle"):
            assert w.poll() is None and w.poll() is None and w.applied_step == 4
        assert (w.waiting, w.skipped) == ((1, 0) if how == "completed" else (0, 1))
        assert len([r for r in caplog.records if "model.ckpt-6" in r.getMessage()]) == 1
        with open(shard, "r+b") as f:  # mended in place: same inode, new size or bytes and mtime
            f.write(good)
        for polls in range(1, 4):  # noqa: B007 (read after the loop: how many polls it took)
            applied = w.poll()
            if applied is not None:
                break
        assert applied is not None and applied.step == 6 and polls == 1
        assert w.waiting == 0
        _assert_serves(m, tf1_dir / "model.ckpt-6", oracles)


def test_protocol_is_detected_per_directory_or_chosen(tf1_run, tf1_dir, tmp_path, oracles, caplog):
    with BundleModel(tf1_run.om) as m:
        with pytest.raises(ValueError, match="protocol must be one of"):
            CheckpointWatcher(m, tf1_dir, protocol="keras")
        empty = tmp_path / "later"
        empty.mkdir()
        w = CheckpointWatcher(m, empty, use_watchdog=False)
        assert w.protocol is None and w.poll() is None  # nothing committed yet
        _copy_as(tf1_run.dir / "model.ckpt-4", empty / "model.ckpt-4")
        _state(empty, [4])
        assert w.poll().step == 4 and w.protocol == "tf"
        _assert_serves(m, empty / "model.ckpt-4", oracles)
        # both kinds in one directory: refused in auto mode, fine when chosen
        write_checkpoint(tf1_dir, {"dense/kernel:0": np.zeros((8, 16), np.float32)}, 1)
        with pytest.raises(ValueError, match="holds both TF checkpoints"):
            CheckpointWatcher(m, tf1_dir)
        ours = CheckpointWatcher(m, tf1_dir, protocol="acl_bundle", use_watchdog=False, allow_partial=True)
        assert ours.poll().step == 1
        np.testing.assert_array_equal(sim.variables(m.bundle_id)["dense/kernel:0"], np.zeros((8, 16), np.float32))
        theirs = CheckpointWatcher(m, tf1_dir, protocol="tf", use_watchdog=False)
        assert theirs.poll().step == 6
        _assert_serves(m, tf1_dir / "model.ckpt-6", oracles)


def test_names_without_a_step_and_malformed_state_files_are_warned_about(tf1_run, tf1_dir, caplog):
    _copy_as(tf1_dir / "model.ckpt-6", tf1_dir / "model.ckpt")
    tf.compat.v1.train.update_checkpoint_state(str(tf1_dir), str(tf1_dir / "model.ckpt"))
    with BundleModel(tf1_run.om) as m, caplog.at_level(logging.WARNING, logger="acl_bundle"):
        w = CheckpointWatcher(m, tf1_dir, use_watchdog=False)
        assert w.poll() is None and m.version == 0
        assert "has no step in its name" in caplog.text
        (tf1_dir / "checkpoint").write_text("model_checkpoint_path: 12 {")
        assert w.poll() is None and m.version == 0
        assert "not a CheckpointState" in caplog.text


# --------------------------------------------------------------------------- trainers as processes, killed mid-save
def _kill_rounds(variant: str, base: Path, first: tfhelp.Trainer, rounds: int, rng: random.Random) -> dict:
    """Serve ``base/ckpts`` while a TF trainer process writes it, SIGKILL the trainer at a random point (mid-save
    or just after a commit), ``rounds`` times (each restart resumes from TF's latest checkpoint); then check
    every applied checkpoint against TensorFlow's own inference of it."""
    d = base / "ckpts"
    export = base / ("model.pb" if variant == "tf1" else "saved_model")
    seen: list[tuple[int, Path, np.ndarray]] = []
    problems: list[str] = []
    leftovers: set[str] = set()
    model = watcher = None
    lock = threading.Lock()
    try:
        for r in range(rounds):
            t = first if r == 0 else tfhelp.Trainer(variant, d, steps=10**6, every=1, hidden=512, resume=True, seed=r)
            try:
                t.wait_line("ready")
                if model is None:
                    mf = tf_builder.build_bundle_from_tf(export, inputs=["x:0"] if variant == "tf1" else None,
                                                         outputs=["y:0"] if variant == "tf1" else None, batch_sizes=[4])
                    om, _ = builder.save(mf, base / "bundle.om")
                    model = BundleModel(om)

                    def on_apply(a, m=model):
                        y, version = m.infer(X, return_version=True)
                        with lock:
                            if version != a.version:
                                problems.append(f"step {a.step}: served version {version}, applied {a.version}")
                            seen.append((a.step, a.path, y))

                    watcher = CheckpointWatcher(model, d, poll_interval=0.02, use_watchdog=False,
                                                on_apply=on_apply).start()
                if r == 0:
                    t.go()
                first_step = int(t.wait_line("saving").split()[1])
                target = first_step + rng.randint(1, 4)
                mode = rng.choice(["saving", "saved"])  # inside the save, or right after TF's commit
                while int(t.wait_line(mode).split()[1]) < target:
                    pass
                time.sleep(rng.uniform(0, 0.03 if mode == "saving" else 0.005))
                t.kill()
            finally:
                t.close()
            leftovers |= {p.name for p in d.iterdir() if "temp" in p.name}  # what a kill left half-written
            state = tf.train.get_checkpoint_state(str(d))  # TF's own reading of its commit point
            newest = int(Path(state.model_checkpoint_path).name.rsplit("-", 1)[1])
            deadline = time.monotonic() + 30
            while (watcher.applied_step or 0) < newest and time.monotonic() < deadline:
                time.sleep(0.02)
            if watcher.applied_step != newest:
                problems.append(f"round {r}: serving step {watcher.applied_step}, TF's newest commit is {newest}")
        watcher.stop()
        steps = [s for s, *_ in seen]
        if steps != sorted(set(steps)):
            problems.append(f"applied steps not increasing: {steps}")
        oracle = tfhelp.oracle(variant, 512)
        for step, prefix, y in seen:
            if not prefix.with_name(prefix.name + ".index").is_file():
                problems.append(f"applied step {step}, but TF never completed {prefix.name}")
                continue
            want = oracle(prefix, X)  # every applied checkpoint, exactly as TensorFlow restores it
            if not np.allclose(y, want, rtol=1e-5, atol=1e-6):
                problems.append(f"step {step}: bundle differs from TF by {float(np.abs(y - want).max()):.3g}")
        oracle.close()
    finally:
        if watcher is not None:
            watcher.stop()
        if model is not None:
            model.close()
    assert not problems, problems
    assert len(seen) >= rounds
    return {
        "variant": variant,
        "applied": len(seen),
        "steps": [s for s, *_ in seen],
        "half_written_left": sorted(leftovers),
    }


def _kill_test(tmp_path: Path, rounds: int) -> None:
    seed = random.randrange(1 << 30)
    print(f"seed {seed}")
    rng = random.Random(seed)
    # both trainers start (and import TensorFlow) at once, then run one after the other
    first = {
        v: tfhelp.Trainer(
            v,
            tmp_path / v / "ckpts",
            steps=10**6,
            every=1,
            hidden=512,
            hold=True,
            export=tmp_path / v / ("model.pb" if v == "tf1" else "saved_model"),
        )
        for v in ("tf1", "tf2")
    }
    try:
        for v, t in first.items():
            print(_kill_rounds(v, tmp_path / v, t, rounds, rng))
    finally:
        for t in first.values():
            t.close()


def test_tf_trainers_killed_mid_save_never_get_a_partial_checkpoint_applied(tmp_path):
    """TF1 Saver and TF2 CheckpointManager trainers, each killed once at a random point."""
    _kill_test(tmp_path, rounds=1)


@pytest.mark.slow
def test_tf_trainers_killed_many_times_at_random_points(tmp_path):
    _kill_test(tmp_path, rounds=8)
