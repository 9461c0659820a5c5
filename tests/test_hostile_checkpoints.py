"""A checkpoint directory written by someone hostile (or careless): the watcher keeps serving.

Every case follows one pattern (``_survives``): a good step 1 is applied; the hostile
entry arrives as a newer step; a poll applies nothing and logs one WARNING naming
the entry; the device still holds step 1; a good step after it is applied; a
background watcher over the same directory stops promptly.  Memory-bound cases
measure the process's peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import stat
import subprocess
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from acl_bundle import BundleModel, sim
from acl_bundle import checkpoint as ck
from acl_bundle.checkpoint import (
    CheckpointError,
    clean_checkpoints,
    list_checkpoints,
    read_checkpoint,
    read_marker,
    verify_checkpoint,
    write_checkpoint,
)
from acl_bundle.checks import WeightsRefused, finite
from acl_bundle.watcher import CheckpointWatcher
from helpers import reference

X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(1, 8)


def _shifted(w, step):
    return {k: (v + step).astype(v.dtype) for k, v in w.items()}


def _device(m):
    return {k: v.copy() for k, v in sim.variables(m.bundle_id).items()}


def _assert_serves(m, weights):
    for k, v in weights.items():
        np.testing.assert_array_equal(sim.variables(m.bundle_id)[k], v, err_msg=k)
    np.testing.assert_allclose(m.infer(X), reference(X, weights), rtol=1e-5, atol=1e-5)


def _marker(d: Path, step: int, file: str, *, data: bytes | None = None, name: str | None = None, **fields) -> Path:
    """A hand-written marker for ``file`` (sha256/bytes from ``data`` or the file when it is regular)."""
    p = d / file
    if data is None and p.is_file() and not p.is_symlink():
        data = p.read_bytes()
    data = data or b""
    body = {
        "format": "acl_bundle.checkpoint",
        "version": 1,
        "step": step,
        "file": file,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "variables": ["fc0.weight", "fc0.bias", "fc1.weight", "fc1.bias"],
        "created": time.time(),
    }
    body.update(fields)
    m = d / (name or f"step-{step:08d}.ckpt.json")
    m.write_text(json.dumps(body) if not isinstance(fields.get("_raw"), str) else fields["_raw"])
    return m


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "acl_bundle"]


@pytest.fixture
def served(make_bundle, tmp_path):
    om, w = make_bundle()
    d = tmp_path / "ckpt"
    d.mkdir()
    with BundleModel(om) as m:
        yield m, w, d


def _survives(served, caplog, make_bad, *, mentions: str, bad_step: int = 2, polls: int = 3):
    """Apply step 1, add the hostile entry, check nothing changes and one warning; then a good step 5 goes through."""
    m, w, d = served
    write_checkpoint(d, _shifted(w, 1), 1)
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    assert wt.poll().step == 1
    make_bad(d, w)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        for _ in range(polls):
            assert wt.poll() is None  # nothing applied, not retried, no exception
    msgs = _warnings(caplog)
    assert len(msgs) == 1, msgs
    assert mentions in msgs[0], msgs[0]
    assert wt.applied_step == 1 and m.version == 1
    _assert_serves(m, _shifted(w, 1))
    write_checkpoint(d, _shifted(w, 5), 5)  # the next good checkpoint goes through
    assert wt.poll().step == 5
    _assert_serves(m, _shifted(w, 5))
    # and a background watcher over the same directory (hostile entry still there) stops promptly
    bg = CheckpointWatcher(m, d, use_watchdog=False, poll_interval=0.01, start_after=5).start()
    time.sleep(0.05)
    t0 = time.monotonic()
    stopper = threading.Thread(target=bg.stop)
    stopper.start()
    stopper.join(30)
    assert not stopper.is_alive() and not bg.running, "stop() did not return"
    return wt, time.monotonic() - t0


# --------------------------------------------------------------------------- entries of every kind
def test_data_file_that_is_a_directory(served, caplog):
    def bad(d, w):
        (d / "step-00000002.npz").mkdir()
        _marker(d, 2, "step-00000002.npz")
    _survives(served, caplog, bad, mentions="is a directory, not a regular file")


def test_data_file_that_is_a_named_pipe_never_blocks(served, caplog):
    def bad(d, w):
        os.mkfifo(d / "step-00000002.npz")
        _marker(d, 2, "step-00000002.npz", data=b"x" * 100)
    _survives(served, caplog, bad, mentions="is a named pipe, not a regular file")


def test_marker_that_is_a_named_pipe_never_blocks(served, caplog):
    def bad(d, w):
        os.mkfifo(d / "step-00000002.ckpt.json")
    _survives(served, caplog, bad, mentions="is a named pipe")


def test_marker_that_is_a_directory(served, caplog):
    def bad(d, w):
        (d / "step-00000002.ckpt.json").mkdir()
    _survives(served, caplog, bad, mentions="is a directory")


def test_symlink_to_dev_zero_is_not_read(served, caplog, monkeypatch):
    reads = []
    real_read = os.read
    monkeypatch.setattr(os, "read", lambda fd, n: (reads.append(n), real_read(fd, n))[1])

    def bad(d, w):
        (d / "step-00000002.npz").symlink_to("/dev/zero")
        _marker(d, 2, "step-00000002.npz", data=b"\0" * 4096)
    _survives(served, caplog, bad, mentions="is a symbolic link")
    assert sum(reads) < 1 << 20  # /dev/zero was never streamed


@pytest.mark.parametrize("target", ["outside", "inside"])
def test_symlinks_are_never_followed(served, caplog, tmp_path, target):
    """Links out of the directory are refused; links inside it too (the documented rule: no symlinks at all)."""
    def bad(d, w):
        real = (tmp_path / "elsewhere.npz") if target == "outside" else (d / "blob-2.npz")
        np.savez(real, **_shifted(w, 2))
        (d / "step-00000002.npz").symlink_to(real)
        _marker(d, 2, "step-00000002.npz", data=real.read_bytes())
    _survives(served, caplog, bad, mentions="is a symbolic link")


def test_marker_that_is_a_symlink_out_of_the_directory(served, caplog, tmp_path):
    def bad(d, w):
        info = write_checkpoint(tmp_path, _shifted(w, 2), 2)
        (d / info.marker.name).symlink_to(info.marker)
    _survives(served, caplog, bad, mentions="is a symbolic link")


def test_unreadable_data_file_is_retried_after_chmod(served, caplog, monkeypatch):
    """EACCES (emulated by mode, since the tests may run as root) is skipped once.

    A chmod changes the key and it is retried."""
    real_open = os.open

    def fake_open(path, flags, *a, **k):
        if str(path).endswith("step-00000002.npz") and not os.stat(path).st_mode & stat.S_IROTH:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", fake_open)
    m, w, d = served

    def bad(d, w):
        info = write_checkpoint(d, _shifted(w, 2), 2)
        info.path.chmod(0o600)
    wt, _ = _survives(served, caplog, bad, mentions="Permission denied")
    # a newer one than 2 exists now (5); check the chmod retry on a fresh watcher that starts after step 1
    wt2 = CheckpointWatcher(m, d, use_watchdog=False, start_after=1)
    (d / "step-00000005.ckpt.json").unlink()
    assert wt2.poll() is None and wt2.skipped == 1
    assert wt2.poll() is None and wt2.skipped == 1  # same file, same mode: not retried
    (d / "step-00000002.npz").chmod(0o644)  # the admin fixes the mode: size and mtime unchanged
    assert wt2.poll().step == 2
    _assert_serves(m, _shifted(w, 2))


def test_unreadable_newest_falls_back_to_the_next_newest_good(served, monkeypatch, caplog):
    m, w, d = served
    write_checkpoint(d, _shifted(w, 1), 1)
    newest = write_checkpoint(d, _shifted(w, 2), 2)
    real_open = os.open
    monkeypatch.setattr(
        os,
        "open",
        lambda p, f, *a, **k: (
            (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
            if str(p) == str(newest.path)
            else real_open(p, f, *a, **k)
        ),
    )
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        assert wt.poll().step == 1
    assert any("step-00000002" in msg and "Permission denied" in msg for msg in _warnings(caplog))
    _assert_serves(m, _shifted(w, 1))


@pytest.mark.parametrize("raw,mentions", [
    ('{"format": "acl_bundle.checkpoint", "version": 1, "step": 2, "file": "step\\u0000.npz", "bytes": 1, '
     '"sha256": "' + "0" * 64 + '", "variables": []}', "'file' must be a plain file name"),
    ('{"format": "acl_bundle.checkpoint", "version": 1, "step": ' + "9" * 5000 + "}", "an integer of 5000 digits"),
    ("[" * 100_000 + "]" * 100_000, "nests JSON 100000 levels deep"),
    ('{"format": "acl_bundle.checkpoint", "version": 1, "step": NaN}', "NaN is not JSON"),
    ("\xff\xfe not utf-8", "is not UTF-8"),
    ("", "is not readable JSON"),
    ('{"format": "acl_bundle.checkpoint", "version": 1, "step": ' + str(10**30) + "}", "an integer of 31 digits"),
])
def test_malformed_markers(served, caplog, raw, mentions):
    def bad(d, w):
        p = d / "step-00000002.ckpt.json"
        p.write_bytes(raw.encode("latin-1") if raw.startswith("\xff") else raw.encode())
    _survives(served, caplog, bad, mentions=mentions)


def test_huge_marker_is_not_read(served, caplog):
    def bad(d, w):
        with open(d / "step-00000002.ckpt.json", "wb") as f:
            f.truncate(ck.MAX_MARKER_BYTES + 1)  # sparse: costs no disk
    _survives(served, caplog, bad, mentions=f"more than the limit of {ck.MAX_MARKER_BYTES}")


def test_step_above_int64_is_refused(served, caplog):
    def bad(d, w):
        info = write_checkpoint(d, _shifted(w, 2), 2)
        body = json.loads(info.marker.read_text())
        body["step"] = 2**63
        info.marker.write_text(json.dumps(body))
    _survives(served, caplog, bad, mentions="'step' must be a non-negative int, got 9223372036854775808")


def test_created_far_in_the_future_is_refused(served, caplog):
    def bad(d, w):
        info = write_checkpoint(d, _shifted(w, 2), 2)
        body = json.loads(info.marker.read_text())
        body["created"] = time.time() + 10 * 86400
        info.marker.write_text(json.dumps(body))
    _survives(served, caplog, bad, mentions="'created' must be a time")


def test_huge_sparse_data_file_is_refused_before_reading(served, caplog, monkeypatch):
    reads = []
    real_readv = os.readv
    monkeypatch.setattr(
        os, "readv", lambda fd, bufs: (reads.append(sum(len(b) for b in bufs)), real_readv(fd, bufs))[1]
    )

    def bad(d, w):
        p = d / "step-00000002.npz"
        with open(p, "wb") as f:
            f.truncate(10 << 30)  # 10 GiB, sparse
        body_bytes = 10 << 30
        _marker(d, 2, p.name, data=b"", bytes=body_bytes)
    _survives(served, caplog, bad, mentions="more than the limit")
    assert sum(reads) < 1 << 20


def test_data_file_size_differs_from_marker_before_reading(served, caplog):
    def bad(d, w):
        info = write_checkpoint(d, _shifted(w, 2), 2)
        with open(info.path, "ab") as f:
            f.write(b"\0" * 10)
    _survives(served, caplog, bad, mentions="its marker says")


# --------------------------------------------------------------------------- bounded memory
def _peak_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def _peak_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM")


BOMB_ELEMENTS = 128 << 20  # float32: 512 MiB inflated


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A 510 KiB .npz whose member 'junk' inflates to 512 MiB."""
    p = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    with (zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf,
          zf.open("junk.npy", "w", force_zip64=True) as f):
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (BOMB_ELEMENTS,)})
        zeros = bytes(1 << 20)
        for _ in range(BOMB_ELEMENTS * 4 // len(zeros)):
            f.write(zeros)
    assert p.stat().st_size < 600 << 10
    return p


def _bomb_checkpoint(d: Path, w: dict, bomb: Path, step: int, *, bomb_name: str) -> Path:
    """A committed checkpoint holding the weights (stored) plus the bomb member under ``bomb_name`` (copied raw)."""
    p = d / f"step-{step:08d}.npz"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for k, v in w.items():
            if k != bomb_name:
                buf = io.BytesIO()
                np.lib.format.write_array(buf, v)
                zf.writestr(k + ".npy", buf.getvalue())
    _append_raw_member(p, bomb, bomb_name + ".npy")
    with zipfile.ZipFile(p) as zf:  # a well-formed zip: numpy itself would list (and inflate) it
        assert sorted(zf.namelist()) == sorted({*(k + ".npy" for k in w), bomb_name + ".npy"})
        assert zf.getinfo(bomb_name + ".npy").file_size > BOMB_ELEMENTS * 4
    _marker(d, step, p.name, variables=sorted(set(w) | {bomb_name}))
    return p


def _append_raw_member(target: Path, source_zip: Path, new_name: str) -> None:
    """Append the single (compressed) member of ``source_zip`` to ``target`` under ``new_name``, bytes copied raw."""
    import struct

    with zipfile.ZipFile(source_zip) as s:
        zi = s.infolist()[0]
    src = source_zip.read_bytes()
    off = zi.header_offset
    n_name, n_extra = struct.unpack_from("<HH", src, off + 26)
    data = src[off + 30 + n_name + n_extra: off + 30 + n_name + n_extra + zi.compress_size]
    with zipfile.ZipFile(target, "a", allowZip64=True) as zf:
        new = zipfile.ZipInfo(new_name)
        new.compress_type = zipfile.ZIP_DEFLATED
        new.CRC, new.compress_size, new.file_size = zi.CRC, zi.compress_size, zi.file_size
        # write the local header + raw data by hand, then let zipfile record it in the central directory
        zf.fp.seek(zf.start_dir)
        new.header_offset = zf.fp.tell()
        new.flag_bits = 0
        zf.fp.write(new.FileHeader())
        zf.fp.write(data)
        zf.start_dir = zf.fp.tell()
        zf.filelist.append(new)
        zf.NameToInfo[new.filename] = new
        zf._didModify = True


@pytest.mark.skipif(not _peak_reset(), reason="needs /proc/self/clear_refs to measure peak RSS")
def test_npz_bomb_unmatched_member_is_never_inflated(served, bomb, caplog):
    m, w, d = served
    p = _bomb_checkpoint(d, _shifted(w, 3), bomb, 3, bomb_name="optimizer.state")
    assert p.stat().st_size < 1 << 20
    wt = CheckpointWatcher(m, d, use_watchdog=False, allow_unmatched=True)
    _peak_reset()
    before = _peak_kib()
    assert wt.poll().step == 3  # the real weights apply; the bomb member is listed but never read
    grew = _peak_kib() - before
    assert grew < 64 << 10, f"peak RSS grew by {grew} KiB while applying a checkpoint with a 512 MiB bomb member"
    _assert_serves(m, _shifted(w, 3))


@pytest.mark.skipif(not _peak_reset(), reason="needs /proc/self/clear_refs to measure peak RSS")
def test_npz_bomb_matched_member_is_refused_by_its_header(served, bomb, caplog):
    def bad(d, w):
        _bomb_checkpoint(d, _shifted(w, 2), bomb, 2, bomb_name="fc0.weight")
        _peak_reset()
    before = _peak_kib()
    _survives(served, caplog, bad, mentions="fc0.weight: shape (134217728,), expected (8, 16)")
    assert _peak_kib() - before < 64 << 10


@pytest.mark.skipif(not _peak_reset(), reason="needs /proc/self/clear_refs to measure peak RSS")
def test_npz_bomb_read_without_a_model_is_bounded_by_max_bytes(bomb):
    _peak_reset()
    before = _peak_kib()
    with pytest.raises(
        CheckpointError,
        match=r"member 'junk.npy' declares 134217728 elements of float32 \(536870912 bytes\); "
        r"inflating it would exceed the limit of 1048576",
    ):
        read_checkpoint(bomb, max_bytes=1 << 20)
    assert _peak_kib() - before < 16 << 10


def test_member_declaring_1e11_elements_is_a_checkpoint_error(tmp_path):
    p = tmp_path / "big.npz"
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": "<f4", "fortran_order": False, "shape": (10**11,)})
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("w.npy", hdr.getvalue() + b"\0" * 64)
    with pytest.raises(CheckpointError, match=r"member 'w.npy' declares 400000000000 bytes of data but holds 64"):
        read_checkpoint(p)


def test_lying_deflate_ratio_is_refused(tmp_path):
    p = tmp_path / "lie.npz"
    np.savez_compressed(p, w=np.zeros(1000, np.float32))
    raw = bytearray(p.read_bytes())
    with zipfile.ZipFile(p) as zf:
        zi = zf.getinfo("w.npy")
    # patch the central directory's uncompressed size to something deflate cannot produce
    cd = raw.rfind(b"PK\x01\x02")
    import struct

    struct.pack_into("<I", raw, cd + 24, zi.compress_size * 2000)
    p.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="more than deflate can produce"):
        read_checkpoint(p)


