"""Bad bundle files and paths: a clear error, nothing left alive, and the next load still works.

"Clear" means: ``AclError`` naming the load call (``acl.mdl.bundle_load_from_file``
or ``_mem``) with the runtime's message, or a ``ValueError``/``OSError`` raised by
the wrapper before any device work.  After each failure ``sim.leaks() == {}`` and
a good bundle loads and serves (the shared init/device refcounts were not
disturbed).
"""
from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from acl_bundle import AclError, BundleModel, sim
from acl_bundle.sim import builder, models
from helpers.reliability import matches

LOADERS = {"file": "acl.mdl.bundle_load_from_file", "bytes": "acl.mdl.bundle_load_from_mem"}


def _load(how: str, path: Path, data: bytes | None = None) -> BundleModel:
    if how == "file":
        return BundleModel(path, manifest=False)
    return BundleModel.from_bytes(path.read_bytes() if data is None else data)


def _expect_clean_failure(how: str, path: Path, good: Path, *, data: bytes | None = None) -> BaseException:
    with pytest.raises(Exception) as info:
        _load(how, path, data)
    e = info.value
    assert isinstance(e, (AclError, ValueError, OSError)), f"unclear error {e!r}"
    if isinstance(e, AclError):
        assert e.func == LOADERS[how], e
        assert e.code and e.name and str(e).startswith(f"{e.func} returned {e.code}"), str(e)
        assert e.detail, "the runtime's message is missing from the error"
    assert str(e), "empty error message"
    assert sim.leaks() == {}, f"{path.name}: failed load leaked {sim.leaks()}"
    with BundleModel(good) as m:  # the process-wide ACL state is still sane
        x = np.ones((1, 8), np.float32)
        assert m.infer(x).shape == (1, 4)
    return e


@pytest.fixture
def good(bundles) -> Path:
    return bundles["init"].path


