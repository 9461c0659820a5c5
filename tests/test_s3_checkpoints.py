"""Checkpoints in object storage: the protocol and the watcher against a real S3-compatible server on loopback.

moto's server mode runs as a subprocess (stopped by PID); its access log is the request
counter.  A fault-injecting proxy in front of it breaks chosen requests (5xx, resets,
hangs past the client's timeout).
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

import s3help  # noqa: E402
from acl_bundle import BundleModel, sim  # noqa: E402
from acl_bundle.checkpoint import (  # noqa: E402
    CheckpointError,
    list_checkpoints,
    load_checkpoint,
    write_checkpoint,
)
from acl_bundle.sim.models import mlp_reference  # noqa: E402
from acl_bundle.watcher import CheckpointWatcher  # noqa: E402

TRAINER = Path(__file__).with_name("s3_trainer.py")


@pytest.fixture
def proxy(moto):
    p = s3help.FaultProxy(moto.port)
    yield p
    p.stop()


@pytest.fixture
def bucket(moto):
    return s3help.make_bucket(moto.endpoint)


@pytest.fixture
def served(make_bundle):
    om, w = make_bundle()
    with BundleModel(om) as m:
        yield m, w


def _shifted(w, step):
    return {k: (v + step).astype(v.dtype) for k, v in w.items()}


def _device_step(m, w) -> int | None:
    """The step whose weights (initial + step) the device holds, or None when they match no step (partial/corrupt)."""
    dev = sim.variables(m.bundle_id)
    first = next(iter(w))
    step = int(round(float(dev[first].flat[0] - w[first].flat[0])))
    ok = all(np.array_equal(dev[k], (v + step).astype(v.dtype)) for k, v in w.items())
    return step if ok else None


def _put(moto, bucket, key, data: bytes) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(**{k: v for k, v in s3help.options(moto.endpoint).items() if k != "skip_instance_cache"},
                           skip_instance_cache=True)
    fs.pipe_file(f"{bucket}/{key}", data)


def test_commit_list_load_and_watch(moto, bucket, served):
    m, w = served
    url, opts = f"s3://{bucket}/ckpts", s3help.options(moto.endpoint)
    infos = [write_checkpoint(url, _shifted(w, s), s, storage_options=opts) for s in (1, 2, 3)]
    listed = list_checkpoints(url, storage_options=opts)
    assert [c.step for c in listed] == [1, 2, 3]
    assert [c.sha256 for c in listed] == [i.sha256 for i in infos]
    got = load_checkpoint(f"{url}/{infos[1].path.name}", m, storage_options=opts)
    for k, v in _shifted(w, 2).items():
        np.testing.assert_array_equal(got[k], v)
    # the marker names a data object with a unique name, never renamed; the digest is of the stored bytes
    reqs = moto.requests(bucket)
    assert not any(p.startswith("/" + bucket + "/") and "x-amz-copy" in p for _, p in reqs)
    wt = CheckpointWatcher(m, url, storage_options=opts, poll_interval=0.05)
    applied = wt.poll()
    assert applied is not None and applied.step == 3 and _device_step(m, w) == 3
    assert applied.bytes_read == infos[2].nbytes > 0
    x = np.ones((1, 8), np.float32)
    np.testing.assert_allclose(m.infer(x), mlp_reference(x, _shifted(w, 3)), rtol=1e-5, atol=1e-5)
    assert wt.poll() is None and m.version == 1
    write_checkpoint(url, _shifted(w, 4), 4, storage_options=opts)
    with wt:
        assert wt.wait_for_step(4, timeout=30)
    assert _device_step(m, w) == 4 and m.version == 2


def test_idle_watcher_costs_one_list_per_poll_and_no_get(moto, bucket, served):
    m, w = served
    url, opts = f"s3://{bucket}/ckpts", s3help.options(moto.endpoint)
    for s in (1, 2):
        write_checkpoint(url, _shifted(w, s), s, storage_options=opts)
    wt = CheckpointWatcher(m, url, storage_options=opts, poll_interval=0.05)
    assert wt.poll().step == 2
    before = moto.sync_log(bucket)
    polls = 20
    for _ in range(polls):
        assert wt.poll() is None
    after = moto.requests(bucket)[before:]
    moto.sync_log(bucket)
    lists = [p for meth, p in after if meth == "GET" and "list-type=2" in p]
    others = [(meth, p) for meth, p in after if not (meth == "GET" and "list-type=2" in p)]
    assert len(lists) == polls, after
    assert others == []  # zero GETs of objects, zero HEADs
    # a new marker costs one GET for it and the ranged GETs of its data, nothing for the old ones
    info = write_checkpoint(url, _shifted(w, 3), 3, storage_options=opts)
    start = moto.sync_log(bucket)
    assert wt.poll().step == 3
    moto.sync_log(bucket)
    got = [(meth, p) for meth, p in moto.requests(bucket)[start:] if "__sync__" not in p]
    objects = sorted(p.rsplit("/", 1)[-1] for meth, p in got if meth == "GET" and "list-type" not in p)
    assert objects == sorted([info.marker.name, info.path.name])
    assert sum(1 for meth, p in got if "list-type=2" in p) == 1


def test_duplicate_step_is_refused_by_the_conditional_write(moto, bucket, served, monkeypatch):
    m, w = served
    url, opts = f"s3://{bucket}/ckpts", s3help.options(moto.endpoint)
    first = write_checkpoint(url, _shifted(w, 1), 7, storage_options=opts)
    # a writer that lost the race: its exists-check saw nothing, so the PUT's If-None-Match decides
    import acl_bundle._checkpoint.storage as storage

    monkeypatch.setattr(storage.FsspecStore, "key", lambda self, name: None)
    with pytest.raises(ValueError, match=r"step 7 is already committed .*another writer committed it first"):
        write_checkpoint(url, _shifted(w, 2), 7, storage_options=opts)
    monkeypatch.undo()
    reqs = moto.requests(bucket)
    assert ("PUT", f"/{bucket}/ckpts/step-00000007.ckpt.json") in reqs
    infos = list_checkpoints(url, storage_options=opts)
    assert [(c.step, c.sha256) for c in infos] == [(7, first.sha256)]  # the first commit stands
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/ckpts", refresh=True)) == sorted(
        [first.marker.name, first.path.name])  # the loser's data object was removed
    got = load_checkpoint(f"{url}/{first.path.name}", m, storage_options=opts)
    np.testing.assert_array_equal(got["fc0.weight"], _shifted(w, 1)["fc0.weight"])


def test_racing_writers_of_one_step_commit_it_once(moto, bucket, served):
    m, w = served
    url, opts = f"s3://{bucket}/ckpts", s3help.options(moto.endpoint)
    n = 6
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def write(i):
        barrier.wait()
        try:
            results[i] = write_checkpoint(url, _shifted(w, 10 + i), 5, storage_options=opts)
        except ValueError as e:
            results[i] = e

    threads = [threading.Thread(target=write, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    wins = [r for r in results if not isinstance(r, Exception)]
    assert len(wins) == 1, results
    assert all("already committed" in str(r) for r in results if isinstance(r, Exception))
    wt = CheckpointWatcher(m, url, storage_options=opts)
    assert wt.poll().step == 5
    assert _device_step(m, w) == 10 + results.index(wins[0])


def test_corrupt_and_half_written_objects_are_refused(moto, bucket, served, caplog):
    m, w = served
    url, opts = f"s3://{bucket}/ckpts", s3help.options(moto.endpoint)
    good = write_checkpoint(url, _shifted(w, 1), 1, storage_options=opts)
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    data = fs.cat_file(f"{bucket}/ckpts/{good.path.name}")
    marker = json.loads(fs.cat_file(f"{bucket}/ckpts/{good.marker.name}"))
    # step 2: a marker whose data object is truncated (half-written upload)
    _put(moto, bucket, "ckpts/step-00000002.x.npz", data[: len(data) // 2])
    _put(moto, bucket, "ckpts/step-00000002.ckpt.json", json.dumps(
        dict(marker, step=2, file="step-00000002.x.npz")).encode())
    # step 3: same size, one byte flipped (SHA-256 mismatch)
    bad = bytearray(data)
    bad[-30] ^= 0xFF
    _put(moto, bucket, "ckpts/step-00000003.x.npz", bytes(bad))
    _put(moto, bucket, "ckpts/step-00000003.ckpt.json", json.dumps(
        dict(marker, step=3, file="step-00000003.x.npz")).encode())
    # step 4: a marker whose data object does not exist; step 5: malformed JSON
    _put(moto, bucket, "ckpts/step-00000004.ckpt.json", json.dumps(
        dict(marker, step=4, file="step-00000004.gone.npz")).encode())
    _put(moto, bucket, "ckpts/step-00000005.ckpt.json", b"{not json")
    wt = CheckpointWatcher(m, url, storage_options=opts)
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        applied = wt.poll()
    assert applied is not None and applied.step == 1 and _device_step(m, w) == 1
    text = caplog.text
    assert "its marker says" in text and "SHA-256" in text and "missing" in text
    assert wt.skipped == 2  # step 3 (SHA-256) and step 5 (JSON) are bad
    assert wt.waiting == 2  # steps 2 (shorter than its marker says) and 4 (missing) may still be replicated
    assert text.count("not readable yet") == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        assert wt.poll() is None  # known bad: not retried, not re-logged; the waiting ones: one WARNING each, given
    assert caplog.text == ""
    write_checkpoint(url, _shifted(w, 6), 6, storage_options=opts)
    assert wt.poll().step == 6 and _device_step(m, w) == 6


def test_nan_weights_in_the_store_are_refused_by_default(moto, bucket, served):
    m, w = served
    url, opts = f"s3://{bucket}/ckpts", s3help.options(moto.endpoint)
    write_checkpoint(url, _shifted(w, 1), 1, storage_options=opts)
    bad = _shifted(w, 2)
    bad["fc0.bias"] = bad["fc0.bias"].copy()
    bad["fc0.bias"][0] = np.nan
    write_checkpoint(url, bad, 2, storage_options=opts)
    wt = CheckpointWatcher(m, url, storage_options=opts)
    assert wt.poll().step == 1 and wt.refused == 1 and _device_step(m, w) == 1


def test_oversized_object_is_refused_before_any_get(moto, bucket, served):
    m, w = served
    url, opts = f"s3://{bucket}/ckpts", s3help.options(moto.endpoint)
    info = write_checkpoint(url, _shifted(w, 1), 1, storage_options=opts)
    wt = CheckpointWatcher(m, url, storage_options=opts, max_bytes=info.nbytes - 1)
    start = moto.sync_log(bucket)
    assert wt.poll() is None and wt.skipped == 1
    moto.sync_log(bucket)
    gets = [p for meth, p in moto.requests(bucket)[start:] if meth == "GET" and "list-type" not in p]
    assert gets == [f"/{bucket}/ckpts/{info.marker.name}"]  # the data object was never fetched
    # a marker object over the marker bound is refused from the listing alone
    from acl_bundle.checkpoint import MAX_MARKER_BYTES

    _put(moto, bucket, "ckpts/step-00000002.ckpt.json", b" " * (MAX_MARKER_BYTES + 1))
    start = moto.sync_log(bucket)
    assert wt.poll() is None and wt.skipped == 2
    moto.sync_log(bucket)
    assert [p for meth, p in moto.requests(bucket)[start:] if meth == "GET" and "list-type" not in p] == []


@pytest.mark.parametrize("mode", ["500", "503", "reset", "hang"])
def test_transient_errors_are_retried_and_the_newest_step_applied(moto, proxy, bucket, served, caplog, mode,
                                                                   monkeypatch):
    import s3fs

    monkeypatch.setattr(s3fs.S3FileSystem, "retries", 1)  # s3fs's own retry loop off: the watcher's is tested
    m, w = served
    url = f"s3://{bucket}/ckpts"
    direct, via = s3help.options(moto.endpoint), s3help.options(proxy.endpoint, timeout=0.3)
    proxy.hang_seconds = 1.0
    write_checkpoint(url, _shifted(w, 1), 1, storage_options=direct)
    wt = CheckpointWatcher(m, url, storage_options=via, poll_interval=0.05)
    assert wt.poll().step == 1
    info = write_checkpoint(url, _shifted(w, 2), 2, storage_options=direct)
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        # an outage: every request fails (past s3fs's own retries); the poll ends, backing off
        proxy.fail(mode, 10**6)
        assert wt.poll() is None and "cannot list" in caplog.text and "retrying in" in caplog.text
        assert wt.retry_delay > 0.05
        proxy.clear()
        # the listing works but the new version's data object fails (the case servers get wrong)
        proxy.fail(mode, 10**6, match=f"GET /{bucket}/ckpts/{info.path.name}")
        assert wt.poll() is None and "cannot be read" in caplog.text
        assert wt.skipped == 0 and _device_step(m, w) == 1  # not marked bad: the store failed, not the file
        proxy.clear()
        proxy.fail(mode, 3, match=f"GET /{bucket}/ckpts/{info.path.name}")  # and flaky afterwards
        with wt:
            assert wt.wait_for_step(2, timeout=60)
    assert _device_step(m, w) == 2 and wt.skipped == 0
    assert wt.retry_delay == 0.05 and proxy.injected >= 3


def test_a_listed_object_answering_404_is_applied_once_readable(moto, proxy, bucket, served, caplog):
    """A store replicating: the data object is listed but GET answers 404 for a while (not a permanent mark)."""
    m, w = served
    url = f"s3://{bucket}/ckpts"
    direct, via = s3help.options(moto.endpoint), s3help.options(proxy.endpoint)
    write_checkpoint(url, _shifted(w, 1), 1, storage_options=direct)
    wt = CheckpointWatcher(m, url, storage_options=via, poll_interval=0.01)
    assert wt.poll().step == 1
    info = write_checkpoint(url, _shifted(w, 2), 2, storage_options=direct)
    proxy.fail("404", 10**6, match=f"GET /{bucket}/ckpts/{info.path.name}")
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        for _ in range(3):
            assert wt.poll() is None
            time.sleep(0.05)  # past the entry's back-off (0.01 s doubling)
        assert wt.waiting == 1 and wt.skipped == 0 and _device_step(m, w) == 1
        proxy.clear()  # replicated
        deadline = time.monotonic() + 10
        while wt.applied_step != 2 and time.monotonic() < deadline:
            wt.poll()
            time.sleep(0.02)
    assert wt.applied_step == 2 and _device_step(m, w) == 2 and wt.waiting == 0 and wt.skipped == 0
    assert proxy.injected >= 3
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "not readable yet" in warned[0] and info.marker.name in warned[0]


def test_a_marker_synced_before_its_data_is_applied_when_the_data_arrives(moto, bucket, served):
    """A sync tool copying the marker first: the missing object is waited for, and applied once it is listed."""
    m, w = served
    url, opts = f"s3://{bucket}/src", s3help.options(moto.endpoint)
    info = write_checkpoint(url, _shifted(w, 3), 3, storage_options=opts)
    import s3fs

    fs = s3fs.S3FileSystem(**opts)
    fs.copy(f"{bucket}/src/{info.marker.name}", f"{bucket}/dst/{info.marker.name}")
    wt = CheckpointWatcher(m, f"s3://{bucket}/dst", storage_options=opts, poll_interval=60)
    assert wt.poll() is None and wt.waiting == 1 and wt.skipped == 0
    assert wt.poll() is None  # backing off (60 s): no new attempt, nothing changed
    fs.copy(f"{bucket}/src/{info.path.name}", f"{bucket}/dst/{info.path.name}")
    assert wt.poll().step == 3 and _device_step(m, w) == 3  # its data appeared: its identity changed, tried at once


def test_runs_on_the_store_are_ordered_by_commit_not_by_the_writers_clocks(moto, bucket, served, monkeypatch, caplog):
    import types

    import acl_bundle._checkpoint.writer as writer

    m, w = served
    url, opts = f"s3://{bucket}/ckpts", s3help.options(moto.endpoint)
    real = time.time
    monkeypatch.setattr(writer, "time", types.SimpleNamespace(time=lambda: real() + 3600))
    write_checkpoint(url, _shifted(w, 100), 100, run="a", storage_options=opts)
    time.sleep(1.1)  # S3's LastModified has one-second resolution
    monkeypatch.setattr(writer, "time", types.SimpleNamespace(time=lambda: real() - 3600))
    write_checkpoint(url, _shifted(w, 1), 1, run="b", storage_options=opts)
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        wt = CheckpointWatcher(m, url, storage_options=opts)
        assert wt.poll().step == 1 and wt.applied_run == "b"  # by LastModified, though b's `created` is 2 h older
        assert wt.poll() is None
    assert sum("ignoring run 'a'" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setattr(writer, "time", types.SimpleNamespace(time=lambda: real() + 3600))
    write_checkpoint(url, _shifted(w, 2), 0, run="c", storage_options=opts)  # a restart on a host 1 h ahead
    assert wt.poll().step == 0 and wt.applied_run == "c" and _device_step(m, w) == 2


def _racing(moto, bucket, served, steps, writers, *, keep=None, poll=0.01):
    """``writers`` threads commit steps 1..steps (interleaved) plus junk, while the watcher applies and a reader infers.

    With ``keep``, writers also delete old commits (as trainers do), so the watcher may
    find a listed checkpoint gone when it reads it: skipped, never applied in part.
    """
    m, w = served
    url, opts = f"s3://{bucket}/ckpts", s3help.options(moto.endpoint)
    seen: list = []
    wt = CheckpointWatcher(m, url, storage_options=opts, poll_interval=poll,
                           on_apply=lambda a: seen.append((a.step, _device_step(m, w))))
    errors: list = []
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)
    refs = {}
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            y = m.infer(x)
            step = _device_step(m, w)  # may have moved on; the output must match some complete step
            cands = [s for s in {step, *(s for s, _ in seen[-3:])} if s is not None]
            for s in cands:
                if s not in refs:
                    refs[s] = mlp_reference(x, _shifted(w, s)) if s else mlp_reference(x, w)
            if not any(np.allclose(y, refs[s], rtol=1e-5, atol=1e-4) for s in cands) and step is not None:
                errors.append(("output", step))

    def writer(k):
        try:
            for s in range(1 + k, steps + 1, writers):
                write_checkpoint(url, _shifted(w, s), s, storage_options=opts, keep=keep)
                if s % 7 == 0:  # junk beside it: a marker naming a missing object
                    _put(moto, bucket, f"ckpts/junk-{s:08d}.ckpt.json", b'{"format": "x"}')
        except Exception as e:  # pragma: no cover - reported below
            errors.append(("writer", repr(e)))

    r = threading.Thread(target=reader)
    ws = [threading.Thread(target=writer, args=(k,)) for k in range(writers)]
    with wt:
        r.start()
        try:
            for t in ws:
                t.start()
            for t in ws:
                t.join(1500)
            assert wt.wait_for_step(steps, timeout=120)
            wt.poll()  # one listing after the last junk marker was written
        finally:
            stop.set()
            r.join(30)
    assert errors == []
    assert seen and all(dev == step for step, dev in seen)  # 0 partial or corrupt applies
    assert [s for s, _ in seen] == sorted(s for s, _ in seen)  # never backwards
    assert _device_step(m, w) == steps and wt.refused == 0
    if keep is None:
        assert wt.skipped == steps // 7  # each junk marker skipped once
    return seen, wt


def test_racing_writes_and_reads(moto, bucket, served):
    _racing(moto, bucket, served, steps=30, writers=3)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_racing_writes_and_reads_1000(moto, bucket, served):
    seen, wt = _racing(moto, bucket, served, steps=1000, writers=4, poll=0.05)
    assert len(seen) >= 10


def test_a_trainer_process_writes_while_the_watcher_applies(moto, bucket, served):
    m, w = served
    url, opts = f"s3://{bucket}/ckpts", s3help.options(moto.endpoint)
    seen = []
    wt = CheckpointWatcher(m, url, storage_options=opts, poll_interval=0.02,
                           on_apply=lambda a: seen.append((a.step, _device_step(m, w), a.bytes_read)))
    steps = 15
    with wt:
        proc = subprocess.Popen([sys.executable, str(TRAINER), url, str(steps), "0.02", json.dumps(opts)])
        try:
            assert proc.wait(120) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        assert wt.wait_for_step(steps, timeout=60)
    assert all(step == dev for step, dev, _ in seen) and all(n > 0 for _, _, n in seen)
    assert seen[-1][0] == steps and len(seen) >= 2
    assert len(list_checkpoints(url, storage_options=opts)) == 3  # keep=3 on the store


def test_bad_arguments(moto, bucket, served, tmp_path):
    m, w = served
    with pytest.raises(ValueError, match="storage_options are for fsspec URLs"):
        CheckpointWatcher(m, tmp_path, storage_options={"anon": True})
    with pytest.raises(ValueError, match="use_watchdog=True watches a local directory"):
        CheckpointWatcher(m, f"s3://{bucket}/x", storage_options=s3help.options(moto.endpoint), use_watchdog=True)
    with pytest.raises(TypeError, match="storage_options must be a mapping"):
        list_checkpoints(f"s3://{bucket}/x", storage_options=["x"])
    with pytest.raises(CheckpointError, match="is a raw or pickled weights file"):
        load_checkpoint(f"s3://{bucket}/x/step.bin", m, storage_options=s3help.options(moto.endpoint))


def test_keep_and_cleanup_on_the_store(moto, bucket, served):
    m, w = served
    url, opts = f"s3://{bucket}/ckpts", s3help.options(moto.endpoint)
    _put(moto, bucket, "ckpts/step-00000099.orphan.npz", b"debris")  # an upload whose marker never came
    for s in range(1, 6):
        write_checkpoint(url, _shifted(w, s), s, keep=2, storage_options=opts)
    assert [c.step for c in list_checkpoints(url, storage_options=opts)] == [4, 5]
    import s3fs

    names = sorted(p.rsplit("/", 1)[-1] for p in s3fs.S3FileSystem(**opts).ls(f"{bucket}/ckpts", refresh=True))
    assert "step-00000099.orphan.npz" in names and len(names) == 5  # young debris is kept (grace)
    from acl_bundle.checkpoint import clean_checkpoints

    assert clean_checkpoints(url, grace=0, storage_options=opts) == ["step-00000099.orphan.npz"]
    assert len(list_checkpoints(url, storage_options=opts)) == 2


def test_a_large_object_streams_into_about_one_copy(moto, bucket):
    import tracemalloc

    from acl_bundle._checkpoint.storage import CHUNK, open_store
    from acl_bundle.checkpoint import MARKER_SUFFIX, SUFFIXES, verify_checkpoint

    url, opts = f"s3://{bucket}/big", s3help.options(moto.endpoint, timeout=30)
    big = np.arange(12 << 20, dtype=np.float32).reshape(3 << 10, 4 << 10)  # 48 MiB
    write_checkpoint(url, {"big": big}, 1, storage_options=opts)
    (info,) = list_checkpoints(url, storage_options=opts)
    store = open_store(url, opts, suffixes=(MARKER_SUFFIX,) + SUFFIXES)
    store.list()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        arrays = verify_checkpoint(info, store=store, lazy=True)
        got = arrays["big"]
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, big)
    # one copy plus about a chunk in flight
    assert info.nbytes <= peak < info.nbytes + 3 * CHUNK, f"peak {peak} for {info.nbytes} bytes"