@pytest.mark.skipif(not _peak_reset(), reason="needs /proc/self/clear_refs to measure peak RSS")
@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_applying_a_checkpoint_peaks_at_about_one_copy(make_bundle, tmp_path, fmt):
    """A 16 MiB checkpoint: the process's peak RSS grows by about its size while it is applied (was twice)."""
    if fmt == "safetensors":
        pytest.importorskip("safetensors")
    om, w = make_bundle(sizes=(8, 1024, 4096, 4))  # ~16 MiB of float32 variables
    d = tmp_path / "c"
    d.mkdir()
    with BundleModel(om) as m:
        wt = CheckpointWatcher(m, d, use_watchdog=False)
        write_checkpoint(d, {k: (v + 1).astype(v.dtype) for k, v in w.items()}, 1, format=fmt)
        assert wt.poll().step == 1  # warm-up: the simulator's "device" staging pages are touched on first use
        info = write_checkpoint(d, {k: (v + 2).astype(v.dtype) for k, v in w.items()}, 2, format=fmt)
        size = info.nbytes
        _peak_reset()
        before = _peak_kib()
        assert wt.poll().step == 2
        grew = (_peak_kib() - before) * 1024
        assert grew < 1.5 * size, f"peak grew {grew / size:.2f}x the checkpoint size"
        np.testing.assert_array_equal(sim.variables(m.bundle_id)["fc1.weight"], w["fc1.weight"] + 2)