@pytest.mark.parametrize("how", ["file", "bytes"])
def test_truncated_at_every_length(tmp_path, good, how):
    data = good.read_bytes()
    cuts = sorted(set(range(0, 64)) | set(range(64, len(data), max(1, len(data) // 150))))
    codes = set()
    for n in cuts:
        if n == 0 and how == "bytes":
            with pytest.raises(ValueError, match="empty"):
                BundleModel.from_bytes(b"")
            continue
        p = tmp_path / f"cut{n}.om"
        p.write_bytes(data[:n])
        e = _expect_clean_failure(how, p, good)
        codes.add(getattr(e, "code", type(e).__name__))
    print(f"\nFILES truncated ({how}): {len(cuts)} lengths, all rejected cleanly; codes {sorted(map(str, codes))}")


@pytest.mark.parametrize("how", ["file", "bytes"])
def test_corrupted_bytes(tmp_path, good, bundles, how):
    """Flip one byte at many offsets (every header byte, then a stride through the payload)."""
    data = good.read_bytes()
    offsets = sorted(set(range(0, 96)) | set(range(96, len(data), max(1, len(data) // 200))))
    rejected = loaded = 0
    for off in offsets:
        bad = bytearray(data)
        bad[off] ^= 0xFF
        p = tmp_path / "corrupt.om"
        p.write_bytes(bytes(bad))
        try:
            m = _load(how, p)
        except Exception:
            _expect_clean_failure(how, p, good)
            rejected += 1
            continue
        # Bytes nothing reads (e.g. the format's minor version) may change harmlessly:
        # then the model must be exactly the original one.
        with m:
            x = np.ones((1, 8), np.float32)
            assert matches(m.infer(x), x, bundles["init"].weights), f"byte {off} corrupted a model that loaded"
        loaded += 1
    assert rejected > 0.9 * len(offsets)
    print(f"\nFILES corrupted ({how}): {len(offsets)} single-byte flips, {rejected} rejected, "
          f"{loaded} harmless (model identical)")


def _onnx_bytes() -> bytes:
    model, _ = models.mlp((8, 16, 4))
    return model.SerializeToString()


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("bundle.om", b"not really")
    return buf.getvalue()


def _oversized_count(good: Path) -> bytes:
    magic, major, minor, _ = struct.unpack_from("<8sHHI", good.read_bytes(), 0)
    return struct.pack("<8sHHI", magic, major, minor, 0xFFFFFFFF) + good.read_bytes()[16:]


def _oversized_section(good: Path) -> bytes:
    data = bytearray(good.read_bytes())
    struct.pack_into("<Q", data, 16 + 4, (1 << 64) - 1)  # first section's length
    return bytes(data)


def _plain_model(tmp_path: Path) -> bytes:
    model, _ = models.mlp((8, 16, 4))
    om, _ = builder.save(builder.build_plain(model), tmp_path / "plain.om")
    return Path(om).read_bytes()


FOREIGN = {
    "empty": lambda tmp, good: b"",
    "onnx": lambda tmp, good: _onnx_bytes(),
    "zip": lambda tmp, good: _zip_bytes(),
    "random": lambda tmp, good: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
    "text": lambda tmp, good: b"hello, I am a bundle\n" * 10,
    "magic only": lambda tmp, good: good.read_bytes()[:8],
    "oversized section count": lambda tmp, good: _oversized_count(good),
    "oversized section length": lambda tmp, good: _oversized_section(good),
    "plain (non-bundle) model": lambda tmp, good: _plain_model(tmp),
    "two bundles concatenated": lambda tmp, good: good.read_bytes() * 2,
}


@pytest.mark.parametrize("how", ["file", "bytes"])
@pytest.mark.parametrize("kind", list(FOREIGN))
def test_foreign_and_malformed_files(tmp_path, good, how, kind):
    data = FOREIGN[kind](tmp_path, good)
    p = tmp_path / "foreign.om"
    p.write_bytes(data)
    if how == "bytes" and not data:
        with pytest.raises(ValueError, match="empty"):
            BundleModel.from_bytes(data)
        return
    e = _expect_clean_failure(how, p, good)
    assert isinstance(e, AclError), f"{kind}: expected the loader's AclError, got {e!r}"


def test_missing_path_directory_and_fifo(tmp_path, good):
    for p in (tmp_path / "missing.om", tmp_path):
        e = _expect_clean_failure("file", p, good)
        assert isinstance(e, FileNotFoundError) and str(p) in str(e)
    fifo = tmp_path / "fifo.om"
    os.mkfifo(fifo)  # must not block: never opened
    e = _expect_clean_failure("file", fifo, good)
    assert isinstance(e, FileNotFoundError)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads chmod-000 files")
def test_unreadable_file(tmp_path, good):
    p = tmp_path / "locked.om"
    p.write_bytes(good.read_bytes())
    p.chmod(0)
    try:
        e = _expect_clean_failure("file", p, good)
        assert isinstance(e, (AclError, PermissionError))
    finally:
        p.chmod(0o600)


def _manifest_with_wrong_shape(good: Path) -> str:
    data = json.loads(good.with_suffix(".manifest.json").read_text())
    data["variables"][0]["shape"] = [9, 9]  # well-formed, but not what the bundle holds
    return json.dumps(data)


def test_bad_manifest_beside_a_good_bundle(tmp_path, good):
    """A malformed manifest fails before any ACL call; one that disagrees with the bundle, after
    load, with nothing left alive."""
    om = tmp_path / "b.om"
    om.write_bytes(good.read_bytes())
    man = om.with_suffix(".manifest.json")
    cases = [
        ("{not json", False),
        ('{"variables": 3}', False),
        (_manifest_with_wrong_shape(good), True),
    ]
    for text, reaches_acl in cases:
        man.write_text(text)
        with sim.record() as calls, pytest.raises(ValueError):
            BundleModel(om)
        assert bool(calls) == reaches_acl, (text, calls[:3])
        assert sim.leaks() == {}


def test_file_replaced_after_load(tmp_path, good, bundles):
    """The bundle is read once at load: deleting or truncating the file later changes nothing."""
    om = tmp_path / "b.om"
    om.write_bytes(good.read_bytes())
    with BundleModel(om, manifest=False) as m:
        om.write_bytes(b"")
        x = np.ones((1, 8), np.float32)
        assert matches(m.infer(x), x, bundles["init"].weights)
        om.unlink()
        m.update(bundles["init"].weights)
        assert matches(m.infer(x), x, bundles["init"].weights)
