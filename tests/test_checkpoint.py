"""Checkpoint reading, name mapping and the trainer-side atomic write protocol."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from acl_bundle import BundleModel, sim
from acl_bundle import checkpoint as ck
from acl_bundle.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    list_checkpoints,
    load_checkpoint,
    match_names,
    read_checkpoint,
    read_marker,
    verify_checkpoint,
    write_checkpoint,
)


def _weights(seed: int = 0) -> dict[str, np.ndarray]:
    r = np.random.default_rng(seed)
    return {"fc0.weight": r.standard_normal((8, 16)).astype(np.float32),
            "fc0.bias": r.standard_normal(16).astype(np.float32)}


class V:  # a Variable-like spec
    def __init__(self, name, shape, dtype="float32"):
        self.name, self.shape, self.dtype = name, shape, np.dtype(dtype)


VARS = [V("fc0.weight", (8, 16)), V("fc0.bias", (16,))]


def test_npz_roundtrip_exact_names(tmp_path):
    w = _weights()
    np.savez(tmp_path / "c.npz", **w)
    got = load_checkpoint(tmp_path / "c.npz", VARS)
    assert list(got) == ["fc0.weight", "fc0.bias"]
    for k in w:
        np.testing.assert_array_equal(got[k], w[k])


def test_npz_with_pickled_object_array_is_refused(tmp_path):
    np.savez(tmp_path / "p.npz", bad=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match=r"object \(pickled\) arrays"):
        read_checkpoint(tmp_path / "p.npz")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04garbage", b"not a zip at all"])
def test_corrupt_npz_names_the_file(tmp_path, content):
    p = tmp_path / "bad.npz"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(repr(str(p))) + " is not a valid .npz file"):
        read_checkpoint(p)


@pytest.mark.parametrize("name, says", [("model.ckpt-5.meta", "a TensorFlow MetaGraph"), ("m.onnx", "an ONNX model"),
                                         ("w.h5", "a Keras/HDF5 model file"), ("weights", "a name without a suffix"),
                                         ("w.xyz", "a file with suffix '.xyz'")])
def test_a_wrong_file_is_named_by_its_type(tmp_path, name, says):
    (tmp_path / name).write_bytes(b"x")
    with pytest.raises(CheckpointError, match=f"is {re.escape(says)}"):
        load_checkpoint(tmp_path / name, VARS)


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.npz")
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(
        CheckpointError,
        match=r"is a PyTorch pickle, which acl_bundle never unpickles.*expected a \.npz or \.safetensors",
    ):
        read_checkpoint(tmp_path / "w.pt")


def test_strip_prefix_then_rename_mapping(tmp_path):
    w = _weights()
    np.savez(tmp_path / "c.npz", **{"module.layer0.w": w["fc0.weight"], "module.fc0.bias": w["fc0.bias"]})
    got = load_checkpoint(tmp_path / "c.npz", VARS, strip_prefix="module.", rename={"layer0.w": "fc0.weight"})
    np.testing.assert_array_equal(got["fc0.weight"], w["fc0.weight"])
    np.testing.assert_array_equal(got["fc0.bias"], w["fc0.bias"])


def test_rename_callable_may_drop_entries(tmp_path):
    w = _weights()
    np.savez(tmp_path / "c.npz", **w, step=np.array(3))
    got = load_checkpoint(tmp_path / "c.npz", VARS, rename=lambda n: None if n == "step" else n)
    assert sorted(got) == ["fc0.bias", "fc0.weight"]


def test_mismatch_reports_unmatched_and_missing(tmp_path):
    w = _weights()
    np.savez(tmp_path / "c.npz", **{"fc0.weight": w["fc0.weight"], "extra": np.zeros(2, np.float32)})
    with pytest.raises(CheckpointMismatchError) as ei:
        load_checkpoint(tmp_path / "c.npz", VARS)
    msg = str(ei.value)
    assert "1 checkpoint name(s) match no variable: ['extra']" in msg
    assert "1 of 2 variable(s) missing from the checkpoint: ['fc0.bias']" in msg
    assert ei.value.unmatched == ["extra"] and ei.value.missing == ["fc0.bias"]


def test_partial_and_unmatched_allowed_log_warning(tmp_path, caplog):
    w = _weights()
    np.savez(tmp_path / "c.npz", **{"fc0.weight": w["fc0.weight"], "extra": np.zeros(2, np.float32)})
    with pytest.raises(CheckpointMismatchError, match="allow_unmatched=True"):
        load_checkpoint(tmp_path / "c.npz", VARS, allow_partial=True)
    with caplog.at_level("WARNING", logger="acl_bundle"):
        got = load_checkpoint(tmp_path / "c.npz", VARS, allow_partial=True, allow_unmatched=True)
    assert list(got) == ["fc0.weight"]
    assert "missing from the checkpoint: ['fc0.bias']" in caplog.text


def test_no_match_at_all_lists_variables(tmp_path):
    np.savez(tmp_path / "c.npz", a=np.zeros(1), b=np.zeros(1))
    with pytest.raises(
        CheckpointMismatchError, match=r"no name matches a variable .* the variables are \['fc0.weight', 'fc0.bias'\]"
    ):
        load_checkpoint(tmp_path / "c.npz", VARS, allow_partial=True, allow_unmatched=True)


def test_two_names_on_one_variable_is_an_error():
    with pytest.raises(CheckpointError, match=r"'a.fc0.bias' and 'b.fc0.bias' both map to variable 'fc0.bias'"):
        match_names(["a.fc0.bias", "b.fc0.bias"], ["fc0.bias"], rename=lambda n: n.split(".", 1)[1])


def test_shape_and_dtype_checked_against_variables(tmp_path):
    np.savez(tmp_path / "c.npz", **{"fc0.weight": np.zeros((16, 8), np.float32), "fc0.bias": np.zeros(16, np.float64)})
    with pytest.raises(CheckpointError) as ei:
        load_checkpoint(tmp_path / "c.npz", VARS)
    assert "fc0.weight: shape (16, 8), expected (8, 16)" in str(ei.value)
    assert "fc0.bias: dtype float64, expected float32" in str(ei.value)


def test_bad_argument_types():
    with pytest.raises(TypeError, match="rename must be a mapping, a callable or None"):
        match_names(["a"], ["a"], rename=3)
    with pytest.raises(TypeError, match="variables must be a BundleModel"):
        match_names(["a"], "a")


def test_load_against_a_bundle_model(make_bundle, tmp_path):
    om, w = make_bundle()
    new = {k: v + 1 for k, v in w.items()}
    np.savez(tmp_path / "c.npz", **new)
    with BundleModel(om) as m:
        m.update(load_checkpoint(tmp_path / "c.npz", m))
        for k, v in sim.variables(m.bundle_id).items():
            np.testing.assert_array_equal(v, new[k])


def test_safetensors_roundtrip(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    w = _weights()
    st.save_file(w, str(tmp_path / "c.safetensors"))
    got = load_checkpoint(tmp_path / "c.safetensors", VARS)
    np.testing.assert_array_equal(got["fc0.weight"], w["fc0.weight"])
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="is not a valid .safetensors file"):
        read_checkpoint(tmp_path / "bad.safetensors")


# --------------------------------------------------------------------------- writer protocol
def test_write_checkpoint_marker_matches_data(tmp_path):
    w = _weights()
    info = write_checkpoint(tmp_path, w, 12)
    assert info.path.name == "step-00000012.npz" and info.marker.name == "step-00000012.ckpt.json"
    marker = json.loads(info.marker.read_text())
    data = info.path.read_bytes()
    assert marker["sha256"] == hashlib.sha256(data).hexdigest()
    assert marker["bytes"] == len(data) and marker["step"] == 12 and marker["file"] == "step-00000012.npz"
    assert marker["variables"] == ["fc0.weight", "fc0.bias"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-00000012.ckpt.json",
        "step-00000012.npz",
    ]  # no temp files
    arrays = verify_checkpoint(read_marker(info.marker))
    np.testing.assert_array_equal(arrays["fc0.weight"], w["fc0.weight"])


def test_data_is_renamed_into_place_before_the_marker(tmp_path, monkeypatch):
    calls = []
    real_replace, real_fsync = os.replace, os.fsync
    monkeypatch.setattr(ck.os, "replace", lambda a, b: (calls.append(("replace", Path(b).name)), real_replace(a, b))[1])
    monkeypatch.setattr(ck.os, "fsync", lambda fd: (calls.append(("fsync", None)), real_fsync(fd))[1])
    write_checkpoint(tmp_path, _weights(), 3)
    renames = [c[1] for c in calls if c[0] == "replace"]
    assert renames == ["step-00000003.npz", "step-00000003.ckpt.json"]
    # each file is fsynced before its rename
    first = calls.index(("replace", "step-00000003.npz"))
    assert ("fsync", None) in calls[:first]


def test_failed_write_leaves_no_marker_and_no_temp(tmp_path, monkeypatch):
    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ck.os, "fsync", boom)
    with pytest.raises(OSError, match="No space left"):
        write_checkpoint(tmp_path, _weights(), 1)
    assert list(tmp_path.iterdir()) == []
    assert list_checkpoints(tmp_path) == []


def test_step_rules_and_keep(tmp_path):
    for s in (1, 2, 3, 4):
        write_checkpoint(tmp_path, _weights(s), s, keep=2)
    assert [c.step for c in list_checkpoints(tmp_path)] == [3, 4]
    assert sorted(p.name for p in tmp_path.glob("*.npz")) == ["step-00000003.npz", "step-00000004.npz"]
    with pytest.raises(ValueError, match="step 4 is already committed"):
        write_checkpoint(tmp_path, _weights(), 4)
    with pytest.raises(ValueError, match="step must be a non-negative int, got -1"):
        write_checkpoint(tmp_path, _weights(), -1)
    with pytest.raises(TypeError, match="'s' has dtype <U1, expected a numeric dtype"):
        write_checkpoint(tmp_path, {"s": np.array(["x"])}, 9)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_checkpoint(tmp_path / "nope", _weights(), 9)


def test_safetensors_write_and_verify(tmp_path):
    pytest.importorskip("safetensors")
    w = _weights()
    info = write_checkpoint(tmp_path, w, 5, format="safetensors")
    assert info.path.suffix == ".safetensors"
    np.testing.assert_array_equal(verify_checkpoint(info)["fc0.bias"], w["fc0.bias"])


def test_verify_detects_corruption_truncation_and_missing_data(tmp_path):
    info = write_checkpoint(tmp_path, _weights(), 7)
    data = bytearray(info.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    info.path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="fails its SHA-256 check"):
        verify_checkpoint(info)
    info.path.write_bytes(bytes(data[:-10]))
    with pytest.raises(CheckpointError, match=r"has \d+ bytes, its marker says \d+ \(truncated"):
        verify_checkpoint(info)
    info.path.unlink()
    with pytest.raises(CheckpointError, match="named by its marker is missing"):
        verify_checkpoint(info)


def test_malformed_marker(tmp_path):
    m = tmp_path / "step-1.ckpt.json"
    m.write_text('{"format": "acl_bundle.checkpoint", "version": 1, "step": -2, "file": "../x.npz", '
                 '"sha256": "zz", "bytes": 1, "variables": []}')
    with pytest.raises(CheckpointError) as ei:
        read_marker(m)
    assert "'step' must be a non-negative int, got -2" in str(ei.value)
    assert "'file' must be a plain file name" in str(ei.value)
    assert "'sha256' must be 64 lowercase hex digits" in str(ei.value)
    m.write_text("{trunc")
    with pytest.raises(CheckpointError, match="is not readable JSON"):
        read_marker(m)


def test_strip_prefix_leaves_names_without_it_alone():
    got = match_names(
        ["module.fc0.weight", "fc0.bias", "modul.x"], ["fc0.weight", "fc0.bias", "modul.x"], strip_prefix="module."
    )
    assert got.mapping == {"module.fc0.weight": "fc0.weight", "fc0.bias": "fc0.bias", "modul.x": "modul.x"}
    assert got.complete


def test_verify_refuses_a_committed_checkpoint_holding_pickled_objects(tmp_path):
    """A marker with a valid SHA-256 does not make a pickled array safe to load."""
    data = tmp_path / "step-00000001.npz"
    np.savez(data, **{"fc0.weight": np.array([{"x": 1}], dtype=object)})
    raw = data.read_bytes()
    marker = tmp_path / "step-00000001.ckpt.json"
    marker.write_text(json.dumps({"format": "acl_bundle.checkpoint", "version": 1, "step": 1, "file": data.name,
                                  "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
                                  "variables": ["fc0.weight"], "created": 0.0}))
    with pytest.raises(CheckpointError, match=r"member 'fc0.weight.npy' holds object \(pickled\) arrays"):
        verify_checkpoint(read_marker(marker))


@pytest.mark.parametrize("value,msg", [
    (np.array([None, 1], dtype=object), r"'w' has dtype object, expected a numeric dtype"),
    (np.array(["x"]), r"'w' has dtype <U1, expected a numeric dtype"),
    ([[1.0], [1.0, 2.0]], r"'w' is not array-like"),
])
def test_write_checkpoint_refuses_non_numeric_values_and_writes_nothing(tmp_path, value, msg):
    with pytest.raises(TypeError, match=r"^cannot write checkpoint: " + msg):
        write_checkpoint(tmp_path, {"w": value}, 1)
    assert list(tmp_path.iterdir()) == []