def test_safetensors_parser_matches_the_library(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    arrays = {"a": np.arange(12, dtype=np.float16).reshape(3, 4), "b": np.array([True, False]),
              "c": np.arange(5, dtype=np.int64), "empty": np.zeros((0, 3), np.float32)}
    st.save_file(arrays, str(tmp_path / "x.safetensors"))
    ours = read_checkpoint(tmp_path / "x.safetensors")
    theirs = st.load_file(str(tmp_path / "x.safetensors"))
    assert sorted(ours) == sorted(theirs)
    for k in theirs:
        assert ours[k].dtype == theirs[k].dtype and ours[k].shape == theirs[k].shape
        np.testing.assert_array_equal(ours[k], theirs[k])


# --------------------------------------------------------------------------- in-memory buffers (network bodies)
def test_read_buffer_gives_views_of_the_received_bytes(tmp_path):
    from acl_bundle._archive import read_buffer, sniff_kind

    st = pytest.importorskip("safetensors.numpy")
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "f": np.asfortranarray(np.arange(6.0).reshape(2, 3))}
    npz = io.BytesIO()
    np.savez(npz, **arrays)
    for body, kind in ((npz.getvalue(), ".npz"), (st.save({k: np.ascontiguousarray(v) for k, v in arrays.items()}),
                                                    ".safetensors")):
        assert sniff_kind(body) == kind
        got = read_buffer(body, kind, "the body", limit=0)  # stored data is bounded by the body, not the limit
        assert sorted(got) == sorted(arrays)
        whole = np.frombuffer(body, np.uint8)
        for k, v in arrays.items():
            np.testing.assert_array_equal(got[k], v)
            assert np.shares_memory(got[k], whole), f"{kind} {k} was copied"
    assert sniff_kind(b"\x80\x04pickle") is None


def test_read_buffer_bounds_all_inflation_before_the_first_member():
    from acl_bundle._archive import LimitError, read_buffer

    body = io.BytesIO()
    np.savez_compressed(body, a=np.zeros(1000, np.float32), b=np.zeros(1000, np.float32))
    with pytest.raises(LimitError, match=r"the body inflates to 8000 bytes, more than the limit of 6000"):
        read_buffer(body.getvalue(), ".npz", "the body", limit=6000)  # each member alone (4000) fits
    got = read_buffer(body.getvalue(), ".npz", "the body", limit=8000)
    np.testing.assert_array_equal(got["b"], np.zeros(1000, np.float32))


@pytest.mark.parametrize("patch,mentions", [
    (lambda h: h["a"].update(data_offsets=[0, 10**9]), "do not lie within"),
    (lambda h: h["a"].update(shape=[10**12]), r"declares 2000000000000 bytes \(F16 \[1000000000000\]\) but spans 24"),
    (lambda h: h["a"].update(dtype="BF16"), "has no numpy equivalent"),
    (lambda h: h["a"].update(shape=[3, 5]), "declares 30 bytes"),
])
def test_crafted_safetensors_headers(tmp_path, patch, mentions):
    st = pytest.importorskip("safetensors.numpy")
    blob = st.save({"a": np.zeros((3, 4), np.float16), "b": np.ones(2, np.float32)})
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    patch(header)
    new = json.dumps(header).encode()
    p = tmp_path / "x.safetensors"
    p.write_bytes(len(new).to_bytes(8, "little") + new + blob[8 + n:])
    with pytest.raises(CheckpointError, match=mentions):
        read_checkpoint(p)


# --------------------------------------------------------------------------- steps and restarts
def test_huge_step_does_not_block_later_runs(served, caplog):
    """A bogus step 2**63-1 is applied (it is a valid step), but a restarted trainer with a run id gets through."""
    m, w, d = served
    write_checkpoint(d, _shifted(w, 1), 2**63 - 1)
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    assert wt.poll().step == 2**63 - 1
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        write_checkpoint(d, _shifted(w, 2), 10)
        assert wt.poll() is None
        assert wt.poll() is None
    msgs = _warnings(caplog)
    assert len(msgs) == 1 and "ignoring checkpoint step 10" in msgs[0] and "new run id" in msgs[0]
    write_checkpoint(d, _shifted(w, 3), 11, run="restart-1")
    assert wt.poll().step == 11 and wt.applied_run == "restart-1"
    _assert_serves(m, _shifted(w, 3))


def test_trainer_restart_with_a_new_run_id(served):
    m, w, d = served
    for s in (100, 101, 102):
        write_checkpoint(d, _shifted(w, s), s, run="a")
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    assert wt.poll().step == 102
    write_checkpoint(d, _shifted(w, 7), 0, run="b")  # restarted from step 0
    assert wt.poll().step == 0 and wt.applied_run == "b"
    _assert_serves(m, _shifted(w, 7))
    write_checkpoint(d, _shifted(w, 8), 103, run="a")  # the old run, committed later: a new sequence again
    assert wt.poll().step == 103 and wt.applied_run == "a"
    write_checkpoint(d, _shifted(w, 9), 1, run="b")  # run b continues: newest commit -> run b again
    assert wt.poll().step == 1 and wt.applied_run == "b"
    # a fresh server chooses the run committed most recently, and its highest step
    fresh = CheckpointWatcher(m, d, use_watchdog=False)
    assert fresh.poll().step == 1 and fresh.applied_run == "b"


def test_allow_step_reset_takes_the_most_recent_commit(served):
    m, w, d = served
    for s in (50, 51):
        write_checkpoint(d, _shifted(w, s), s)
    wt = CheckpointWatcher(m, d, use_watchdog=False, allow_step_reset=True)
    assert wt.poll().step == 51
    write_checkpoint(d, _shifted(w, 1), 0)  # the trainer restarted, same names scheme, no run id
    assert wt.poll().step == 0
    _assert_serves(m, _shifted(w, 1))
    write_checkpoint(d, _shifted(w, 2), 1)
    assert wt.poll().step == 1
    # old leftovers with higher steps (committed before the restart) are not re-applied
    assert wt.poll() is None and wt.applied_step == 1
    strict = CheckpointWatcher(m, d, use_watchdog=False)  # without it: the highest step, 51
    assert strict.poll().step == 51


class _Clock:
    """The writer's clock shifted by ``offset`` seconds (only the writer's: the watcher keeps the real one)."""

    def __init__(self, monkeypatch, offset: float) -> None:
        import time as real_time
        import types

        import acl_bundle._checkpoint.writer as writer

        self.offset = offset
        monkeypatch.setattr(writer, "time", types.SimpleNamespace(time=lambda: real_time.time() + self.offset))


@pytest.mark.parametrize("ahead", [3600.0, -3600.0])
def test_runs_are_applied_in_commit_order_whatever_the_writers_clocks_say(served, monkeypatch, caplog, ahead):
    """Run a's host clock is `ahead` (+/-1 h), run b's the opposite: the watcher follows the commits, not `created`."""
    m, w, d = served
    clock = _Clock(monkeypatch, ahead)
    for s in (100, 101):
        write_checkpoint(d, _shifted(w, s), s, run="a")
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    assert wt.poll().step == 101
    clock.offset = -ahead  # the trainer restarts as run b on a host whose clock is 2 h off the first one's
    write_checkpoint(d, _shifted(w, 7), 0, run="b")
    with caplog.at_level(logging.INFO, logger="acl_bundle"):
        assert wt.poll().step == 0 and wt.applied_run == "b"  # first seen after the applied checkpoint: newer
        write_checkpoint(d, _shifted(w, 8), 1, run="b")
        assert wt.poll().step == 1
        assert wt.poll() is None and wt.poll() is None
    _assert_serves(m, _shifted(w, 8))
    ignored = [r.getMessage() for r in caplog.records if "ignoring run" in r.getMessage()]
    assert len(ignored) == 1 and "'a'" in ignored[0] and "2 checkpoint(s), steps 100..101" in ignored[0]
    # a fresh server orders the runs by the markers' mtimes (set by the file system at commit), not by `created`
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="acl_bundle"):
        fresh = CheckpointWatcher(m, d, use_watchdog=False)
        assert fresh.poll().step == 1 and fresh.applied_run == "b"
        assert fresh.poll() is None
    assert sum("ignoring run 'a'" in r.getMessage() for r in caplog.records) == 1


def test_allow_step_reset_follows_commits_not_clocks(served, monkeypatch):
    m, w, d = served
    clock = _Clock(monkeypatch, 3600.0)
    write_checkpoint(d, _shifted(w, 50), 50)
    wt = CheckpointWatcher(m, d, use_watchdog=False, allow_step_reset=True)
    assert wt.poll().step == 50
    clock.offset = -3600.0  # restarted without a run id on a host 2 h behind
    write_checkpoint(d, _shifted(w, 1), 0)
    assert wt.poll().step == 0
    write_checkpoint(d, _shifted(w, 2), 1)
    assert wt.poll().step == 1 and wt.poll() is None
    _assert_serves(m, _shifted(w, 2))
    assert CheckpointWatcher(m, d, use_watchdog=False, allow_step_reset=True).poll().step == 1  # by mtime


def test_keep_prunes_by_commit_order_not_the_writers_clock(tmp_path, monkeypatch):
    w = {"a": np.ones(3, np.float32)}
    clock = _Clock(monkeypatch, 3600.0)
    write_checkpoint(tmp_path, w, 100, run="a", keep=2)
    write_checkpoint(tmp_path, w, 101, run="a", keep=2)
    clock.offset = -3600.0
    write_checkpoint(tmp_path, w, 0, run="b", keep=2)
    write_checkpoint(tmp_path, w, 1, run="b", keep=2)  # the run a checkpoints are the older commits
    assert sorted((c.run, c.step) for c in list_checkpoints(tmp_path)) == [("b", 0), ("b", 1)]


def test_log_lines_say_what_the_model_serves(served, caplog):
    """Before anything is applied: no "step None"; after an update from elsewhere (an HTTP push): its version."""
    m, w, d = served
    _marker(d, 5, "step-00000005.npz", data=b"junk")
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        assert wt.poll() is None
    assert "None" not in caplog.text and "nothing applied from here yet" in caplog.text and "(version 0" in caplog.text
    write_checkpoint(d, _shifted(w, 6), 6)
    assert wt.poll().step == 6 and m.version == 1
    m.update(_shifted(w, 9))  # e.g. a push over HTTP: version 2, not from the directory
    caplog.clear()
    _marker(d, 7, "step-00000007.npz", data=b"junk")
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        assert wt.poll() is None
    assert "keeps its current weights (version 2; the last checkpoint applied from here was step 6, version 1)" \
        in caplog.text


def test_start_after_applies_to_every_run(served):
    m, w, d = served
    write_checkpoint(d, _shifted(w, 1), 3, run="x")
    assert CheckpointWatcher(m, d, use_watchdog=False, start_after=3).poll() is None


def test_keep_never_deletes_what_it_just_wrote(tmp_path):
    w = {"a": np.ones(3, np.float32)}
    for s in (100, 101, 102):
        write_checkpoint(tmp_path, w, s, keep=3)
    info = write_checkpoint(tmp_path, w, 0, keep=3)  # a restarted trainer, lower step
    assert info.marker.exists() and info.path.exists()
    assert [c.step for c in list_checkpoints(tmp_path)] == [0, 101, 102]
    verify_checkpoint(read_marker(info.marker))


def test_keep_only_prunes_its_own_prefix(tmp_path):
    w = {"a": np.ones(3, np.float32)}
    write_checkpoint(tmp_path, w, 1, prefix="other")
    for s in (1, 2, 3):
        write_checkpoint(tmp_path, w, s, keep=1)
    assert sorted(c.marker.name for c in list_checkpoints(tmp_path)) == [
        "other-00000001.ckpt.json",
        "step-00000003.ckpt.json",
    ]


# --------------------------------------------------------------------------- the guard
def test_nan_weights_are_refused_by_default(served, caplog):
    def bad(d, w):
        nan = _shifted(w, 2)
        nan["fc1.bias"] = nan["fc1.bias"].copy()
        nan["fc1.bias"][1] = np.nan
        nan["fc0.weight"] = np.full_like(nan["fc0.weight"], np.inf)
        write_checkpoint(d, nan, 2)
    wt, _ = _survives(
        served,
        caplog,
        bad,
        mentions="non-finite values (NaN or inf) in 2 variable(s): fc0.weight (128 of 128), fc1.bias (1 of 4)",
    )
    assert wt.refused == 1


def test_check_none_applies_nan_weights_and_a_custom_check_refuses(served):
    m, w, d = served
    nan = _shifted(w, 2)
    nan["fc1.bias"] = np.full_like(nan["fc1.bias"], np.nan)
    write_checkpoint(d, nan, 2)
    off = CheckpointWatcher(m, d, use_watchdog=False, check=None)
    assert off.poll().step == 2
    assert np.isnan(sim.variables(m.bundle_id)["fc1.bias"]).all()
    write_checkpoint(d, _shifted(w, 3), 3)
    seen = []

    def picky(weights):
        seen.append(sorted(weights))
        return False

    custom = CheckpointWatcher(m, d, use_watchdog=False, check=picky, start_after=2)
    assert custom.poll() is None and custom.refused == 1 and m.version == 1
    assert seen == [["fc0.bias", "fc0.weight", "fc1.bias", "fc1.weight"]]


def test_finite_check_on_its_own():
    finite({"a": np.ones(3, np.float32), "i": np.array([2**62], np.int64)})
    big = np.zeros(3 << 20, np.float32)
    big[-1] = np.nan  # in the last chunk
    with pytest.raises(WeightsRefused, match=r"big \(1 of 3145728\)"):
        finite({"big": big})
    with pytest.raises(WeightsRefused, match=r"c \(1 of 2\)"):
        finite({"c": np.array([1 + 1j, complex(np.inf, 0)])})


# --------------------------------------------------------------------------- crash debris and failed writes
def test_crash_debris_older_than_the_grace_period_is_removed(tmp_path):
    w = {"a": np.ones(3, np.float32)}
    write_checkpoint(tmp_path, w, 1)
    old = time.time() - 7200
    debris = [".step-00000002.npz.k3j4h5g6.tmp", ".step-00000002.ckpt.json.0123456789ab.tmp", "step-00000003.npz"]
    young = [".step-00000004.npz.aaaaaaaa.tmp", "step-00000005.npz"]
    keep = [
        "step-00000006.npz",
        ".step-00000006.ckpt.json.bbbbbbbbbbbb.tmp",  # a marker being written protects its data
        "notes.txt",
        ".hidden",
        "README.npz.bak",
    ]
    for name in debris + young + keep:
        (tmp_path / name).write_bytes(b"x")
    for name in debris + ["step-00000006.npz", "notes.txt", ".hidden", "README.npz.bak"]:
        os.utime(tmp_path / name, (old, old))
    (tmp_path / "link.npz").symlink_to(tmp_path / "step-00000003.npz")
    os.utime(tmp_path / "link.npz", (old, old), follow_symlinks=False)
    removed = clean_checkpoints(tmp_path, grace=3600)
    assert sorted(removed) == sorted(debris)
    left = {p.name for p in tmp_path.iterdir()}
    assert left == set(young + keep) | {"link.npz", "step-00000001.npz", "step-00000001.ckpt.json"}
    # keep= runs the same cleanup
    for name in debris:
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (old, old))
    write_checkpoint(tmp_path, w, 7, keep=5)
    assert not any((tmp_path / n).exists() for n in debris)


def test_failed_marker_write_leaves_nothing_and_names_step_and_file(tmp_path, monkeypatch):
    import acl_bundle._checkpoint.storage as storage

    real = storage.write_atomic

    def flaky(path, write):
        if path.name.endswith(".ckpt.json"):
            raise OSError(28, "No space left on device")
        return real(path, write)

    monkeypatch.setattr(storage, "write_atomic", flaky)
    with pytest.raises(
        OSError, match=r"cannot write checkpoint step 9: step-00000009.ckpt.json in .*No space left"
    ) as ei:
        write_checkpoint(tmp_path, {"a": np.ones(3, np.float32)}, 9)
    assert ei.value.errno == 28
    assert list(tmp_path.iterdir()) == []


def test_failed_data_write_names_the_file_not_the_temp(tmp_path, monkeypatch):
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError, match=r"step 3: step-00000003.npz in") as ei:
        write_checkpoint(tmp_path, {"a": np.ones(3, np.float32)}, 3)
    assert ".tmp" not in str(ei.value)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert list(tmp_path.iterdir()) == []


def test_variables_named_like_savez_arguments(tmp_path):
    w = {"file": np.ones(2, np.float32), "allow_pickle": np.zeros(3, np.int32), "args": np.eye(2)}
    info = write_checkpoint(tmp_path, w, 1)
    got = verify_checkpoint(read_marker(info.marker))
    assert sorted(got) == sorted(w)
    for k in w:
        np.testing.assert_array_equal(got[k], w[k])
    with np.load(info.path) as z:  # still a plain .npz numpy reads
        np.testing.assert_array_equal(z["allow_pickle"], w["allow_pickle"])


# --------------------------------------------------------------------------- file modes
def _server_user_can_read(path: Path) -> bool | None:
    """Read ``path`` as uid 65534 (nobody); None when we cannot switch users."""
    if os.geteuid() != 0:
        return None
    r = subprocess.run(["cat", str(path)], user=65534, group=65534, capture_output=True, timeout=30)
    return r.returncode == 0


@pytest.fixture
def shared_dir():
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="acl_bundle_modes_"))
    d.chmod(0o755)  # a directory the server user can enter
    yield d
    import shutil

    shutil.rmtree(d)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoint_files_get_the_umask_mode(shared_dir, umask):
    old = os.umask(umask)
    try:
        info = write_checkpoint(shared_dir, {"a": np.ones(3, np.float32)}, 1)
    finally:
        os.umask(old)
    for p in (info.path, info.marker):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask, oct(p.stat().st_mode)
    if umask == 0o022:
        for p in (info.path, info.marker):
            assert _server_user_can_read(p) in (True, None)


def test_build_output_is_readable_by_another_user(shared_dir, capsys):
    import onnx

    from acl_bundle.cli import main
    from acl_bundle.sim import models

    model, _ = models.mlp((8, 16, 4))
    onnx.save(model, shared_dir / "m.onnx")
    old = os.umask(0o022)
    try:
        assert main(["build", str(shared_dir / "m.onnx"), "-o", str(shared_dir / "m.om")]) == 0
    finally:
        os.umask(old)
    for p in (shared_dir / "m.om", shared_dir / "m.manifest.json"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
        assert _server_user_can_read(p) in (True, None)


# --------------------------------------------------------------------------- polling cost and noise
def test_poll_costs_o_markers_not_o_files(served, monkeypatch):
    m, w, d = served
    for i in range(20_000):
        (d / f"unrelated-{i}.bin").touch()
    write_checkpoint(d, _shifted(w, 1), 1)
    write_checkpoint(d, _shifted(w, 2), 2)
    old = time.time() - 600
    os.utime(d, (old, old))  # settled: not changed within the timestamp granularity window
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    assert wt.poll().step == 2
    calls = {"stat": 0, "open": 0, "list": 0}

    def counting(key, real):
        return lambda *a, **k: (calls.__setitem__(key, calls[key] + 1), real(*a, **k))[1]

    for name in ("lstat", "stat"):
        monkeypatch.setattr(os, name, counting("stat", getattr(os, name)))
    monkeypatch.setattr(os, "open", counting("open", os.open))
    monkeypatch.setattr(os, "scandir", counting("list", os.scandir))
    monkeypatch.setattr(os, "listdir", counting("list", os.listdir))
    for _ in range(3):
        assert wt.poll() is None
    # per poll: one stat of the directory, one lstat per marker; no listing, no marker re-read
    assert calls == {"stat": 3 * (1 + 2), "open": 0, "list": 0}, calls
    monkeypatch.undo()
    write_checkpoint(d, _shifted(w, 3), 3)  # a new entry moves the directory's mtime: seen at once
    assert wt.poll().step == 3


def test_junk_markers_warn_once_and_briefly(served, caplog):
    m, w, d = served
    for i in range(2000):
        (d / f"junk-{i}.ckpt.json").write_text("{not json")
    write_checkpoint(d, _shifted(w, 1), 1)
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        assert wt.poll().step == 1
        first = _warnings(caplog)
        caplog.clear()
        assert wt.poll() is None
        write_checkpoint(d, _shifted(w, 2), 2, keep=2)  # list + prune: no flood either
        write_checkpoint(d, _shifted(w, 3), 3, keep=2)
        assert wt.poll().step == 3
        later = _warnings(caplog)
    assert len(first) == 6 and "skipping 1995 more malformed checkpoint markers" in first[-1], first
    assert later == [], later[:10]  # known junk is not re-reported by later polls or by write_checkpoint(keep=)
    assert wt.skipped == 2000


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), 0, -1, True, "1"])
def test_poll_interval_must_be_finite_and_positive(served, bad):
    m, w, d = served
    with pytest.raises(ValueError, match="poll_interval must be a positive number of seconds"):
        CheckpointWatcher(m, d, poll_interval=bad)


def test_history_is_bounded(served):
    m, w, d = served
    wt = CheckpointWatcher(m, d, use_watchdog=False, history_size=3)
    for s in range(1, 8):
        write_checkpoint(d, _shifted(w, s), s)
        assert wt.poll().step == s
    assert [a.step for a in wt.history] == [5, 6, 7] and wt.applied == 7


def test_directory_listing_errors_are_logged_once(served, caplog, monkeypatch):
    m, w, d = served
    write_checkpoint(d, _shifted(w, 1), 1)
    wt = CheckpointWatcher(m, d, use_watchdog=False, start_after=1)  # the protocol is known: ours
    monkeypatch.setattr(os, "scandir", lambda *a: (_ for _ in ()).throw(OSError(116, "Stale file handle")))
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        for _ in range(5):
            assert wt.poll() is None
    assert len(_warnings(caplog)) == 1 and "Stale file handle" in caplog.text
    monkeypatch.undo()
    write_checkpoint(d, _shifted(w, 2), 2)
    assert wt.poll().step == 2


def test_a_surprise_exception_in_one_entry_does_not_stop_the_scan(served, caplog, monkeypatch):
    m, w, d = served
    write_checkpoint(d, _shifted(w, 1), 1)
    write_checkpoint(d, _shifted(w, 2), 2)
    real = ck.read_marker
    import acl_bundle._checkpoint.scan as scan_mod

    monkeypatch.setattr(
        scan_mod,
        "read_marker",
        lambda p, **k: (_ for _ in ()).throw(RuntimeError("surprise")) if "00000002" in str(p) else real(p, **k),
    )
    wt = CheckpointWatcher(m, d, use_watchdog=False)
    with caplog.at_level(logging.WARNING, logger="acl_bundle"):
        assert wt.poll().step == 1
    assert "RuntimeError: surprise" in caplog.text
